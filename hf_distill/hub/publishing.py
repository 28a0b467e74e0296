"""Saving, comparing and publishing a distilled student: the part of `DistillationTrainer` that writes what leaves
the training run (weights, lineage record, card) and pushes it to the Hub. Mixed into the trainer; glue only."""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import HfApi, get_token
from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.utils import PushInProgress

from .._logging import get_logger
from ..config import distillation_setting
from ..modeling.adapters import is_peft_model, merged_copy
from ..modeling.heads import unwrap_peft
from ..provenance import local_folder, weights_bytes
from ..utils.atomic import write_text
from .comparison import compare_with_teacher
from .licenses import LicenseDecision
from .lineage import Lineage, build_lineage, dataset_records
from .push import (
    TRAINING_STATE,
    PushOptions,
    folder_card,
    license_decision,
    needs_license_copy,
    push_folder,
    teacher_license_files,
    user_license_copy,
    with_readme_license,
)

logger = get_logger(__name__)

# `Trainer.push_to_hub` / `create_model_card` arguments that hf_distill's card has no use for.
_IGNORED_CARD_ARGUMENTS = ("tasks", "dataset_args", "model_name")


class PublishingMixin:
    """`save_model`, `lineage`, `compare_with_teacher`, `create_model_card` and `push_to_hub` of the trainer."""

    _comparison: dict[str, Any] | None = None

    # ---- saving: the adapter (or the merged model on request) and the lineage record, never the teacher ----

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Checkpoints (`_internal_call` from the training loop) always hold the adapter, so that training can resume
        # from them; the save `push_to_hub` makes is internal (no second push) but final (merged on request).
        self._merge_on_save = (
            (not _internal_call or getattr(self, "_saving_for_push", False))
            and distillation_setting(self.args, "merge_adapter_on_save")
            and is_peft_model(self.accelerator.unwrap_model(self.model))
        )
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            self._merge_on_save = False

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if getattr(self, "_merge_on_save", False):
            trained = self.model
            self.model = merged_copy(self.accelerator.unwrap_model(trained))
            try:
                super()._save(output_dir, state_dict=None)
            finally:
                self.model = trained
        else:
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            folder = output_dir if output_dir is not None else self.args.output_dir
            record = self.lineage()
            record.evaluation = self._evaluation_with_size(folder)
            record.save(folder)

    def lineage(self) -> Lineage:
        """Where this student comes from: teacher (pinned, with its license), student initialisation and adapter,
        objective, datasets, library versions and, after `compare_with_teacher`, the comparison."""
        return build_lineage(
            self.accelerator.unwrap_model(self.model),
            self.teacher,
            self.kd_objective,
            chunk_size=self.kd_chunk_size,
            datasets=dataset_records(training=self.train_dataset, evaluation=self.eval_dataset),
            evaluation=self._evaluation_with_size(self.args.output_dir),
        )

    def _evaluation_with_size(self, folder: str) -> dict[str, Any] | None:
        """The comparison, with the student's weights on disk as saved in `folder` (unknown before a save)."""
        if self._comparison is None:
            return None
        sizes = {**self._comparison["size_on_disk"], "student": weights_bytes(folder)}
        return {**self._comparison, "size_on_disk": sizes}

    # ---- teacher vs student ----

    def compare_with_teacher(self, eval_dataset: Any = None, dataset_name: str | None = None) -> dict[str, Any]:
        """Evaluate the student and the teacher on the same set by the same code path (`evaluate`, with the teacher
        standing in for the student) and keep the result for the lineage record and the card.

        Args:
            eval_dataset (`Dataset`, *optional*): defaults to the trainer's `eval_dataset`.
            dataset_name (`str`, *optional*): how the card names the set; defaults to the dataset's own name.

        Returns:
            `dict`: see `hf_distill.hub.comparison.compare_with_teacher`.
        """
        self._comparison = compare_with_teacher(self, eval_dataset, dataset_name)
        return self._comparison

    # ---- the Hub ----

    def _repo_id(self, token: str | None, with_namespace: bool = True) -> str:
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id
        repo_id = repo_id or os.path.basename(os.path.abspath(self.args.output_dir))
        if "/" not in repo_id and with_namespace:  # the push's card needs the full id before the repo exists
            repo_id = f"{HfApi(token=token).whoami()['name']}/{repo_id}"
        return repo_id

    def _push_options(self, kwargs: dict[str, Any]) -> PushOptions:
        for name in _IGNORED_CARD_ARGUMENTS:
            kwargs.pop(name, None)
        # As Trainer's card: `dataset_tags` are the Hub dataset ids; `dataset` (a display name such as
        # "wikitext wikitext-2-raw-v1" in the example scripts) stands in for them only when none are given.
        tags, named = _as_list(kwargs.pop("dataset_tags", None)), _as_list(kwargs.pop("dataset", None))
        datasets = tags or named
        defaults = {
            name: distillation_setting(self.args, name)
            for name in ("acknowledge_teacher_license", "override_name_prefix")
        }
        known = list(PushOptions.__dataclass_fields__)
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise TypeError(
                f"push_to_hub() got unknown arguments {unknown}; it takes commit_message, blocking, token, revision, "
                f"private and the card arguments {', '.join(known)} (plus Trainer's dataset, dataset_tags)."
            )
        options = PushOptions(
            **{**defaults, **kwargs, "datasets": datasets or None, "tags": _as_list(kwargs.get("tags")) or None}
        )
        return with_readme_license(options, self.args.output_dir)  # the user's README license, unless license=

    def _push_preflight(self) -> None:
        """Before training, when `args.push_to_hub`: refuse now what the pushes would refuse after training (the
        teacher's license terms; a license copy the terms need that neither the teacher nor the output folder has),
        not after hours of training."""
        if not self.args.push_to_hub:
            return
        lineage = self.lineage()
        policy = license_decision(lineage, self._repo_id(self.args.hub_token, False), self._push_options({}))
        if needs_license_copy(policy):
            files = teacher_license_files(lineage.teacher, self.teacher.local_folder())
            user_license_copy(policy, files, [self.args.output_dir])

    def _local_paths(self) -> list[str]:
        student = unwrap_peft(self.accelerator.unwrap_model(self.model))
        found = [local_folder(student), getattr(getattr(student, "config", None), "_name_or_path", None)]
        found = [p for p in found if p and os.path.isabs(p)]
        return [*found, *self.teacher.local_paths(), os.path.abspath(self.args.output_dir)]

    def _hub_client(self) -> HfApi:
        # One client for the whole run: its non-blocking commits run one after another, in the order they were made.
        if getattr(self, "_hub_api", None) is None:
            self._hub_api = HfApi()
        return self._hub_api

    def _push(self, folder: str, options: PushOptions, token: str | None, **push_arguments: Any) -> Any:
        return push_folder(
            folder,
            self._repo_id(token),
            self.lineage(),
            options,
            teacher_folder=self.teacher.local_folder(),
            local_paths=self._local_paths(),
            card_folder=self.args.output_dir,
            token=token or get_token(),
            api=self._hub_client(),
            extra_tokens=(token, self.args.hub_token),
            **push_arguments,
        )

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Name the repository the pushes go to (`self.hub_model_id`, with its namespace) without creating it: the
        first push creates it, after the teacher's license, the card and the files have been checked, so that a
        refused push leaves no empty repository behind. `Trainer.__init__` calls this when `args.push_to_hub`."""
        if not self.is_world_process_zero():
            return
        token = token if token is not None else self.args.hub_token
        self.hub_model_id = self._repo_id(token or get_token())
        self._hub_private = private  # used when the first push creates the repository
        self.push_in_progress = None

    def _private(self, private: bool | None) -> bool | None:
        for choice in (private, getattr(self, "_hub_private", None)):
            if choice is not None:
                return choice
        return self.args.hub_private_repo

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the student's card (lineage, license duties, teacher vs student) to `output_dir/README.md`, merged
        into an existing README (the text outside hf_distill's markers is kept). Publishes nothing.

        Takes `Trainer.create_model_card`'s arguments (`tasks`, `dataset_args` and `model_name` are accepted and not
        used: the card's title is the repository name) plus `acknowledge_teacher_license` and
        `override_name_prefix`. It does not refuse what only a push refuses: an unknown teacher license, or terms a
        push would need acknowledged, are said in the card (as not yet cleared for publishing) and in one warning.
        A `finetuned_from` that is a local folder is recorded by its folder name, never its path.
        """
        if not self.is_world_process_zero():
            return
        options = self._push_options(
            {
                "language": language,
                "license": license,
                "tags": tags,
                "finetuned_from": finetuned_from,
                "dataset_tags": dataset_tags,
                "dataset": dataset,
                **kwargs,
            }
        )
        repo_id = self._repo_id(self.args.hub_token, with_namespace=False)  # offline: the name is enough here
        record = self.lineage()
        policy = license_decision(record, repo_id, options, strict=False)
        if policy.pending:
            logger.warning(
                f"The model card in {self.args.output_dir} says what a push would still need: "
                + " ".join(policy.pending)
            )
        folder = self.args.output_dir
        adapter = os.path.isfile(os.path.join(folder, "adapter_config.json"))
        card = folder_card(record, policy, repo_id, options, folder, adapter, pushed=False)
        os.makedirs(folder, exist_ok=True)
        write_text(os.path.join(folder, "README.md"), card)  # atomic: the user's README is never left half-written

    def push_license_decision(self, **kwargs: Any) -> LicenseDecision:
        """What the teacher's license terms decide for a push of this student with the card arguments `kwargs`
        (those of `push_to_hub`), without pushing.

        Raises:
            `LicensePolicyError`: what the push would refuse, and the option that lifts it.
        """
        return license_decision(self.lineage(), self._repo_id(self.args.hub_token, False), self._push_options(kwargs))

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save the student and push it with its card, lineage record, NOTICE and the teacher's license files, in
        one commit to `args.hub_model_id` (default: the output folder's name). Exactly one commit also with
        `args.push_to_hub=True`, and also when `save_model()` is what calls it.

        Nothing is uploaded, and the repository is not created, when the teacher's license terms refuse the push,
        a file to be pushed holds a local path or the token, or the Hub rejects the card's metadata. Nothing is
        written into `output_dir` by the push itself (its README.md is merged into the pushed card, not rewritten).

        Args:
            commit_message (`str`, *optional*, defaults to `"End of training"`): the commit's title.
            blocking (`bool`, *optional*, defaults to `True`): wait for the upload.
            token (`str`, *optional*): defaults to `args.hub_token`, then the saved token.
            revision (`str`, *optional*): branch to commit to; defaults to `args.hub_revision`.
            private (`bool`, *optional*): visibility when the repository is created; defaults to
                `args.hub_private_repo`.
            license (`str`, *optional*): the student's license; defaults to the teacher's when its terms carry over.
            finetuned_from (`str`, *optional*): Hub id for `base_model`; defaults to the student's initialisation.
            tags, language, dataset: added to the card's metadata.
            acknowledge_teacher_license, override_name_prefix (`bool`, *optional*): see `DistillationConfig`.

        Returns:
            `CommitInfo` (or a `Future` of it when `blocking=False`); `None` on processes other than the main one.
        """
        options = self._push_options(kwargs)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        # Every process saves (sharded states gather; the merged model when merge_adapter_on_save). As an internal
        # call, so that `Trainer.save_model` does not push again when args.push_to_hub is set (it would recurse).
        self._saving_for_push = True
        try:
            self.save_model(_internal_call=True)
        finally:
            self._saving_for_push = False
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        token = token if token is not None else self.args.hub_token
        return self._push(
            self.args.output_dir,
            options,
            token,
            commit_message=commit_message or "End of training",
            revision=revision or self.args.hub_revision,
            private=self._private(private),
            blocking=blocking,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer's checkpoint push, as one commit that also carries the card, lineage and NOTICE: the model
        # files at the root, the training state under last-checkpoint/ (or the checkpoint's own name).
        strategy = self.args.hub_strategy
        if not self.is_world_process_zero() or strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        with_state = strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS)
        name = "last-checkpoint" if strategy == HubStrategy.CHECKPOINT else os.path.basename(checkpoint_folder)
        if self.args.save_strategy == SaveStrategy.STEPS:  # the Trainer's commit titles
            message = f"Training in progress, step {self.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(self.state.epoch)}"
        future = self._push(
            checkpoint_folder,
            self._push_options({}),
            self.args.hub_token,
            skip=TRAINING_STATE,
            checkpoint_folder=checkpoint_folder if with_state else None,
            checkpoint_name=name,
            commit_message=message,
            revision=self.args.hub_revision,
            private=self._private(None),
            blocking=False,
        )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress([future])
        else:
            self.push_in_progress.jobs.append(future)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
