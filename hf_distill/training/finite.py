"""Stop training on NaN/inf before the optimizer step writes it into the student, naming which model produced it.

Per training micro-batch, `FiniteCheck.observe` stacks five scalars on the device: the total loss, the KD and CE
sums, and one float32 sum over the teacher's and one over the student's tensors (their logits, or on the
memory-efficient path their final hidden states). A sum is non-finite exactly when its tensor holds a NaN or an inf
(a float32 accumulator cannot overflow on real activations), so one reduction pass per tensor and one `isfinite` on
five numbers make the whole test, with no host synchronisation. The flags of an optimizer step's micro-batches are
OR-ed on the device and read once, in `on_pre_optimizer_step`, before `optimizer.step()`: one host sync per optimizer
step (see `benchmarks/bench_nonfinite_check.py` for its cost).

Only a non-finite loss (total, KD or CE term) stops training: NaNs in padding positions that no loss term reads
(some attention kernels produce them for fully masked rows) are harmless. The teacher and student flags say which
model to blame. Under DeepSpeed, whose engine steps inside `backward`, the check runs on every micro-batch instead.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import TrainerCallback

from .._logging import get_logger
from ..losses import AlignedTeacher, HeadInput, ObjectiveSums, TopK

logger = get_logger(__name__)

# Order of the flags `observe` stacks.
_TOTAL, _TEACHER, _STUDENT, _KD, _CE = range(5)


class NonFiniteLossError(FloatingPointError):
    """Training stopped on a NaN/inf: `source` is `"teacher"`, `"student"`, `"KD term"`, `"CE term"` or `"loss"`;
    `step` is the optimizer step that failed (counted from 1) and `global_step` is `trainer.state.global_step` when it
    failed (the optimizer steps completed before it: `step - 1`)."""

    def __init__(self, message: str, source: str, step: int) -> None:
        super().__init__(message)
        self.source = source
        self.step = step
        self.global_step = step - 1


def _watched(output: torch.Tensor | HeadInput | TopK | None) -> torch.Tensor | None:
    """The tensor whose sum says whether a model's output holds NaN/inf: logits, or a `HeadInput`'s hidden states."""
    if isinstance(output, AlignedTeacher):  # another tokenizer's teacher: its distributions where chunks start
        return output.first_rows
    return output.hidden if isinstance(output, HeadInput) else output if torch.is_tensor(output) else None


def _sum(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if tensor is None or tensor.numel() == 0:
        return torch.zeros((), device=device)
    return tensor.detach().sum(dtype=torch.float32).to(device)  # one pass; NaN/inf survive any sum


class FiniteCheck(TrainerCallback):
    """Watches the training loss for NaN/inf and raises `NonFiniteLossError` before the optimizer step.

    Args:
        accelerator (`accelerate.Accelerator`): to combine the flags of all processes (every process raises alike).
        teacher (`Teacher` or `nn.Module`, *optional*): the teacher, whose weights (`parameters()`) are inspected when
            its outputs looked finite.
    """

    def __init__(self, accelerator: Any, teacher: Any = None) -> None:
        self.accelerator = accelerator
        self.teacher = teacher
        self.immediate = accelerator.distributed_type == DistributedType.DEEPSPEED  # steps inside backward
        self.step = 0
        self._flags: torch.Tensor | None = None  # (5,) bool: which parts were non-finite in this optimizer step
        # The memory-efficient path's last teacher hidden states and head (a reference, not a copy): only read to
        # diagnose a failure, by projecting them as the loss did.
        self._teacher_hidden: tuple[torch.Tensor, Any] | None = None
        self._eval_flags: torch.Tensor | None = None  # the same flags, over one evaluation

    def observe(
        self,
        model: nn.Module,
        sums: ObjectiveSums,
        teacher: torch.Tensor | HeadInput | TopK | None = None,
        student: torch.Tensor | HeadInput | None = None,
        teacher_head: Any = None,
    ) -> None:
        """Record one micro-batch: its `sums` and what the teacher and the student gave the loss: `(B, T, V)` /
        `(B, C)` logits, or a `HeadInput` (its `(B, T, H)` hidden states are watched, and a teacher's head kept to
        diagnose a failure), or a cached `TopK` (nothing to watch). Evaluation batches (`model.training` false) never
        stop anything: `warn_after_evaluation` reports them."""
        if isinstance(teacher, HeadInput):
            teacher_head = teacher.head if teacher_head is None else teacher_head
        teacher, student = _watched(teacher), _watched(student)
        self._teacher_hidden = None if teacher_head is None or teacher is None else (teacher, teacher_head)
        device = sums.total.device
        values = torch.stack(
            [
                sums.total.detach().float(),
                _sum(teacher, device),
                _sum(student, device),
                sums.kd.detach().float(),
                torch.zeros((), device=device) if sums.ce is None else sums.ce.detach().float(),
            ]
        )
        flags = ~torch.isfinite(values)  # (5,)
        if not model.training:  # evaluation: reported once, as a warning, by `warn_after_evaluation`
            self._eval_flags = flags if self._eval_flags is None else self._eval_flags | flags
            return
        self._flags = flags if self._flags is None else self._flags | flags
        if self.immediate:
            self.check(self.step)

    def check(self, step: int) -> None:
        """Read the flags of the current optimizer step (one host sync) and raise if its loss was not finite."""
        if self._flags is None:
            return
        flags, self._flags = self._flags, None
        bad = self._read(flags)
        if not (bad[_TOTAL] or bad[_KD] or bad[_CE]):
            return
        source, detail = self._diagnose(bad)
        self._teacher_hidden = None
        raise NonFiniteLossError(
            f"Non-finite loss at optimizer step {step + 1} (trainer.state.global_step was {step}): {detail} Training "
            "stopped before that optimizer step, so the student's weights hold no NaN/inf from this batch.",
            source,
            step + 1,
        )

    def _read(self, flags: torch.Tensor) -> list[bool]:
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags.int(), reduction="sum") > 0
        return flags.tolist()

    def start_evaluation(self) -> None:
        self._eval_flags = None

    def warn_after_evaluation(self, prefix: str = "eval") -> None:
        """After an evaluation (one host sync): one warning naming the model when its loss terms were NaN/inf, which
        would otherwise show only as `nan` metrics. Evaluation is not stopped."""
        if self._eval_flags is None:
            return
        flags, self._eval_flags = self._eval_flags, None
        bad = self._read(flags)
        if bad[_TOTAL] or bad[_KD] or bad[_CE]:
            _, detail = self._diagnose(bad)
            logger.warning(f"The {prefix} distillation metrics are NaN/inf: {detail}")
        self._teacher_hidden = None

    def _diagnose(self, bad: list[bool]) -> tuple[str, str]:
        if bad[_TEACHER] or self._teacher_weights_not_finite() or self._teacher_logits_not_finite():
            return "teacher", (
                "the teacher produced NaN/inf (its logits, or on the memory-efficient path its hidden states or LM "
                "head). Check the teacher's weights and its dtype: fp16 overflows are common, try "
                "teacher_dtype='bfloat16' or 'float32'."
            )
        if bad[_STUDENT]:
            return "student", (
                "the student produced NaN/inf (its logits or hidden states). Lower the learning rate, set "
                "max_grad_norm, or train in bf16/fp32 rather than fp16."
            )
        if bad[_KD]:
            return "KD term", (
                "the KD term is NaN/inf although both models' outputs are finite (extreme logits at this "
                "kd_temperature overflow the divergence). Try a kd_temperature nearer 1 or float32 models."
            )
        if bad[_CE]:
            return "CE term", (
                "the CE term is NaN/inf although the student's outputs are finite. Check the labels (-100 for "
                "ignored positions, ids below the vocabulary or class count)."
            )
        return "loss", "the total loss is NaN/inf although each of its terms is finite (a weight of inf?)."

    def _teacher_weights_not_finite(self) -> bool:
        # Only on failure: the memory-efficient path never builds the teacher's logits, so a NaN in its head weight
        # shows only in the KD term.
        if self.teacher is None:
            return False
        return any(not torch.isfinite(p).all() for p in self.teacher.parameters() if p.is_floating_point())

    @torch.no_grad()
    def _teacher_logits_not_finite(self, chunk: int = 1024) -> bool:
        # Only on failure: the memory-efficient path never builds the teacher's logits, so a head that overflows its
        # dtype (fp16) shows only in the KD term. Project the recorded hidden states as the loss did, chunk by chunk.
        if self._teacher_hidden is None:
            return False
        hidden, head = self._teacher_hidden
        try:
            flat = hidden.detach().reshape(-1, hidden.shape[-1])
            for start in range(0, flat.shape[0], chunk):
                if not torch.isfinite(head.transform(head.linear(flat[start : start + chunk]))).all():
                    return True
        except Exception:  # noqa: BLE001 - a diagnosis must not hide the error being reported
            return False
        return False

    # ---- TrainerCallback ----

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flags = None
        self.step = state.global_step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = state.global_step

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.check(state.global_step)
