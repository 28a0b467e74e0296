"""The layout rules of STYLE.md, read from the package graph: losses import only torch, every import points down the
layers below, and ruff is clean. (A file holds one concept: a review habit, not a line count.)"""

import ast
import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "hf_distill")
MODULES = sorted(glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True))

# The units of the architecture (a subpackage, or a top-level module) from the bottom up. A unit imports only units of
# lower layers, and anything inside itself. README "How the code is laid out" describes each one.
LAYERS = [
    {"losses", "_logging", "utils", "task_metrics"},  # pure: torch, the logger, file/text helpers, evaluate metrics
    {"_packaged"},  # the packaged offline assets
    {"provenance"},  # where a model came from, pinned (used by teacher loading and the cache writer alike)
    {"modeling", "config", "data"},
    {"teacher"},
    {"cross_tokenizer"},  # a teacher of another tokenizer: vocabularies, alignment, its `Teacher` kind
    {"served"},  # a teacher behind an inference server: spec, schema, client, read-ahead, its `Teacher` kind
    {"offline"},
    {"hub"},
    {"training", "preflight", "on_policy"},
    {"trainer"},
    {"seq2seq"},
    {"cli"},
    {"__main__", "__init__"},  # the public names and `python -m hf_distill`
]


def _unit(module: str) -> str:
    """`hf_distill.teacher.setup` -> `teacher`; `hf_distill` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if unit in names)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _imports(path: str, root: str = REPO) -> set[str]:
    """Absolute names of everything `path` imports; `from . import x` counts as importing the module `x`."""
    tree = ast.parse(open(path).read())
    package = os.path.relpath(os.path.dirname(path), root).split(os.sep)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:  # relative: inside hf_distill
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    found.add(".".join([*base, node.module]))
                else:  # `from .. import x, y`: modules (or names) of that package
                    found |= {".".join([*base, alias.name]) for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _internal_edges() -> set[tuple[str, str]]:
    edges = set()
    for path in MODULES:
        source = _unit(_module_name(path))
        for name in _imports(path):
            if name == "hf_distill" or name.startswith("hf_distill."):
                edges.add((source, _unit(name)))
    return edges


@pytest.mark.parametrize("path", [m for m in MODULES if "/losses/" in m], ids=os.path.basename)
def test_losses_import_only_torch(path):
    external = {name.split(".")[0] for name in _imports(path) if not name.startswith("hf_distill")} - {
        "__future__",
        "collections",
        "dataclasses",
        "math",
        "typing",
    }
    assert external <= {"torch"}, external


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(path)) for path in MODULES}
    assert units == set().union(*LAYERS), units ^ set().union(*LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: os.path.relpath(p, PACKAGE))
def test_imports_point_down(path):
    source = _unit(_module_name(path))
    for name in _imports(path):
        if name == "hf_distill" or name.startswith("hf_distill."):
            target = _unit(name)
            assert target == source or _layer(target) < _layer(source), f"{source} imports {target} ({name})"


def test_the_graph_is_read_including_whole_module_imports():
    # The checks above must see `from . import x` and `from ..x import y`; a graph without these edges would pass
    # vacuously.
    edges = _internal_edges()
    assert ("trainer", "teacher") in edges
    assert ("cli", "_packaged") in edges  # cli/train.py: `from .. import _packaged`
    assert ("teacher", "offline") not in edges  # the cache builds on the teacher, never the reverse
    assert ("hub", "trainer") not in edges


def test_a_violation_is_caught(tmp_path):
    bad = tmp_path / "hf_distill" / "losses"
    bad.mkdir(parents=True)
    (bad / "bad.py").write_text("from .. import trainer\nfrom ..teacher.model import freeze\n")
    names = _imports(str(bad / "bad.py"), root=str(tmp_path))
    assert names == {"hf_distill.trainer", "hf_distill.teacher.model"}
    assert all(_layer(_unit(n)) > _layer("losses") for n in names)


def test_ruff_clean():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "hf_distill", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
