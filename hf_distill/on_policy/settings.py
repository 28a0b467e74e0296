"""What on-policy distillation is asked to do in this run (`DistillationConfig`'s on-policy and generation fields),
how it reads in logs and the lineage, and the refusals of what it cannot do, at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import GenerationConfig

from ..config import distillation_setting
from ..losses import KDObjective
from ..modeling.heads import is_encoder_decoder, shifts_labels


@dataclass(frozen=True)
class OnPolicySettings:
    """The on-policy fields of `DistillationConfig` (see there), read once.

    Attributes:
        on_fraction (`float`), teacher_fraction (`float`): `on_policy_fraction`, `teacher_generation_fraction`.
        max_new_tokens (`int`), temperature (`float`), top_p (`float`), top_k (`int`): the generation settings.
        kwargs (`dict`): `generation_kwargs`. backend (`str`): `generation_backend`.
        log_completions (`bool`), evaluate (`bool`): `log_completions`, `eval_on_policy` resolved.
    """

    on_fraction: float = 0.0
    teacher_fraction: float = 0.0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)
    backend: str = "transformers"
    log_completions: bool = False
    evaluate: bool = False

    @classmethod
    def from_args(cls, args: Any) -> OnPolicySettings:
        """From `DistillationConfig`, or the documented defaults for a plain `TrainingArguments`."""
        on = distillation_setting(args, "on_policy_fraction")
        evaluate = distillation_setting(args, "eval_on_policy")
        return cls(
            on_fraction=on,
            teacher_fraction=distillation_setting(args, "teacher_generation_fraction"),
            max_new_tokens=distillation_setting(args, "max_new_tokens"),
            temperature=distillation_setting(args, "generation_temperature"),
            top_p=distillation_setting(args, "generation_top_p"),
            top_k=distillation_setting(args, "generation_top_k"),
            kwargs=dict(distillation_setting(args, "generation_kwargs") or {}),
            backend=distillation_setting(args, "generation_backend"),
            log_completions=distillation_setting(args, "log_completions"),
            evaluate=on > 0 if evaluate is None else evaluate,
        )

    @property
    def trains(self) -> bool:
        """Some training steps generate."""
        return self.on_fraction > 0 or self.teacher_fraction > 0

    @property
    def generates(self) -> bool:
        """Anything generates: training steps or the evaluation metric."""
        return self.trains or self.evaluate

    def generation_config(self, greedy: bool = False, **ids: Any) -> GenerationConfig:
        """The `GenerationConfig` of a generated step (`greedy`: the evaluation's), with `pad_token_id`, `eos_token_id`
        ... as given in `ids`. What it leaves unset comes from the model's own generation config."""
        sample = self.temperature > 0 and not greedy
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k} if sample else {}
        settings = {**{k: v for k, v in ids.items() if v is not None}, **self.kwargs}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=sample, use_cache=True, **sampling, **settings
        )

    def describe(self) -> str:
        """What the log line of the objective adds, e.g. `; on-policy on 50% of steps (...)`."""
        if not self.trains:
            return ""
        parts = []
        if self.on_fraction:
            parts.append(f"the student's own completions on {self.on_fraction:.0%} of steps")
        if self.teacher_fraction:
            parts.append(f"the teacher's completions on {self.teacher_fraction:.0%}")
        how = "greedy" if self.temperature == 0 else f"sampled at temperature {self.temperature:g}"
        return (
            f"; KD over {' and '.join(parts)} ({how}, max_new_tokens={self.max_new_tokens}); ce_weight applies on "
            "off-policy steps only"
        )

    def record(self) -> dict[str, Any]:
        """The lineage's objective fields for a run that generates (empty otherwise)."""
        if not self.trains:
            return {}
        return {
            "on_policy_fraction": self.on_fraction,
            "teacher_generation_fraction": self.teacher_fraction,
            "generation": {
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
                "kwargs": dict(self.kwargs),
                "backend": self.backend,
            },
        }


def check_on_policy(
    settings: OnPolicySettings,
    student: nn.Module,
    objective: KDObjective,
    *,
    cached_teacher: bool,
    train_dataset: Any = None,
) -> None:
    """Refuse, before anything is loaded, an on-policy run this trainer cannot do, saying why and what to change.

    Raises:
        `ValueError`: a teacher cache, a student that is not a decoder-only LM, `kd_weight=0`, or a training set
            without labels (prompt-only) while some steps are off-policy.
    """
    if not settings.generates:
        return
    asked = (
        f"on_policy_fraction={settings.on_fraction}, teacher_generation_fraction={settings.teacher_fraction}, "
        f"eval_on_policy={settings.evaluate}"
    )
    if cached_teacher:
        raise ValueError(
            f"{asked}: a teacher cache cannot grade new text (it holds the teacher's top-k on the cached rows only). "
            "Train on-policy with a live teacher, or set both fractions to 0 and eval_on_policy=False."
        )
    if is_encoder_decoder(student) or not shifts_labels(student):
        raise ValueError(
            f"{asked}: on-policy distillation generates with a decoder-only causal LM student; "
            f"{type(student).__name__} is not one. Set both fractions to 0 and eval_on_policy=False."
        )
    if settings.trains and objective.kd_weight == 0:
        raise ValueError(
            f"{asked} with kd_weight=0: generated steps have no labels, so they train the KD term only; set kd_weight "
            "> 0."
        )
    columns = getattr(train_dataset, "column_names", None)
    off_policy = settings.on_fraction + settings.teacher_fraction < 1
    if settings.trains and off_policy and columns is not None and "labels" not in columns:
        raise ValueError(
            f"{asked}: the training set has no `labels` column (prompt-only rows), but "
            f"{1 - settings.on_fraction - settings.teacher_fraction:.0%} of steps are off-policy and would train on the "
            "prompts themselves. Set on_policy_fraction + teacher_generation_fraction = 1, or give prompt-completion "
            "rows (labels -100 on the prompt)."
        )
