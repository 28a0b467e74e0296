"""The GPU check's harness: per-check budgets, skipped items and their reasons, the report and the JSON, measuring on
CUDA (events, `max_memory_allocated`) or on CPU for the dry run, and the small models the checks share."""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = os.path.dirname(HERE)
REPO = os.path.dirname(BENCHMARKS)
if BENCHMARKS not in sys.path:  # the CPU benchmarks' helpers
    sys.path.insert(0, BENCHMARKS)
if importlib.util.find_spec("hf_distill") is None:  # not installed: this tree's (its card templates then are missing)
    sys.path.append(REPO)

import torch  # noqa: E402

MB = 1024**2
TITLES = {
    "a": "a. Correctness against a float64 reference",
    "b": "b. Loss kernels: hf_distill vs naive vs TRL vs Liger",
    "c": "c. One full training step",
    "d": "d. Memory plan against the measured peak",
    "e": "e. Teacher placements on one device",
    "f": "f. The quick start recipe end to end",
}


# ---------------------------------------------------------------------------------------------------------------------
# Run context: budgets, skipped items, figures, the report


@dataclass
class Section:
    key: str
    budget: float
    status: str = "not run"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    tables: list[list[str]] = field(default_factory=list)  # Markdown lines, one table per entry
    skipped: list[dict[str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the check itself raised
    item_errors: list[dict[str, str]] = field(default_factory=list)  # one item raised; the others ran


class Context:
    """What every check needs: the device, the sizes (GPU or dry run), its clock and where results go."""

    def __init__(self, out: str, dry_run: bool, assets: str | None, budgets: dict[str, float], total: float) -> None:
        self.out, self.dry_run, self.assets = out, dry_run, assets
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.budgets, self.total = budgets, total
        self.started = time.monotonic()
        self.sections: dict[str, Section] = {}
        self.meta: dict[str, Any] = {}
        self.current: Section | None = None
        self._check_started = 0.0
        self._scratch: str | None = None

    @property
    def scratch(self) -> str:
        """A temporary folder for the models, recipes and students the checks write; `close()` removes it."""
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="gpu_check_")
        return self._scratch

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds left to the current check: its own budget, and what the whole run has left."""
        own = self.current.budget - (time.monotonic() - self._check_started)
        return min(own, self.total - (time.monotonic() - self.started))

    def spent(self, item: str) -> bool:
        """Whether the budget is spent; if so the item is recorded as skipped for that reason."""
        if self.left() > 0:
            return False
        self.skip(
            item, f"the check's time budget ({self.current.budget:.0f} s) or the run's ({self.total:.0f} s) is spent"
        )
        return True

    def skip(self, item: str, why: str) -> None:
        self.current.skipped.append({"item": item, "why": why})

    @contextlib.contextmanager
    def item(self, name: str) -> Iterator[None]:
        """Runs one item of a check: out of memory is recorded as a skip, any other error as that item's failure,
        and the check goes on with its next item."""
        try:
            yield
        except torch.cuda.OutOfMemoryError as error:
            self.skip(name, f"out of memory: {str(error).splitlines()[0][:160]}")
        except Exception as error:
            text = traceback.format_exc()
            self.current.item_errors.append(
                {"item": name, "error": f"{type(error).__name__}: {error}", "traceback": text}
            )
            print(f"{name}: {text}", flush=True)
        finally:
            release(self.device)

    def run(self, key: str, check: Callable[[Context, Section], None]) -> None:
        section = Section(key, self.budgets[key])
        self.sections[key] = self.current = section
        self._check_started = time.monotonic()
        if self.left() <= 0:
            section.status = "skipped"
            spent = (
                f"its time budget ({section.budget:.0f} s)"
                if section.budget <= 0
                else f"the run's ({self.total:.0f} s)"
            )
            self.skip("the whole check", f"{spent} is spent")
        else:
            print(f"== {TITLES[key]} (budget {section.budget:.0f} s)", flush=True)
            try:
                check(self, section)
                section.status = "partial" if section.skipped else "ok"
                if any(row.get("pass") is False for row in _rows(section.figures)):
                    section.status = "FAILED (a figure is out of tolerance)"
                if section.item_errors:
                    section.status = f"FAILED ({len(section.item_errors)} item(s) raised)"
            except Exception:  # one broken check must not cost the others their device time
                section.error = traceback.format_exc()
                section.status = "error"
                print(section.error, flush=True)
        section.seconds = time.monotonic() - self._check_started
        release(self.device)
        self.write()

    def write(self) -> None:
        os.makedirs(self.out, exist_ok=True)
        figures = {
            "meta": {**self.meta, "dry_run": self.dry_run, "seconds": time.monotonic() - self.started},
            "checks": {
                key: {
                    "title": TITLES[key],
                    "status": s.status,
                    "seconds": round(s.seconds, 2),
                    "budget_s": s.budget,
                    "notes": s.notes,
                    "skipped": s.skipped,
                    "error": s.error,
                    "item_errors": s.item_errors,
                    **s.figures,
                }
                for key, s in self.sections.items()
            },
        }
        with open(os.path.join(self.out, "figures.json"), "w") as f:
            json.dump(figures, f, indent=1, default=_json_default)
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write(self.markdown())

    def markdown(self) -> str:
        mode = "dry run on CPU at tiny sizes (no figure here is a GPU figure)" if self.dry_run else "GPU run"
        lines = [f"# hf_distill GPU check: {mode}", ""]
        lines += [f"- {name}: {value}" for name, value in self.meta.items()]
        lines += [f"- total time: {time.monotonic() - self.started:.1f} s", ""]
        for key, s in self.sections.items():
            lines += [
                f"## {TITLES[key]}",
                "",
                f"Status: **{s.status}**, {s.seconds:.1f} s of a {s.budget:.0f} s budget.",
                "",
            ]
            lines += [f"{note}" for note in s.notes] + ([""] if s.notes else [])
            for table in s.tables:
                lines += [*table, ""]
            if s.skipped:
                lines += ["Skipped:", *[f"- {x['item']}: {x['why']}" for x in s.skipped], ""]
            for failure in s.item_errors:
                lines += [f"Failed: {failure['item']}", "```", failure["traceback"].strip()[-3000:], "```", ""]
            if s.error:
                lines += ["Error:", "```", s.error.strip()[-3000:], "```", ""]
        return "\n".join(lines)


def _rows(figures: dict[str, Any]) -> Iterator[dict]:
    for value in figures.values():
        if isinstance(value, list):
            yield from (row for row in value if isinstance(row, dict))


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------------
# Measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` over `repeats` calls after one warm-up (kernel compilation, allocator growth)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start_s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start_s)
    return statistics.median(times)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """`peak_mb`: the high-water mark of device memory inside the block above what was allocated before it (CUDA);
    None on CPU, where the dry run does not measure memory."""
    result: dict[str, float | None] = {"peak_mb": None}
    if device.type != "cuda":
        yield result
        return
    release(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    yield result
    sync(device)
    result["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base) / MB


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 on `a`'s device; NaN anywhere gives inf, so it never passes."""
    a, b = a.detach().double(), b.detach().to(a.device, torch.float64)
    if not torch.isfinite(a).all():
        return math.inf
    denominator = b.norm().item()
    return (a - b).norm().item() / denominator if denominator else (a - b).norm().item()


def randn(
    ctx: Context, generator: torch.Generator, rows: int, cols: int, dtype: torch.dtype, scale: float = 1.0, grad=False
) -> torch.Tensor:
    """`scale · N(0, 1)` of shape `(rows, cols)` in `dtype`, drawn on the device (seconds on a CPU at GPU sizes)."""
    x = (scale * torch.randn(rows, cols, generator=generator, device=ctx.device)).to(dtype)
    return x.requires_grad_() if grad else x


def fmt(value: Any, spec: str = ".2e") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]


def importable(module: str) -> str | None:
    """None when `module` imports; else why not (the first line of the error)."""
    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken install that raises anything else on import
        return f"`{module}` is not importable here ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Models and trainers the checks share


def llama(hidden: int, layers: int, vocab: int):
    from bench_step import _llama as bench_llama  # the CPU step benchmark's model, same shape rules

    return bench_llama(hidden, layers, vocab)


def make_trainer(ctx: Context, student, teacher, **args):
    from hf_distill import DistillationConfig, DistillationTrainer

    defaults = {"output_dir": os.path.join(ctx.scratch, "trainer"), "report_to": [], "disable_tqdm": True}
    if not ctx.cuda:
        defaults["use_cpu"] = True
    return DistillationTrainer(model=student, teacher_model=teacher, args=DistillationConfig(**{**defaults, **args}))


def batch_of_tokens(vocab: int, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
