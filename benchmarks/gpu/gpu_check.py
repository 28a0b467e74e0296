"""Every GPU check of hf_distill in one run, each under its own time budget, for the rare short GPU lease.

    python benchmarks/gpu/gpu_check.py --out DIR              # on one CUDA GPU (checks: 6 minutes at most)
    python benchmarks/gpu/gpu_check.py --out DIR --dry-run    # the same code paths at tiny sizes on CPU (< 1 minute)
    bash benchmarks/gpu/run_all.sh                            # installs carried wheels first, writes to $OUT

Checks, in order of value (issue 16):
  a  correctness: `per_token_divergence` and the chunked loss against a float64 reference, every divergence, bf16
     and fp32; one training step of a small Llama with the chunked loss on vs off
  b  loss kernels at V = 32k, 128k, 256k, N = 8k-32k, bf16: hf_distill vs naive vs TRL's chunked divergence (Triton
     on CUDA) vs Liger-Kernel's fused linear JSD (when importable); time from CUDA events, peak memory from
     `torch.cuda.max_memory_allocated`
  c  one full training step at two sizes against a student CE step plus a teacher forward
  d  the preflight memory plan against the measured peak: the quick start model at two batch sizes (and in bf16),
     a LoRA student
  e  teacher placements on one GPU: replicate, offload, teacher on cuda:0 with the student on CPU, and the reverse
  f  the quick start recipe end to end

Every check writes its section of `report.md` and its figures into `figures.json` (both under `--out`) as soon as it
ends, so a run stopped by its time limit still returns what it measured. A check whose budget is spent skips its
remaining items and says so; a check that fails records its traceback and the next one runs. Nothing is installed or
downloaded here: `run_all.sh` installs the wheels `prepare_carry.py` gathered, when they were carried along.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
from collections.abc import Callable

import torch
from gpu_harness import REPO, TITLES, Context, Section, importable  # noqa: F401  (TITLES: the tests use it)
from gpu_loss_checks import check_correctness, check_loss_kernels
from gpu_training_checks import check_full_step, check_memory_plan, check_placements, check_quickstart

# Seconds per check on the GPU; the total leaves room for start-up, wheel installs and a rerun in a 15-minute lease.
BUDGETS = {"a": 40.0, "b": 130.0, "c": 45.0, "d": 50.0, "e": 30.0, "f": 65.0}
TOTAL_BUDGET = 360.0


CHECKS: dict[str, Callable[[Context, Section], None]] = {
    "a": check_correctness,
    "b": check_loss_kernels,
    "c": check_full_step,
    "d": check_memory_plan,
    "e": check_placements,
    "f": check_quickstart,
}


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("transformers", "huggingface_hub", "accelerate", "peft", "trl", "datasets", "triton", "liger-kernel"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _budgets(values: list[str]) -> dict[str, float]:
    budgets = dict(BUDGETS)
    for value in values:
        key, sep, seconds = value.partition("=")
        if not sep or key not in budgets:
            raise SystemExit(f"--budget {value!r}: use CHECK=SECONDS with CHECK one of {', '.join(budgets)}")
        try:
            budgets[key] = float(seconds)
        except ValueError:
            raise SystemExit(f"--budget {value!r}: {seconds!r} is not a number of seconds") from None
    return budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or os.path.join(REPO, "outputs", "gpu_check"),
        help="folder for report.md, figures.json",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on CPU; what needs CUDA is skipped, saying so"
    )
    parser.add_argument("--assets", default=os.path.join(REPO, "build", "gpu_carry"), help="prepare_carry.py's folder")
    parser.add_argument("--checks", default="abcdef", help="which checks, in the order given (default: all, abcdef)")
    parser.add_argument("--budget", action="append", default=[], metavar="CHECK=SECONDS", help="one check's budget")
    parser.add_argument("--total-budget", type=float, default=TOTAL_BUDGET, help="seconds for all checks together")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f"--checks {args.checks!r} names {unknown}; use letters from {''.join(CHECKS)}")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device is visible to torch; run with --dry-run for the CPU code paths")
    if args.dry_run:
        torch.set_num_threads(1)  # a shared CPU; the dry run measures nothing anyway
    ctx = Context(args.out, args.dry_run, os.path.abspath(args.assets), _budgets(args.budget), args.total_budget)
    ctx.meta = {
        "device": torch.cuda.get_device_name(0) if ctx.cuda else f"CPU ({platform.processor() or platform.machine()})",
        "python": platform.python_version(),
        "torch": torch.__version__ + (f", CUDA {torch.version.cuda}" if ctx.cuda else ""),
        "packages": ", ".join(f"{k} {v}" for k, v in _versions().items()),
        "python executable": sys.executable,
        "PYTHONPATH (carried wheels first)": os.environ.get("PYTHONPATH", ""),
    }
    broken = importable("hf_distill")
    ctx.meta["hf_distill"] = broken or os.path.dirname(importlib.import_module("hf_distill").__file__)
    if broken:  # every check needs it: say why once, in the report, rather than six tracebacks
        ctx.meta["hf_distill"] = broken
        for key in args.checks:
            ctx.sections[key] = Section(
                key, ctx.budgets[key], status="skipped", skipped=[{"item": "the whole check", "why": broken}]
            )
        ctx.write()
        print(ctx.markdown())
        return 1
    try:
        for key in args.checks:
            ctx.run(key, CHECKS[key])
    finally:  # models and students written by d, e and f (over 1 GB on the GPU run)
        ctx.close()
    summary = [f"{key}: {s.status} ({s.seconds:.0f} s)" for key, s in ctx.sections.items()]
    print(
        "\n".join(["", "GPU check summary:", *summary, f"report: {os.path.join(args.out, 'report.md')}"]), flush=True
    )
    return 0 if all(s.status in ("ok", "partial") for s in ctx.sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
