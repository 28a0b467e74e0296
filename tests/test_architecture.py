"""The layout rules of STYLE.md, checked: losses import only torch, imports point down, ruff. (A file holds one concept:
that is a review habit, not a line count; STYLE.md: "split by concept, never to stay under a line count".)"""

import ast
import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "hf_distill")
MODULES = sorted(glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True))

# Lower layers never import higher ones.
LAYERS = [
    {"atomic", "terminal", "safe_yaml", "push_secrets"},  # import nothing of hf_distill
    {"logs", "checkpoints"},
    {"losses", "tasks", "assets", "placement", "provenance", "licenses", "teacher_cache", "task_metrics"},
    {"config", "metrics", "student_init", "report", "adapters", "finite", "label_mapping", "vocabulary"},
    {"teacher", "data", "lm_head", "output_guard", "recipe", "recipe_files"},
    {"lineage", "teacher_setup", "plan", "comparison", "cache_writer", "cached_loss"},
    {"generation"},
    {"model_card"},
    {"hub", "pull"},
    {"publishing"},
    {"trainer"},
    {"seq2seq"},
    {"run"},
    {"offline", "cli", "__main__", "__init__"},
]


def _layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if module in names)


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative import inside hf_distill
                found.add(f".{node.module or ''}")
            else:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


@pytest.mark.parametrize("path", [m for m in MODULES if "/losses/" in m], ids=os.path.basename)
def test_losses_import_only_torch(path):
    external = {name for name in _imports(path) if not name.startswith(".")} - {
        "__future__",
        "collections",
        "dataclasses",
        "math",
        "typing",
    }
    assert external <= {"torch"}, external


@pytest.mark.parametrize("path", [m for m in MODULES if "/losses/" not in m], ids=os.path.basename)
def test_imports_point_down(path):
    name = os.path.splitext(os.path.basename(path))[0]
    for imported in _imports(path):
        if imported.startswith(".") and imported != ".":
            target = imported[1:].split(".")[0]
            assert _layer(target) <= _layer(name), f"{name} imports {target}"


def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "hf_distill", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
