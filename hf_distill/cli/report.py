"""The side-by-side table printed at the end of a CLI run: teacher vs student."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..provenance import weights_bytes


def size_on_disk(folder: str) -> int:
    """Bytes of weight files in `folder` (safetensors, bin, gguf; not the Trainer's training_args.bin)."""
    return weights_bytes(folder) or 0


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class ModelRow:
    name: str
    parameters: int
    bytes_on_disk: int | None
    metric: float


def _human(n: float, unit: str) -> str:
    for prefix in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{prefix}{unit}" if prefix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.1f}T{unit}"


def format_table(rows: list[ModelRow], metric_name: str) -> str:
    header = ["model", "parameters", "size on disk", metric_name]
    body = [
        [
            r.name,
            _human(r.parameters, ""),
            "-" if r.bytes_on_disk is None else _human(r.bytes_on_disk, "B"),
            f"{r.metric:.4g}",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])
