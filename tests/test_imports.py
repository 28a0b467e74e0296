"""Every module of hf_distill imports on its own (in the fast tier, so a broken import shows up within seconds).

`python -m pytest -m "not slow" --module-coverage tests` (tests/module_coverage.py) checks that each also ran code.
"""

import importlib
import os
import pkgutil

import pytest

import hf_distill

MODULES = sorted(info.name for info in pkgutil.walk_packages(hf_distill.__path__, "hf_distill."))


def test_the_walk_finds_every_file_of_the_package():
    package = os.path.dirname(hf_distill.__file__)
    files = {
        os.path.relpath(os.path.join(folder, name), package)
        for folder, _, names in os.walk(package)
        for name in names
        if name.endswith(".py")
    }
    walked = {name.removeprefix("hf_distill.").replace(".", os.sep) for name in MODULES}
    expected = {path.removesuffix(".py").removesuffix(f"{os.sep}__init__") for path in files} - {"__init__"}
    assert walked == expected  # a folder without __init__.py would hide its modules from the walk


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    module = importlib.import_module(name)
    assert module.__name__ == name
