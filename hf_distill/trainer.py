"""`DistillationTrainer`: `transformers.Trainer` whose loss is distillation from a frozen teacher. Glue only: the loss
math is in `hf_distill.losses`, the teacher behind one interface in `hf_distill.teacher.base` (its kinds in
`hf_distill.teacher` and `hf_distill.offline`), when the memory-efficient path runs in `hf_distill.training.chunking`,
and saving, comparing and publishing in `hf_distill.hub.publishing`."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from peft import PeftConfig
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import nested_detach
from transformers.trainer_utils import EvalLoopOutput

from ._logging import get_logger
from .config import cross_tokenizer_method, distillation_setting, kd_objective_from_args
from .cross_tokenizer.setup import setup_cross_tokenizer_teacher
from .hub.comparison import LabelLoss
from .hub.lineage import Lineage
from .hub.publishing import PublishingMixin
from .losses import (
    HeadInput,
    KDObjective,
    ObjectiveSums,
    Positions,
    count_targets,
    distillation_sums,
    normalize_token_sum,
)
from .modeling.adapters import wrap_student
from .modeling.forward import (
    LABEL_COLUMNS,
    accepted_arguments,
    decoder_inputs,
    model_logits,
    outputs_for_metrics,
    select_arguments,
)
from .modeling.heads import is_encoder_decoder, is_token_level, shifts_labels, unwrap_peft
from .modeling.lm_head import capture_head_input, linear_head
from .offline.cache import TeacherCache
from .offline.setup import setup_cached_teacher, uses_cache
from .on_policy.evaluation import REVERSE_KL, on_policy_reverse_kl
from .on_policy.schedule import OFF_POLICY
from .on_policy.settings import OnPolicySettings, check_on_policy
from .on_policy.steps import OnPolicySteps
from .preflight import MemoryPlan, memory_plan, refusal_message
from .served.setup import served_spec, setup_served_teacher
from .teacher.base import Teacher
from .teacher.labels import check_class_labels, check_problem_type
from .teacher.placement import Placement
from .teacher.setup import setup_teacher
from .training.checkpoints import resolve_resume
from .training.chunking import heads_reproduce_logits, resolve_chunk_size
from .training.finite import FiniteCheck
from .training.metrics import DistillationMetrics, label_loss
from .training.output_guard import check_output_dir
from .training.process_group import destroy_gloo_group_at_exit

logger = get_logger(__name__)


class DistillationTrainer(PublishingMixin, Trainer):
    r"""
    A [`~transformers.Trainer`] that trains its `model` (the student) to match a frozen `teacher_model`.

    Everything `Trainer` accepts works unchanged (datasets, collators, `compute_metrics`, callbacks, `TrainingArguments`);
    only the loss differs. The teacher runs in evaluation mode, under `torch.no_grad()`, on the student's device; it
    is never handed to the optimizer and never saved with the student.

    The loss is `kd_weight · T²·D(p_teacher, p_student) + ce_weight · CE(student, labels)` averaged over every valid
    position (`labels != -100`, or real tokens when a batch has no labels) of the optimizer step, on all processes.
    Its settings are the fields of [`DistillationConfig`]; with plain `TrainingArguments` the documented defaults
    apply (forward KL, T=1, `kd_weight=1`, `ce_weight=0`). Causal-LM labels are shifted as the model's own loss does;
    the CE term is computed here, from the student's logits (smoothed by `label_smoothing_factor` as `Trainer` does).
    `eval_loss` keeps its `Trainer` meaning (the student's label loss: `exp(eval_loss)` is the perplexity); the
    objective is `eval_distillation_loss`, and also `eval_loss` when the evaluation data has no labels.

    Args:
        model (`PreTrainedModel` or `nn.Module`):
            The student. A plain module must return a dict or `ModelOutput` with `logits`.
        args (`TrainingArguments` or `DistillationConfig`, *optional*):
            Training arguments.
        teacher_model (`PreTrainedModel`, `nn.Module` or `str`, *optional*):
            The teacher: a model (a `PeftModel` too), or a Hub id / local folder / `packaged:` name loaded with the
            student's head type and dtype (a folder holding a PEFT adapter loads its base with the adapter on top).
            `"base"` uses a PEFT student's own base model with its adapters disabled, with no second copy of the
            weights. Defaults to `args.teacher_model_name_or_path`.
        teacher_processing_class (*optional*):
            The teacher's tokenizer, to check that it matches the student's (`processing_class`). Loaded from the
            teacher's folder when the teacher is given by name.
        teacher_cache (`str` or `TeacherCache`, *optional*):
            Train from a teacher cache (see `hf_distill.cache_teacher`) instead of a live teacher: a folder or a Hub
            dataset id. Nothing is loaded; the student trains on the cache's rows with a sparse KD term over the
            teacher's top-k (`teacher_cache_tail`).
        peft_config (`peft.PeftConfig`, *optional*):
            Train the student as adapters (LoRA, DoRA, IA³, ...) over the frozen `model`, as TRL's trainers do. The
            saved output is then the adapter, or a merged full model with `merge_adapter_on_save=True`.
        *trainer_args, **trainer_kwargs:
            Everything else `transformers.Trainer` takes.

    Example:
        ```python
        from hf_distill import DistillationConfig, DistillationTrainer

        trainer = DistillationTrainer(  # was: Trainer(
            model=student,
            teacher_model=teacher,
            args=DistillationConfig(output_dir="student", kd_temperature=2.0, ce_weight=0.5),
            train_dataset=train_dataset,
            processing_class=tokenizer,
        )
        trainer.train()
        ```
    """

    # `compute_loss` divides by the token count of the whole accumulation window (see `get_batch_samples`).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *trainer_args: Any,
        teacher_model: nn.Module | str | None = None,
        teacher_processing_class: Any | None = None,
        peft_config: PeftConfig | None = None,
        teacher_cache: str | TeacherCache | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        if trainer_kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "compute_loss_func is not supported by DistillationTrainer: the loss is the distillation objective. "
                "Choose it with DistillationConfig (kd_loss, kd_temperature, kd_weight, ce_weight)."
            )
        # Before anything loads, and before Trainer creates output_dir (a Hub id must not then pass for a folder).
        check_output_dir(getattr(args, "output_dir", None), model, teacher_model, teacher_cache, args)
        check_problem_type(model, "student")
        # A teacher object is checked now, before setup's label checks could refuse it for a less telling reason;
        # one given by name is checked once loaded (below).
        check_problem_type(teacher_model, "teacher")
        super().__init__(wrap_student(model, peft_config), args, *trainer_args, **trainer_kwargs)
        destroy_gloo_group_at_exit()  # a CPU launch that finished must not abort at exit (see the module)
        self.kd_objective: KDObjective = kd_objective_from_args(self.args)
        on_policy = OnPolicySettings.from_args(self.args)
        cached = uses_cache(teacher_model, teacher_cache, self.args)
        check_on_policy(
            on_policy, self.model, self.kd_objective, cached_teacher=cached, train_dataset=self.train_dataset
        )
        cross_tokenizer = cross_tokenizer_method(self.args)
        served = None if cached else served_spec(teacher_model, self.args)
        if cached:
            teacher = setup_cached_teacher(teacher_model, teacher_cache, self.model, self.args, self.processing_class)
        elif served is not None:
            teacher = setup_served_teacher(
                served,
                self.model,
                self.args,
                self.processing_class,
                self.kd_objective.kd_temperature,
                cross_tokenizer,
            )
        elif cross_tokenizer is not None:
            teacher = setup_cross_tokenizer_teacher(
                teacher_model,
                self.model,
                self.args,
                self.accelerator,
                cross_tokenizer,
                self.kd_objective.kd_temperature,
                self.processing_class,
                teacher_processing_class,
            )
        else:
            teacher = setup_teacher(
                teacher_model, self.model, self.args, self.accelerator, self.processing_class, teacher_processing_class
            )
        self.teacher: Teacher = teacher
        check_problem_type(teacher.module, "teacher")
        self.train_dataset, self.data_collator = teacher.prepare_training_data(self.train_dataset, self.data_collator)
        if self.eval_dataset is not None:
            self.eval_dataset = teacher.prepare_eval_data(self.eval_dataset)
        if not self.label_names:  # plain modules: keep `labels` flowing to the loss and to compute_metrics
            self.label_names = ["labels"]
        self._shift_labels = shifts_labels(self.model)
        self._token_level = is_token_level(self.model)
        self._student_arguments = accepted_arguments(self.model)
        self._chunk_size = resolve_chunk_size(self.model, teacher, self.args, self.accelerator)
        self._heads_verified: bool | None = None  # checked on the first chunked batch
        self._logits_wanted = False  # set by prediction_step when compute_metrics needs the student's logits
        self._train_metrics = DistillationMetrics.zeros(self.args.device)
        self._eval_metrics = DistillationMetrics.zeros(self.args.device)
        self._finite_check = FiniteCheck(self.accelerator, teacher)  # NaN/inf stop before the step
        self.add_callback(self._finite_check)
        # On-policy distillation (hf_distill.on_policy): None when nothing generates, and then nothing below changes.
        self._on_policy = None
        if on_policy.generates:
            self._on_policy = OnPolicySteps(on_policy, self.model, teacher, self.processing_class, self.args.device)
        # Generated steps have no dataset labels: their objective is the KD term alone (kd_weight > 0 is checked).
        self._generated_objective = None
        if self._on_policy is not None:
            self._generated_objective = dataclasses.replace(self.kd_objective, ce_weight=0.0)

    # ---- data: the columns the loss needs must survive `remove_unused_columns` ----

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [*LABEL_COLUMNS, "attention_mask", "decoder_attention_mask", *self.teacher.input_columns()]
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    # ---- gradient-accumulation normalisation: the one count every micro-batch divides by ----

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device) -> tuple[list, torch.Tensor]:
        """Fetch the micro-batches of one optimizer step and count their valid positions on all processes."""
        batch_samples = []
        read_ahead = self.teacher.read_ahead  # a served teacher scores batches ahead of the student
        for _ in range(num_batches):
            try:
                batch_samples.append(
                    next(epoch_iterator) if read_ahead is None else read_ahead.next_batch(epoch_iterator)
                )
            except StopIteration:
                break
        if self._trains_on_policy:  # a generated step trains on its scored batches, counted below like any batch
            batch_samples = self._on_policy.prepare(
                batch_samples, self.state.global_step, self.model_wrapped, self.accelerator, self.args.seed
            )
        num_targets = sum(
            (self._count_batch_targets(batch).to(device) for batch in batch_samples), torch.tensor(0, device=device)
        )
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_targets = self.accelerator.gather(num_targets).sum()
        return batch_samples, num_targets

    def _count_batch_targets(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch.get("labels")
        mask = self._position_attention_mask(batch)
        if labels is not None:
            shape = labels[:, 1:].shape if self._shift_labels else labels.shape
        elif mask is not None and self._token_level:
            shape = mask[:, 1:].shape if self._shift_labels else mask.shape
        else:
            shape = (next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0),)
        return count_targets(torch.Size(shape), labels, mask, self._shift_labels)

    def _position_attention_mask(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch.get(self._mask_column())

    def _mask_column(self) -> str:
        return "decoder_attention_mask" if is_encoder_decoder(self.model) else "attention_mask"

    @property
    def _trains_on_policy(self) -> bool:
        return self._on_policy is not None and self._on_policy.settings.trains

    def _generated_step(self, model: nn.Module) -> bool:
        """The micro-batch being trained belongs to an on-policy or teacher-generated step."""
        return model.training and self._trains_on_policy and self._on_policy.kind != OFF_POLICY

    def _timer(self, name: str) -> Any:
        return self._on_policy.timer(name) if self._trains_on_policy else contextlib.nullcontext()

    def _loss_processes(self) -> int:
        averaged = self.args.average_tokens_across_devices and self.args.world_size > 1
        return self.accelerator.num_processes if averaged else 1

    # ---- the loss ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Distillation loss of one micro-batch, already scaled for gradient accumulation.

        `num_items_in_batch` is the valid-position count of the whole accumulation window on all processes (from
        `get_batch_samples`); without it (evaluation), the batch is normalised by its own count.
        """
        sums, outputs = self._batch_sums(model, inputs, num_items_in_batch)
        (self._train_metrics if model.training else self._eval_metrics).add(sums)
        if num_items_in_batch is None:
            loss = normalize_token_sum(sums.total, sums.num_targets)
        else:
            loss = normalize_token_sum(sums.total, num_items_in_batch, self._loss_processes())
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        with self._timer("time_step"):  # the step's split in the logs (on-policy runs): student = step - teacher
            return super().training_step(model, inputs, num_items_in_batch)

    def _batch_sums(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any, objective: KDObjective | None = None
    ) -> tuple:
        """`(ObjectiveSums, student outputs)` of one micro-batch: teacher targets, student forward, objective (the
        run's, without its CE term on a generated step, unless `objective` is given)."""
        if objective is None:
            objective = self._generated_objective if self._generated_step(model) else self.kd_objective
        labels = inputs.get("labels")
        check_class_labels(labels)
        features = {k: v for k, v in inputs.items() if k not in LABEL_COLUMNS}  # the teacher's columns included
        student_features = {k: v for k, v in features.items() if k not in self.teacher.own_columns}
        student_inputs = select_arguments(decoder_inputs(model, student_features, labels), self._student_arguments)
        chunked = self._use_chunked_loss(model, student_inputs, features, labels)
        # The teacher first: its forward's activations are freed before the student's are held for the backward.
        with self.accelerator.autocast(), self._timer("time_teacher"):
            teacher = self.teacher.targets(features, labels, chunked=chunked)
        student, outputs = self._student_forward(model, student_inputs, chunked)
        sums = distillation_sums(
            objective,
            student,
            teacher,
            Positions(labels, self._position_attention_mask(features), self._shift_labels, model.training),
            chunk_size=self._chunk_size if chunked else 0,
            vocab_size=self.teacher.shared_vocab,
        )
        if objective is self._generated_objective:  # the student's CE on its own tokens is no CE term: not logged
            sums = dataclasses.replace(sums, ce=None)
        self._finite_check.observe(model, sums, teacher, student)
        self._check_count(sums, inputs, num_items_in_batch)
        return sums, outputs

    def _student_forward(self, model: nn.Module, student_inputs: dict[str, Any], chunked: bool) -> tuple:
        """`(what the loss reads, outputs)`: the student's logits, or on the memory-efficient path its final hidden
        states with its head (`HeadInput`: its `(B, T, V)` logits are never built)."""
        if not chunked:
            outputs = model(**student_inputs)
            return model_logits(outputs, "student"), outputs
        with capture_head_input(self.model) as hidden:
            outputs = model(**student_inputs)  # the wrapped model: DDP/FSDP hooks and adapters see this forward
        return HeadInput(hidden.features(), linear_head(self.model)), outputs

    def _use_chunked_loss(self, model: nn.Module, student_inputs: dict, features: dict, labels: Any) -> bool:
        """The memory-efficient path, when this run allows it (`kd_chunk_size`), `compute_metrics` does not need the
        student's logits, and both heads passed their one-time check (`hf_distill.training.chunking`)."""
        if not self._chunk_size or (not model.training and self._logits_wanted):
            return False
        if self._heads_verified is None:
            self._heads_verified = heads_reproduce_logits(
                self.model, model, student_inputs, self.teacher, features, labels
            )
        return self._heads_verified

    def _check_count(self, sums: ObjectiveSums, inputs: dict[str, Any], num_items_in_batch: Any) -> None:
        # The window count was taken before the forward, from the batch alone. Only for a module of unknown kind
        # without labels can the logits disagree with that rule; check there (it syncs) rather than mis-normalise.
        ambiguous = self._token_level is None and inputs.get("labels") is None
        if (
            ambiguous
            and num_items_in_batch is not None
            and sums.num_targets.item() != self._count_batch_targets(inputs).item()
        ):
            raise ValueError(
                f"The student's logits have {sums.num_targets.item()} valid positions in this batch but the batch "
                "suggests a different count; give the batch `labels` (use -100 for positions to ignore) so the "
                "positions that count are unambiguous."
            )

    # ---- evaluation: student logits to compute_metrics, distillation metrics in the eval logs ----

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        inputs = self._prepare_inputs(inputs)
        if ignore_keys is None:
            ignore_keys = getattr(getattr(self.model, "config", None), "keys_to_ignore_at_inference", [])
        labels = inputs.get("labels")
        self._logits_wanted = not prediction_loss_only
        with torch.no_grad(), self.compute_loss_context_manager():
            sums, outputs = self._batch_sums(model, inputs, None)
        self._eval_metrics.add(sums)  # the objective's terms: eval_distillation_loss, eval_kd_loss, eval_ce_loss
        loss = label_loss(sums)
        if prediction_loss_only:
            return loss, None, None
        logits = nested_detach(outputs_for_metrics(outputs, ignore_keys))
        return loss, logits, None if labels is None else labels.detach()

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """`{prefix}_loss` keeps its `Trainer` meaning (the student's label loss, from `prediction_step`); the objective
        over every valid position is `{prefix}_distillation_loss`, and `{prefix}_loss` too when no batch had labels."""
        self._eval_metrics = DistillationMetrics.zeros(self.args.device)
        self._finite_check.start_evaluation()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._on_policy is not None and self._on_policy.settings.evaluate:
            output.metrics[f"{metric_key_prefix}_on_policy_reverse_kl"] = self._on_policy_reverse_kl(dataloader)
        self._finite_check.warn_after_evaluation(metric_key_prefix)
        distillation = self._eval_metrics.summarize(self._reduce_sum, prefix=f"{metric_key_prefix}_", objective=True)
        output.metrics.update(distillation)
        if f"{metric_key_prefix}_loss" not in output.metrics and distillation:
            output.metrics[f"{metric_key_prefix}_loss"] = distillation[f"{metric_key_prefix}_distillation_loss"]
        return output

    def _on_policy_reverse_kl(self, dataloader) -> float | None:
        """The student's greedy completions of the eval prompts, scored with reverse KL at T=1 (on_policy/evaluation.py)."""
        self.model.eval()

        def score(batch: dict[str, Any]) -> ObjectiveSums:
            with torch.no_grad(), self.compute_loss_context_manager():
                return self._batch_sums(self.model, batch, None, objective=REVERSE_KL)[0]

        return on_policy_reverse_kl(
            dataloader, self._on_policy, self.model_wrapped, self.accelerator, score, self._reduce_sum
        )

    # ---- logging ----

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log line: add the terms accumulated since the previous one
            logs.update(self._train_metrics.summarize(self._reduce_sum))
            self._train_metrics = DistillationMetrics.zeros(self.args.device)
            if self._trains_on_policy:  # steps of each kind, completion lengths, the time split
                logs.update(self._on_policy.log_fields(self._reduce_sum, self.accelerator.num_processes))
        super().log(logs, start_time)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum") if self.accelerator.num_processes > 1 else tensor

    @property
    def teacher_model(self) -> Any:
        """The teacher as given, frozen and placed: its `nn.Module` (for `teacher_model="base"`, a module running the
        student with its adapters disabled), or in cache mode the cache teacher (`CachedTeacher`). The interface the
        trainer calls it through is `self.teacher` (`hf_distill.teacher.base.Teacher`)."""
        return self.teacher if self.teacher.module is None else self.teacher.module

    @property
    def teacher_placement(self) -> Placement:
        """Where the teacher lives in this run (see `DistillationConfig.teacher_placement`)."""
        return self.teacher.placement

    @property
    def kd_chunk_size(self) -> int:
        """Tokens per chunk of the memory-efficient loss in this run; 0 when the logits path is used."""
        return self._chunk_size

    def label_loss(self) -> LabelLoss:
        """How this run sums a model's label loss (the objective's CE term), to score another model alike."""
        return LabelLoss(self.kd_objective, self._shift_labels, self._mask_column())

    def lineage(self) -> Lineage:
        """The record of `PublishingMixin.lineage`, with the on-policy fraction and generation settings in its
        objective when some steps generate."""
        record = super().lineage()
        settings = OnPolicySettings.from_args(self.args)
        record.objective = {**record.objective, **settings.record()}
        record.objective["description"] += settings.describe()
        alignment = self.teacher.alignment_record()
        if alignment is not None:
            record.objective["cross_tokenizer"] = alignment
            record.objective["description"] += f"; teacher tokenizer aligned by the {alignment['method']} method"
        return record

    def memory_plan(self) -> MemoryPlan:
        """What one process will hold against its device's memory (see `hf_distill.preflight`); nothing is allocated."""
        return memory_plan(self)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = resolve_resume(self, args, kwargs)  # True -> the newest *complete* checkpoint (checkpoints.py)
        preflight = distillation_setting(self.args, "preflight")
        if preflight != "off":
            plan = self.memory_plan()  # every process decides alike: same models, arguments and device kind
            if self.is_world_process_zero():
                logger.info(plan.format())
            if preflight == "refuse" and not plan.fits:
                raise ValueError(refusal_message(plan))
        self._push_preflight()  # with push_to_hub: what the teacher's license refuses fails now (publishing.py)
        if self.is_world_process_zero():
            student = sum(p.numel() for p in self.model.parameters()) / 1e6
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad) / 1e6
            logger.info(
                f"distilling {self.teacher.describe()} into {type(unwrap_peft(self.model)).__name__} "
                f"({student:.2f}M parameters, {trainable:.2f}M trainable); {self.kd_objective.describe()}"
                f"{OnPolicySettings.from_args(self.args).describe()}"
            )
        failed = True
        try:
            result = super().train(*args, **kwargs)
            failed = False
            return result
        finally:  # a served teacher drops what it scored ahead; after an error, nothing keeps retrying
            self.teacher.training_ended(failed)
