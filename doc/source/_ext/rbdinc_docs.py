"""Sphinx directives that generate reference text from the code itself.

``.. rbd-incremental-cli::``
    The ``--help`` of ``rbd-incremental`` and of each of its commands, from
    ``cinder_rbd_incremental.cli.build_parser()``, one section per command.

``.. rbd-incremental-exit-codes::``
    The "Exit codes:" list of the ``cinder_rbd_incremental.cli`` docstring.

``.. rbd-incremental-modules::``
    A table of the package's modules with the first paragraph of each module
    docstring (read with ``ast``: nothing is imported).

Everything is generated at build time, so the pages cannot drift from the code.
"""

import argparse
import ast
import contextlib
import importlib
import os
import sys
import types

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PACKAGE = os.path.join(ROOT, "cinder_rbd_incremental")
HELP_COLUMNS = "90"


def _import_cli():
    """Import the CLI module; stand-ins for the Ceph bindings if they are missing.

    Building the parser touches neither librados nor librbd, so the docs can be
    built where python3-rados / python3-rbd are not installed.
    """
    for name in ("rados", "rbd"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    return importlib.import_module("cinder_rbd_incremental.cli")


@contextlib.contextmanager
def _help_width():
    """argparse wraps at the terminal width: make it the same everywhere."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _literal(text):
    block = nodes.literal_block(text, text)
    block["language"] = "text"
    return block


class CLIDirective(SphinxDirective):
    """Render ``rbd-incremental --help`` and every ``rbd-incremental COMMAND --help``."""

    has_content = False

    def run(self):
        cli = _import_cli()
        self.env.note_dependency(cli.__file__)
        with _help_width():
            parser = cli.build_parser()
            result = [_literal(parser.format_help().rstrip())]
            for name, summary, sub in _subcommands(parser):
                section = nodes.section(ids=[nodes.make_id("cli-" + name)])
                section += nodes.title(name, "", nodes.literal(name, name))
                if summary:
                    section += nodes.paragraph(summary, summary[0].upper() + summary[1:] + ".")
                section += _literal(sub.format_help().rstrip())
                result.append(section)
        return result


class ExitCodesDirective(SphinxDirective):
    """Render the "Exit codes:" bullet list of the CLI module docstring."""

    has_content = False

    def run(self):
        cli = _import_cli()
        self.env.note_dependency(cli.__file__)
        doc = cli.__doc__ or ""
        marker = "Exit codes:"
        if marker not in doc:
            raise self.error("cinder_rbd_incremental.cli's docstring has no %r list" % marker)
        rows = []
        for line in doc.split(marker, 1)[1].strip().splitlines():
            line = line.strip()
            if not line:
                break
            if not line.startswith("* "):
                raise self.error("unexpected line in the exit code list: %r" % line)
            code, _, meaning = line[2:].strip().partition(" ")
            rows.append((code, meaning.strip()))
        table = nodes.table()
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=10)
        group += nodes.colspec(colwidth=90)
        head = nodes.thead()
        group += head
        head += self._row(("code", "meaning"), literal=False)
        body = nodes.tbody()
        group += body
        for row in rows:
            body += self._row(row)
        return [table]

    @staticmethod
    def _row(cells, literal=True):
        row = nodes.row()
        for i, text in enumerate(cells):
            entry = nodes.entry()
            para = nodes.paragraph()
            para += nodes.literal(text, text) if literal and i == 0 else nodes.Text(text)
            entry += para
            row += entry
        return row


class ModulesDirective(SphinxDirective):
    """A table of modules and the first paragraph of their docstrings."""

    has_content = False

    def run(self):
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "",
                 "   * - module", "     - what it is (first paragraph of its docstring)"]
        for path in self._modules():
            self.env.note_dependency(path)
            with open(path, encoding="utf-8") as source:
                doc = ast.get_docstring(ast.parse(source.read())) or ""
            first = " ".join(doc.split("\n\n", 1)[0].split())
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            module = module.removesuffix(".__init__")
            lines += ["   * - ``%s``" % module, "     - %s" % (first or "(no docstring)")]
        return self.parse_text_to_nodes("\n".join(lines))

    @staticmethod
    def _modules():
        paths = []
        for directory in (PACKAGE, os.path.join(PACKAGE, "targets")):
            for name in sorted(os.listdir(directory)):
                if not name.endswith(".py"):
                    continue
                if name == "__init__.py" and directory == PACKAGE:
                    continue  # empty package marker
                paths.append(os.path.join(directory, name))
        return paths


def setup(app):
    app.add_directive("rbd-incremental-cli", CLIDirective)
    app.add_directive("rbd-incremental-exit-codes", ExitCodesDirective)
    app.add_directive("rbd-incremental-modules", ModulesDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
