# The two commands a person needs: `make demo` and `make test`.
# Everything else is a step of those, usable on its own.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test deps sandbox sandbox-down unit functional e2e horizon lint docs reliability bench \
	bench-quick clean

demo: sandbox
	$(PY) tools/journey.py
	$(PY) tools/demo.py

test: sandbox
	tools/run-tests

deps: $(STAMP)

$(STAMP): tools/bootstrap requirements.txt test-requirements.txt doc/requirements.txt setup.cfg
	tools/bootstrap $(VENV)
	touch $@

sandbox: deps
	tools/sandbox up

sandbox-down:
	tools/sandbox down

unit functional e2e horizon lint docs reliability: sandbox
	tools/run-tests $@

# The API rows use the Cinder stack shared with the e2e tests: bench/run.py
# takes /tmp/cinder-stack.lock around them and leaves the stack down.
bench: sandbox
	$(PY) bench/run.py --write-doc

bench-quick: sandbox
	$(PY) bench/run.py --quick

clean: sandbox-down
	rm -rf $(VENV) .stestr doc/build
