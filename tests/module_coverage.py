"""`--module-coverage`: fails the run unless every module of hf_distill ran code in the selected tests.

    python -m pytest -m "not slow" --module-coverage tests     # does the fast tier still cover every module?

A module counts as exercised once one of its functions or methods is called (importing it, which runs its class
bodies, is not enough); a module that defines no function at all (a package `__init__` that only re-exports, or
`__main__`) counts once imported. The summary lists, for each unit of the architecture (a subpackage or a top-level
module), the test files that exercised it. Code run in a subprocess is not seen.

Hand-written with `sys.settrace` because coverage.py is not a dependency. It only watches function calls (the trace
function returns None, so no line is traced), yet any trace function slows Python ~30% here, so it is opt-in: run it
after adding, moving or marking tests `slow` (.ci/run does not, to keep CI time).
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import threading
from collections import defaultdict

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf_distill")


def _modules() -> dict[str, bool]:
    """Every .py file of the package -> whether it defines a function (then a call is required, not only an import)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    tree = ast.parse(f.read())
                found[path] = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(tree))
    return found


def _unit(path: str) -> str:
    """`.../hf_distill/teacher/setup.py` -> `teacher`; `.../hf_distill/trainer.py` -> `trainer`."""
    return os.path.relpath(path, PACKAGE).split(os.sep)[0].removesuffix(".py")


class ModuleCoverage:
    def __init__(self) -> None:
        self.current = "(collection)"
        self.called: dict[str, set[str]] = defaultdict(set)  # module path -> test files that called into it
        self.imported: set[str] = set()

    def trace(self, frame, event, arg):
        path = frame.f_code.co_filename
        if event == "call" and path.startswith(PACKAGE):
            if frame.f_code.co_flags & inspect.CO_OPTIMIZED:  # a function or method, not a module or class body
                self.called[path].add(self.current)
            else:
                self.imported.add(path)
        return None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid.split("::")[0]
        # set again for every test: some libraries replace or clear the trace function while they run
        sys.settrace(self.trace)
        threading.settrace(self.trace)
        return (yield)

    def pytest_sessionstart(self, session) -> None:
        sys.settrace(self.trace)
        threading.settrace(self.trace)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        sys.settrace(None)
        threading.settrace(None)
        modules = _modules()
        self.missing = sorted(
            os.path.relpath(path, os.path.dirname(PACKAGE))
            for path, has_functions in modules.items()
            if path not in self.called and (has_functions or path not in self.imported)
        )
        if self.missing and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        by_unit = defaultdict(set)
        for path, tests in self.called.items():
            by_unit[_unit(path)] |= tests
        terminalreporter.section("module coverage: the test files that call into each unit of hf_distill")
        for unit in sorted(by_unit):
            tests = sorted(os.path.basename(t) for t in by_unit[unit] if t != "(collection)")
            terminalreporter.line(f"{unit}: {', '.join(tests) or '(only while tests were collected)'}")
        if self.missing:
            terminalreporter.line(f"NOT EXERCISED by the selected tests: {', '.join(self.missing)}", red=True)
        else:
            terminalreporter.line("every module of hf_distill ran code in the selected tests", green=True)


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--module-coverage",
        action="store_true",
        help="fail unless every module of hf_distill ran code in the selected tests (see tests/module_coverage.py)",
    )


def pytest_configure(config) -> None:
    if config.getoption("--module-coverage"):
        config.pluginmanager.register(ModuleCoverage(), "module_coverage_tracker")
