"""The seq2seq pair: `Seq2SeqDistillationConfig` and `Seq2SeqDistillationTrainer`, the swap for `Seq2SeqTrainer` users.

Evaluation keeps `predict_with_generate`, `generation_max_length`, `generation_num_beams` and `generation_config`:
the student generates, `compute_metrics` receives the generated token ids (ROUGE, BLEU, ...) exactly as from
`Seq2SeqTrainer`, and the distillation metrics (`eval_distillation_loss`, `eval_kd_loss`, `eval_ce_loss`,
`eval_agreement`) come from the same batches scored teacher-forced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from .config import DistillationConfig
from .modeling.forward import LABEL_COLUMNS
from .modeling.heads import is_encoder_decoder
from .trainer import DistillationTrainer


@dataclass
class Seq2SeqDistillationConfig(DistillationConfig, Seq2SeqTrainingArguments):
    r"""
    [`~transformers.Seq2SeqTrainingArguments`] plus the distillation fields of [`DistillationConfig`]: the arguments
    of [`Seq2SeqDistillationTrainer`]. Every field parses from the command line with `HfArgumentParser`.

    Generation fields (upstream meaning): `predict_with_generate`, `generation_max_length`, `generation_num_beams`,
    `generation_config`, `sortish_sampler`. Distillation fields: see [`DistillationConfig`].

    Example:
        ```python
        >>> from hf_distill import Seq2SeqDistillationConfig
        >>> args = Seq2SeqDistillationConfig(output_dir="out", predict_with_generate=True, kd_temperature=2.0)
        >>> args.generation_num_beams, args.kd_temperature
        (None, 2.0)
        ```
    """


class Seq2SeqDistillationTrainer(DistillationTrainer, Seq2SeqTrainer):
    r"""
    [`DistillationTrainer`] for encoder-decoder students, with [`~transformers.Seq2SeqTrainer`]'s evaluation: the swap
    for `Seq2SeqTrainer` (`Seq2SeqTrainer(` → `Seq2SeqDistillationTrainer(teacher_model=..., `).

    Training is the distillation objective of [`DistillationTrainer`]. With `predict_with_generate=True`,
    `evaluate()` and `predict()` generate with the student (`generation_max_length`, `generation_num_beams`, or the
    `max_length=` / `num_beams=` keyword arguments of `evaluate`/`predict`, as with `Seq2SeqTrainer`) and hand the
    generated ids to `compute_metrics`; `eval_loss` (the student's label loss) and the distillation metrics come from
    a teacher-forced forward of the same batch. Without it, evaluation is that of [`DistillationTrainer`].

    Args:
        model, args, teacher_model and everything else: as [`DistillationTrainer`]. `args` is a
            [`Seq2SeqDistillationConfig`] (or a plain `Seq2SeqTrainingArguments`, with the distillation defaults).

    Example:
        ```python
        from hf_distill import Seq2SeqDistillationConfig, Seq2SeqDistillationTrainer

        trainer = Seq2SeqDistillationTrainer(  # was: Seq2SeqTrainer(
            model=student,
            teacher_model=teacher,
            args=Seq2SeqDistillationConfig(output_dir="student", predict_with_generate=True, generation_num_beams=2),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=compute_rouge,  # receives generated token ids
        )
        ```
    """

    def __init__(self, model: nn.Module | None = None, args: Any = None, *trainer_args: Any, **kwargs: Any) -> None:
        if args is None:
            args = Seq2SeqDistillationConfig(output_dir="tmp_trainer")  # Trainer's own default folder
        if not isinstance(args, Seq2SeqTrainingArguments):
            raise TypeError(
                f"Seq2SeqDistillationTrainer got args of type {type(args).__name__}, which has no generation settings "
                "(predict_with_generate, generation_max_length, ...); pass a Seq2SeqDistillationConfig, or use "
                "DistillationTrainer for evaluation without generation."
            )
        super().__init__(model, args, *trainer_args, **kwargs)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """`DistillationTrainer.prediction_step` (the distillation metrics and the label loss); with
        `predict_with_generate`, the student's generated ids (padded as `Seq2SeqTrainer` pads them) as predictions."""
        if not self.args.predict_with_generate or prediction_loss_only:
            return DistillationTrainer.prediction_step(self, model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        loss = None
        targets = labels is not None or inputs.get("decoder_input_ids") is not None
        if targets or not is_encoder_decoder(self.model):
            # Teacher-forced scoring of the targets: the label loss and the distillation metrics. Sources alone (no
            # labels, no decoder inputs) have no targets to score: they are only generated from, as Seq2SeqTrainer.
            loss, _, _ = DistillationTrainer.prediction_step(self, model, inputs, True, ignore_keys)
        generation_inputs = {k: v for k, v in inputs.items() if k not in (*LABEL_COLUMNS, *self.teacher.own_columns)}
        decoder_ids = generation_inputs.get("decoder_input_ids")
        if labels is not None and decoder_ids is not None and decoder_ids.shape == labels.shape:
            # Teacher-forced targets (e.g. from DataCollatorForSeq2Seq), not a prompt to continue: as Seq2SeqTrainer.
            generation_inputs.pop("decoder_input_ids")
            generation_inputs.pop("decoder_attention_mask", None)
        # Without labels Seq2SeqTrainer computes no loss: it only generates (and pads the generated ids).
        _, generated, _ = Seq2SeqTrainer.prediction_step(
            self, model, generation_inputs, False, ignore_keys=ignore_keys, **gen_kwargs
        )
        if labels is not None:  # padded to the generation length as Seq2SeqTrainer pads them
            config = self.model.generation_config
            if labels.shape[-1] < config.max_length:
                labels = self._pad_tensors_to_max_len(labels, config.max_length)
            elif config.max_new_tokens is not None and labels.shape[-1] < config.max_new_tokens + 1:
                labels = self._pad_tensors_to_max_len(labels, config.max_new_tokens + 1)
            labels = labels.detach()
        return loss, generated, labels
