# The two commands a person needs: `make demo` and `make test`.
# Everything else is a step of those, usable on its own.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test deps sandbox sandbox-down unit functional e2e horizon lint docs reliability \
	mypy releasenotes bench bench-quick dist clean

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

unit functional e2e horizon lint reliability: sandbox
	tools/run-tests $@

# The docs need only the Python packages (no cluster): building them imports
# the CLI's argument parser and the option definitions, nothing of Ceph.
docs mypy releasenotes: deps
	tools/run-tests $@

# The release: an sdist and a wheel in dist/, both reporting setup.cfg's
# version (see setup.py). Install the wheel with --no-deps (doc/source/install.rst).
dist: deps
	rm -rf dist
	$(PY) -m build --outdir dist .
	@ls dist

# The API rows use the Cinder stack shared with the e2e tests: bench/run.py
# takes /tmp/cinder-stack.lock around them and leaves the stack down.
bench: sandbox
	$(PY) bench/run.py --write-doc

bench-quick: sandbox
	$(PY) bench/run.py --quick

clean: sandbox-down
	rm -rf $(VENV) .stestr doc/build releasenotes/build .tox dist
