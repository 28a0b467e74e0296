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


def test_the_documented_imports_keep_working():
    # What README and the docstrings tell users to import, unchanged by the package's reorganisation.
    import hf_distill
    from hf_distill import losses, task_metrics

    for name in (
        "DistillationConfig", "DistillationTrainer", "Seq2SeqDistillationConfig", "Seq2SeqDistillationTrainer",
        "TeacherCache", "TeacherOutput", "cache_teacher", "load_teacher_cache", "read_lineage", "Lineage",
        "LineageError", "LineageNotFoundError", "PulledLineage", "LicensePolicyError",
    ):  # fmt: skip
        assert callable(getattr(hf_distill, name)) or isinstance(getattr(hf_distill, name), type), name
    assert callable(losses.per_token_divergence) and callable(task_metrics.accuracy_metrics)
    assert callable(task_metrics.perplexity_metrics)
