"""What the training log lines add in a run that generates: how many steps of each kind ran, how long the
completions were, how many hit `max_new_tokens`, and where the step time went (generation, teacher, student).

Counts are kept as detached tensors and turned into floats only when the Trainer logs, like
`hf_distill.training.metrics.DistillationMetrics`; timers are wall-clock seconds on this process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .schedule import ON_POLICY, TEACHER_GENERATED
from .scored_batch import ScoredBatch

# Measured: generation (the step hook), the teacher's forward, and the whole training step (forward and backward, the
# teacher's forward included): the student's time is the step's less the teacher's.
TIMERS = ("time_generation", "time_teacher", "time_step")


@dataclass
class OnPolicyMetrics:
    """Sums since the previous log line.

    Attributes:
        steps (`dict`): optimizer steps of each kind (`schedule.KINDS`) on this process.
        completions, generated_tokens, hit_max (`torch.Tensor`, 0-dim float64): completions generated on this
            process, their kept tokens (EOS included), and how many reached `max_new_tokens` without an EOS.
        seconds (`dict`): wall-clock seconds spent in each of `TIMERS`.
    """

    device: torch.device | str = "cpu"
    steps: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))
    completions: torch.Tensor = field(init=False)
    generated_tokens: torch.Tensor = field(init=False)
    hit_max: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        zero = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        self.completions, self.generated_tokens, self.hit_max = zero(), zero(), zero()

    def count_step(self, kind: str) -> None:
        self.steps[kind] = self.steps.get(kind, 0) + 1

    def add_batch(self, batch: ScoredBatch) -> None:
        self.completions += batch.completion_lengths.numel()
        self.generated_tokens += batch.completion_lengths.sum().to(self.generated_tokens)
        self.hit_max += batch.hit_max.sum().to(self.hit_max)

    @contextlib.contextmanager
    def timer(self, name: str, synchronize: Callable[[], None] | None = None) -> Iterator[None]:
        """Add the wall-clock time of the block to `name`; `synchronize` (e.g. `torch.cuda.synchronize`) first
        waits for queued device work, so that asynchronous kernels are counted where they ran."""
        if synchronize is not None:
            synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if synchronize is not None:
                synchronize()
            self.seconds[name] += time.perf_counter() - start

    def summarize(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None, num_processes: int) -> dict:
        """The log fields: `on_policy_steps`, `teacher_generated_steps` (optimizer steps since the last log line),
        `generated_length` (mean kept tokens per completion), `hit_max_new_tokens` (share of completions),
        and `time_generation`, `time_teacher`, `time_student` (seconds per optimizer step, averaged over processes).
        Every process must call it (`reduce_sum` is a collective)."""
        steps = sum(self.steps.values())
        timers = torch.tensor([self.seconds[name] for name in TIMERS], dtype=torch.float64, device=self.device)
        stacked = torch.cat([torch.stack([self.completions, self.generated_tokens, self.hit_max]), timers])
        if reduce_sum is not None:
            stacked = reduce_sum(stacked)
        completions, tokens, hit_max, *seconds = stacked.tolist()
        logs = {
            "on_policy_steps": self.steps.get(ON_POLICY, 0),
            "teacher_generated_steps": self.steps.get(TEACHER_GENERATED, 0),
        }
        if completions:
            logs.update(generated_length=tokens / completions, hit_max_new_tokens=hit_max / completions)
        generation, teacher, step = (total / num_processes / max(steps, 1) for total in seconds)
        logs.update(time_generation=generation, time_teacher=teacher, time_student=max(step - teacher, 0.0))
        return logs
