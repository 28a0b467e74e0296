"""`DistillationTrainer`: `transformers.Trainer` whose loss is distillation from a frozen teacher. Glue only: the loss
math is in `hf_distill.losses`, the teacher's handling in `hf_distill.teacher`."""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftConfig
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import nested_detach
from transformers.trainer_utils import EvalLoopOutput

from .adapters import wrap_student
from .cached_loss import cached_objective
from .checkpoints import resolve_resume
from .config import distillation_setting, kd_objective_from_args
from .finite import FiniteCheck
from .label_mapping import apply_permutation, check_class_labels, check_problem_type
from .lm_head import capture_head_input, chunk_size_for, heads_reproduce_logits, linear_head, slice_batch
from .logs import get_logger
from .losses import KDObjective, ObjectiveSums, count_targets, normalize_token_sum, objective_sums
from .losses.chunked import chunked_objective_sums
from .metrics import DistillationMetrics, label_loss, outputs_for_metrics
from .output_guard import check_output_dir
from .placement import Placement, student_strategy
from .plan import MemoryPlan, plan_run, refusal_message
from .publishing import PublishingMixin
from .tasks import is_encoder_decoder, is_token_level, shifts_labels, unwrap_peft
from .teacher import accepted_arguments, decoder_inputs, describe_teacher, model_logits, run_teacher, select_arguments
from .teacher_cache import CACHE_COLUMNS, CacheCollator, CachedTeacher, TeacherCache, cache_rows, load_teacher_cache
from .teacher_setup import setup_teacher

logger = get_logger(__name__)

_LABEL_COLUMNS = ("labels", "label", "label_ids")


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
        self.kd_objective: KDObjective = kd_objective_from_args(self.args)
        if teacher_cache is not None:
            if teacher_model is not None:
                raise ValueError("Pass teacher_model or teacher_cache, not both: a cache stands in for the teacher.")
            loaded = teacher_cache if isinstance(teacher_cache, TeacherCache) else load_teacher_cache(teacher_cache)
            teacher_model = CachedTeacher(loaded)
        setup = setup_teacher(
            teacher_model, self.model, self.args, self.accelerator, self.processing_class, teacher_processing_class
        )
        self.teacher_model, self._shared_vocab = setup.model, setup.shared_vocab
        check_problem_type(self.teacher_model, "teacher")
        self._teacher_placement, self._teacher_device = setup.placement, setup.device
        if isinstance(self.teacher_model, CachedTeacher):  # train on the cache's rows, padded with their columns
            self.train_dataset = cache_rows(self.teacher_model.cache, self.train_dataset)
            self.data_collator = CacheCollator(self.data_collator)
        if not self.label_names:  # plain modules: keep `labels` flowing to the loss and to compute_metrics
            self.label_names = ["labels"]
        self._shift_labels = shifts_labels(self.model)
        self._token_level = is_token_level(self.model)
        self._student_arguments = accepted_arguments(self.model)
        self._chunk_size = self._resolve_chunk_size()
        self._heads_verified: bool | None = None  # checked on the first chunked batch
        self._logits_wanted = False  # set by prediction_step when compute_metrics needs the student's logits
        self._train_metrics = DistillationMetrics.zeros(self.args.device)
        self._eval_metrics = DistillationMetrics.zeros(self.args.device)
        self._finite_check = FiniteCheck(self.accelerator, self.teacher_model)  # NaN/inf stop before the step
        self.add_callback(self._finite_check)

    # ---- data: the columns the loss needs must survive `remove_unused_columns` ----

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        teacher_columns = accepted_arguments(self.teacher_model) or ()
        extra = [*_LABEL_COLUMNS, "attention_mask", "decoder_attention_mask", *teacher_columns]
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    # ---- gradient-accumulation normalisation: the one count every micro-batch divides by ----

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device) -> tuple[list, torch.Tensor]:
        """Fetch the micro-batches of one optimizer step and count their valid positions on all processes."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
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
        key = "decoder_attention_mask" if is_encoder_decoder(self.model) else "attention_mask"
        return batch.get(key)

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

    def _batch_sums(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> tuple:
        """`(ObjectiveSums, student outputs)` of one micro-batch, on whichever path (cached, chunked, logits)."""
        labels = inputs.get("labels")
        check_class_labels(labels)
        features = {k: v for k, v in inputs.items() if k not in _LABEL_COLUMNS}
        student_inputs = select_arguments(decoder_inputs(model, features, labels), self._student_arguments)
        if isinstance(self.teacher_model, CachedTeacher):
            sums, outputs = self._cached_sums(model, inputs, labels)
            self._finite_check.observe(model, sums)
        elif self._use_chunked_loss(model, student_inputs, features, labels):
            sums, outputs = self._chunked_sums(model, student_inputs, features, labels)
        else:
            outputs = model(**student_inputs)
            if model is self.teacher_model:  # scored as the student: its classes in the student's label order
                outputs["logits"] = apply_permutation(model, model_logits(outputs, "teacher"))
            with self.accelerator.autocast():
                scored = outputs if model is self.teacher_model else None  # compare_with_teacher scoring the teacher
                teacher_output = run_teacher(self.teacher_model, features, labels, self._teacher_device, scored)
            sums = objective_sums(
                self.kd_objective,
                model_logits(outputs, "student"),
                teacher_output.logits,
                labels,
                self._position_attention_mask(features),
                self._shift_labels,
                vocab_size=self._shared_vocab,
                require_labels=model.training,
            )
            self._finite_check.observe(model, sums, teacher_output.logits, model_logits(outputs, "student"))
        self._check_count(sums, inputs, num_items_in_batch)
        return sums, outputs

    # ---- the memory-efficient path: both models' hidden states, never their logits ----

    def _resolve_chunk_size(self) -> int:
        if not (self._shift_labels or is_encoder_decoder(self.model)):  # per-token LM heads only
            return 0
        cached = isinstance(self.teacher_model, CachedTeacher)  # then only the student's head is projected
        teacher = self.model if cached else self.teacher_model
        chunk = chunk_size_for(self.model, teacher, distillation_setting(self.args, "kd_chunk_size"))
        where = student_strategy(self.accelerator)
        if chunk and (self._teacher_placement.kind not in ("replicate", "cache") or where not in ("single", "ddp")):
            # Sharded, offloaded or elsewhere-placed heads are not whole tensors on this device between forwards.
            logger.info(
                f"The memory-efficient loss needs both LM heads whole on this device; with the student under "
                f"'{where}' and the teacher placed '{self._teacher_placement.describe()}' the logits path is used."
            )
            return 0
        return chunk

    def _use_chunked_loss(self, model: nn.Module, student_inputs: dict, features: dict, labels: Any) -> bool:
        if not self._chunk_size or (not model.training and self._logits_wanted):
            return False
        if self._heads_verified is None:
            self._heads_verified = self._verify_heads(model, student_inputs, features, labels)
        return self._heads_verified

    def _verify_heads(self, model: nn.Module, student_inputs: dict, features: dict, labels: Any) -> bool:
        # Once, on one example: projecting the captured hidden states must give each model's own logits, which
        # catches a post-head transform that `linear_head` does not know. Every process runs the same check.
        small_student, small_features = slice_batch(student_inputs, 1), slice_batch(features, 1)
        teacher = None if isinstance(self.teacher_model, CachedTeacher) else self.teacher_model
        small_labels = None if labels is None else labels[:1]
        ok = heads_reproduce_logits(self.model, lambda: model(**small_student), teacher, small_features, small_labels)
        if ok is False:  # None: the check itself failed, said so on one info line
            logger.warning(
                "The LM heads' outputs do not reproduce the models' logits (an unknown logit transform?); using the "
                "logits path. Set kd_chunk_size=0 to silence this."
            )
        return bool(ok)

    def _chunked_sums(self, model: nn.Module, student_inputs: dict, features: dict, labels: Any) -> tuple:
        with self.accelerator.autocast(), capture_head_input(self.teacher_model) as teacher_hidden:
            run_teacher(self.teacher_model, features, labels)
        with capture_head_input(self.model) as student_hidden:
            outputs = model(**student_inputs)  # the wrapped model: DDP/FSDP hooks and adapters see this forward
        teacher_features, teacher_head = teacher_hidden.features(), linear_head(self.teacher_model)
        sums = chunked_objective_sums(
            self.kd_objective,
            student_hidden.features(),
            linear_head(self.model),
            teacher_features,
            teacher_head,
            labels,
            self._position_attention_mask(features),
            self._shift_labels,
            self._chunk_size,
            vocab_size=self._shared_vocab,
            require_labels=model.training,
        )
        self._finite_check.observe(
            model, sums, teacher_features, student_hidden.hidden_states, teacher_head=teacher_head
        )
        return sums, outputs

    def _cached_sums(self, model: nn.Module, inputs: dict[str, Any], labels: Any) -> tuple:
        features = {k: v for k, v in inputs.items() if k not in (*_LABEL_COLUMNS, *CACHE_COLUMNS)}
        student_inputs = select_arguments(decoder_inputs(model, features, labels), self._student_arguments)
        chunked = self._use_chunked_loss(model, student_inputs, features, labels)
        return cached_objective(
            self.teacher_model, self.model, lambda: model(**student_inputs), inputs, self.kd_objective, labels,
            self._position_attention_mask(features), self._shift_labels, self._chunk_size if chunked else 0,
            model.training, distillation_setting(self.args, "teacher_cache_tail"),
        )  # fmt: skip

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
        self._finite_check.warn_after_evaluation(metric_key_prefix)
        distillation = self._eval_metrics.summarize(self._reduce_sum, prefix=f"{metric_key_prefix}_", objective=True)
        output.metrics.update(distillation)
        if f"{metric_key_prefix}_loss" not in output.metrics and distillation:
            output.metrics[f"{metric_key_prefix}_loss"] = distillation[f"{metric_key_prefix}_distillation_loss"]
        return output

    # ---- logging ----

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log line: add the terms accumulated since the previous one
            logs.update(self._train_metrics.summarize(self._reduce_sum))
            self._train_metrics = DistillationMetrics.zeros(self.args.device)
        super().log(logs, start_time)

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum") if self.accelerator.num_processes > 1 else tensor

    @property
    def teacher_placement(self) -> Placement:
        """Where the teacher lives in this run (see `DistillationConfig.teacher_placement`)."""
        return self._teacher_placement

    @property
    def kd_chunk_size(self) -> int:
        """Tokens per chunk of the memory-efficient loss in this run; 0 when the logits path is used."""
        return self._chunk_size

    def memory_plan(self) -> MemoryPlan:
        """What one process will hold against its device's memory (see `hf_distill.plan`); nothing is allocated."""
        return plan_run(self)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = resolve_resume(self, args, kwargs)  # True -> the newest *complete* checkpoint (checkpoints.py)
        preflight = distillation_setting(self.args, "preflight")
        if preflight != "off":
            plan = self.memory_plan()  # every process decides alike: same models, arguments and device kind
            if self.is_world_process_zero():
                logger.info(plan.format())
            if preflight == "refuse" and not plan.fits:
                raise ValueError(refusal_message(plan))
        if self.args.push_to_hub:  # a push the teacher's license refuses must fail now, not after training
            self._push_preflight()  # the license terms, and a license copy they need (publishing.py)
        if self.is_world_process_zero():
            student = sum(p.numel() for p in self.model.parameters()) / 1e6
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad) / 1e6
            logger.info(
                f"distilling {describe_teacher(self.teacher_model)} into {type(unwrap_peft(self.model)).__name__} "
                f"({student:.2f}M parameters, {trainable:.2f}M trainable); {self.kd_objective.describe()}"
            )
        return super().train(*args, **kwargs)
