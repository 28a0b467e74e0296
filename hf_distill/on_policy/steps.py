"""The hook the trainer calls once per optimizer step: decide the step's kind, and on a generated step replace each
micro-batch by its scored batch (prompts -> completions -> prompt + completion with labels on the completion) before
the trainer counts the step's target tokens, so that gradient accumulation and DDP normalise over generated tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._logging import get_logger
from ..modeling.heads import unwrap_peft
from ..teacher.base import Teacher
from .generation import (
    generate_completions,
    generation_seed,
    student_for_generation,
    teacher_for_generation,
    vocabulary_size,
)
from .metrics import OnPolicyMetrics
from .prompts import Prompts, extract_prompts
from .schedule import OFF_POLICY, TEACHER_GENERATED, step_kind
from .scored_batch import ScoredBatch, scored_batch
from .settings import OnPolicySettings

logger = get_logger(__name__)

LOGGED_COMPLETIONS = 3  # prompt/completion pairs `log_completions` shows per log line


class OnPolicySteps:
    """Generated steps for one trainer.

    Args:
        settings (`OnPolicySettings`): what the run asks for.
        student (`nn.Module`): the unwrapped student (its generation config and vocabulary).
        teacher (`Teacher`): the run's teacher (it generates on teacher-generated steps).
        tokenizer (*optional*): the trainer's `processing_class`: pad/EOS ids, and decoding for `log_completions`.
        device (`torch.device`): this process's device (timers synchronise it when it is a GPU).

    Raises:
        `ValueError`: teacher-generated steps with a teacher that cannot generate, or a sharded teacher.
    """

    def __init__(
        self, settings: OnPolicySettings, student: nn.Module, teacher: Teacher, tokenizer: Any, device: torch.device
    ) -> None:
        self.settings = settings
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.kind = OFF_POLICY  # the current optimizer step's
        self.metrics = OnPolicyMetrics(device)
        self.synchronize = torch.cuda.synchronize if device.type == "cuda" else None
        self.samples: list[tuple[str, str]] = []  # the latest generated step's, for log_completions
        if settings.teacher_fraction and teacher.placement.kind == "shard":
            raise ValueError(
                f"teacher_generation_fraction={settings.teacher_fraction} with a sharded teacher "
                f"({teacher.placement.describe()}): generation from a sharded teacher is not supported; use "
                "teacher_placement='replicate' or teacher_generation_fraction=0."
            )
        if settings.teacher_fraction and teacher.alignment_record() is not None:
            raise ValueError(
                f"teacher_generation_fraction={settings.teacher_fraction} with a teacher of another tokenizer "
                "(cross_tokenizer): its completions would have to be re-tokenized for the student, which is not "
                "supported; use on_policy_fraction (the student generates, the teacher grades) instead."
            )
        if settings.teacher_fraction:
            with teacher_for_generation(teacher):  # refuses a teacher without generate now, not at its first step
                pass
        self.pad_token_id, self.eos_token_id = _special_ids(student, tokenizer, settings.kwargs)
        shared = teacher.shared_vocab
        self._suppress = {
            "student": _beyond(shared, vocabulary_size(student)),
            "teacher": _beyond(shared, vocabulary_size(teacher.module)) if teacher.module is not None else [],
        }

    # ---- the step hook ----

    def prepare(self, batches: list[dict], step: int, model: nn.Module, accelerator: Any, seed: int) -> list[dict]:
        """The micro-batches optimizer step `step` trains on: the data's own (off-policy), or their scored batches.

        Args:
            batches (`list[dict]`): the step's micro-batches, as the dataloader gave them.
            step (`int`): `TrainerState.global_step` before the step.
            model (`nn.Module`): the wrapped student the Trainer trains (`trainer.model_wrapped`).
            accelerator (`accelerate.Accelerator`): the trainer's.
            seed (`int`): `args.seed`.
        """
        self.kind = step_kind(step, self.settings.on_fraction, self.settings.teacher_fraction)
        self.metrics.count_step(self.kind)
        if self.kind == OFF_POLICY:
            if self.settings.trains and any(_no_targets(batch) for batch in batches):
                raise ValueError(
                    f"Optimizer step {step} is off-policy but its batch has no label to learn (no `labels`, or only "
                    "-100: prompt-only rows), so the step would train on nothing. Set on_policy_fraction + "
                    "teacher_generation_fraction = 1, or give prompt-completion rows (labels -100 on the prompt)."
                )
            return batches
        rank = accelerator.process_index
        with self.metrics.timer("time_generation", self.synchronize):
            scored = [
                self.generate(batch, model, accelerator, generation_seed(seed, step, i, rank), self.kind)
                for i, batch in enumerate(batches)
            ]
        for batch in scored:
            self.metrics.add_batch(batch)
        if self.settings.log_completions and scored and accelerator.is_main_process:
            self.samples = self._decoded(scored[0])
        return [batch.inputs() for batch in scored]

    def generate(
        self, batch: dict, model: nn.Module, accelerator: Any, seed: int, kind: str, greedy: bool = False
    ) -> ScoredBatch:
        """The scored batch of one micro-batch: its prompts completed by the student (`on_policy`) or the teacher."""
        prompts = extract_prompts(batch, self.pad_token_id)
        who = "teacher" if kind == TEACHER_GENERATED else "student"
        config = self.settings.generation_config(
            greedy, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id, **self._suppressed(who)
        )
        if kind == TEACHER_GENERATED:
            with teacher_for_generation(self.teacher) as teacher:
                completions = generate_completions(teacher, prompts, config, seed, device=self.teacher.device)
        else:
            with student_for_generation(model, accelerator) as student:
                completions = generate_completions(student, prompts, config, seed)
        return self.score(prompts, completions)

    def score(self, prompts: Prompts, completions: torch.Tensor) -> ScoredBatch:
        stop_ids = _as_list(self.eos_token_id)
        return scored_batch(prompts, completions, stop_ids, self.pad_token_id, self.settings.max_new_tokens)

    def timer(self, name: str) -> Any:
        """A context that adds its block's time to `time_teacher` / `time_student`."""
        return self.metrics.timer(name, self.synchronize)

    # ---- logs ----

    def log_fields(self, reduce_sum: Any, num_processes: int) -> dict[str, float]:
        """The fields of a training log line since the previous one (a collective: every process calls it); logs
        the latest prompt/completion pairs when `log_completions` is on."""
        fields = self.metrics.summarize(reduce_sum, num_processes)
        self.metrics = OnPolicyMetrics(self.metrics.device)
        for prompt, completion in self.samples:
            logger.info(f"generated completion\n  prompt: {prompt!r}\n  completion: {completion!r}")
        self.samples = []
        return fields

    def _decoded(self, batch: ScoredBatch) -> list[tuple[str, str]]:
        """The first rows' prompt and completion, decoded with the tokenizer (token ids without one)."""
        decode = getattr(self.tokenizer, "decode", None) or (lambda ids: str(ids.tolist()))
        pairs = []
        for row in range(min(LOGGED_COMPLETIONS, batch.input_ids.shape[0])):
            real = batch.attention_mask[row].bool()
            tokens, prompt_length = batch.input_ids[row][real], int((batch.labels[row][real] == -100).sum())
            pairs.append((decode(tokens[:prompt_length]), decode(tokens[prompt_length:])))
        return pairs

    def _suppressed(self, who: str) -> dict[str, Any]:
        """Tokens beyond the vocabulary both models share: the other model could not read them."""
        ids = self._suppress[who]
        return {"suppress_tokens": ids} if ids and "suppress_tokens" not in self.settings.kwargs else {}


def _beyond(shared: int | None, size: int | None) -> list[int]:
    return list(range(shared, size)) if shared is not None and size is not None and size > shared else []


def _as_list(ids: Any) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def _special_ids(student: nn.Module, tokenizer: Any, kwargs: dict[str, Any]) -> tuple[int, Any]:
    """`(pad_token_id, eos_token_id)` of the generation: `generation_kwargs` first; then for EOS the student's
    generation config (where `model.generate` reads its stop tokens, e.g. a chat model's end-of-turn), the tokenizer
    and the config; for padding the tokenizer (what the collator pads with), the generation config and the config. A
    model without a pad id pads with its EOS (as `generate` does)."""
    model = unwrap_peft(student)
    generation_config, config = getattr(model, "generation_config", None), getattr(model, "config", None)
    order = {
        "eos_token_id": [kwargs, generation_config, tokenizer, config],
        "pad_token_id": [kwargs, tokenizer, generation_config, config],
    }

    def first(name: str) -> Any:
        for source in order[name]:
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if value is not None:
                return value
        return None

    eos = first("eos_token_id")
    pad = first("pad_token_id")
    if pad is None:
        pad = _as_list(eos)[0] if _as_list(eos) else 0  # masked out everywhere, so any id pads
    return int(pad), eos


def _no_targets(batch: dict) -> bool:
    """A batch with nothing to learn off-policy: no `labels`, or only -100 (prompt-only rows as
    `hf_distill.data.tokenize_for_distillation` writes them)."""
    labels = batch.get("labels")
    return labels is None or not bool((labels != -100).any())
