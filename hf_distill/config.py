"""`DistillationConfig`: `TrainingArguments` plus the distillation fields, and nothing else changed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import GenerationConfig, TrainingArguments

from .losses import CROSS_TOKENIZER_METHODS, DIVERGENCES, KDObjective

# The fields a plain `TrainingArguments` lacks. Their defaults here are *the* documented defaults: a trainer built
# with plain `TrainingArguments` reads them from this class, so the two can never disagree.
_OBJECTIVE_FIELDS = tuple(f.name for f in fields(KDObjective))
# `auto` resolves to the default method (`cross_tokenizer_method`).
CROSS_TOKENIZER_CHOICES = ("auto", *CROSS_TOKENIZER_METHODS)
DEFAULT_CROSS_TOKENIZER_METHOD = "chunk"


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`DistillationTrainer`], with the knowledge-distillation fields added.

    Every upstream field keeps its upstream default; only the fields below are new. A plain `TrainingArguments`
    also works with [`DistillationTrainer`] and then uses these defaults: forward KL at temperature 1, pure
    distillation (`kd_weight=1.0`, `ce_weight=0.0`).

    The objective per optimizer step is

        kd_weight · s · D(p_teacher, p_student) + ce_weight · CE(student, labels)

    averaged over the valid positions (label != -100, or real tokens when the batch has no labels) of the whole
    gradient-accumulation window on all processes, with `p = softmax(logits / kd_temperature)` and
    `s = kd_temperature²` when `kd_temperature_scaling` (else 1).

    Parameters:
        teacher_model_name_or_path (`str`, *optional*):
            Teacher to load when the trainer is given no `teacher_model`: a Hub id or a local folder.
        teacher_trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the teacher's repository to run its own Python code when loading. Off unless you turn it on.
        teacher_top_k (`int`, *optional*, defaults to 20):
            A served teacher (`teacher_model="openai-compatible:<base_url>#<model>"`, README "Served teachers"): the
            log-probabilities it returns per position; the KD term is the sparse one over them plus a tail bucket
            (exact at k = vocabulary size). vLLM allows 20 unless started with a larger `--max-logprobs`.
        teacher_request_concurrency (`int`, *optional*, defaults to 2):
            A served teacher: scoring requests in flight at once (one request a batch).
        teacher_request_timeout (`float`, *optional*, defaults to 120.0):
            A served teacher: seconds one request may take before it counts as failed.
        teacher_request_retries (`int`, *optional*, defaults to 3):
            A served teacher: retries, with exponential backoff, after a connection error, a timeout or an HTTP
            429/5xx; then training stops with an error (never a skipped batch).
        teacher_prefetch (`int`, *optional*, defaults to 2):
            A served teacher: batches sent for scoring ahead of the one the student trains on (each as soon as the
            dataloader makes it), so that the server works while the student does. 0 sends nothing ahead: each
            batch is scored when the loss needs it, and the student waits. The batch order is unchanged.
        teacher_api_key_env (`str`, *optional*):
            A served teacher: the name of the environment variable that holds its API key (the key itself is never
            an argument, so it never reaches saved arguments, logs or cards).
        teacher_provider (`str`, *optional*):
            A served teacher: the provider whose terms of service bind its outputs (`openai`, `anthropic`,
            `google-gemini-api`, or any name); default from the URL's host, none for a server of your own.
        teacher_license (`str`, *optional*):
            A served teacher: the served model's license id (e.g. `apache-2.0`), which hf_distill cannot read from a
            server; unknown licenses need `acknowledge_teacher_license=True` to push.
        cross_tokenizer (`str`, *optional*):
            Distil from a teacher whose tokenizer differs from the student's (causal LMs). `None` (default) refuses
            such a teacher. Otherwise the teacher reads the same text tokenized by its own tokenizer, the two
            tokenizations are aligned on the byte offsets where both end a token, and the KD term compares the models
            through that alignment: `"exact"` compares both next-token distributions where a chunk of text starts,
            over the tokens whose bytes exist in both vocabularies (plus one bucket for the rest); `"chunk"` adds the
            likelihood of every chunk either tokenizer splits into several tokens (in the spirit of ALM, Minixhofer et
            al. 2025); `"uld"` is the Universal Logit Distillation baseline (Boizard et al. 2024: L1 distance between
            the sorted probability vectors). `"auto"` picks `"chunk"` (README, "Different tokenizers", has the
            measurements). Needs both tokenizers: the student's `processing_class`, the teacher's from its folder or
            `teacher_processing_class`.
        kd_loss (`str`, *optional*, defaults to `"forward_kl"`):
            Divergence D: `forward_kl` KL(p_t ‖ p_s), `reverse_kl` KL(p_s ‖ p_t), `jsd`, `tvd`, `skew_forward_kl`,
            `skew_reverse_kl`.
        kd_temperature (`float`, *optional*, defaults to 1.0):
            Softmax temperature of the KD term (not a sampling temperature).
        kd_temperature_scaling (`bool`, *optional*, defaults to `True`):
            Multiply the KD term by `kd_temperature²` (Hinton et al. 2015).
        jsd_beta (`float`, *optional*, defaults to 0.5):
            Teacher weight in the `jsd` mixture `(1-β)·p_s + β·p_t`: 0 = forward KL, 1 = reverse KL (TRL's direction).
        skew_alpha (`float`, *optional*, defaults to 0.1):
            Skew α of `skew_forward_kl` / `skew_reverse_kl` (DistiLLM).
        kd_weight (`float`, *optional*, defaults to 1.0):
            Weight of the KD term.
        ce_weight (`float`, *optional*, defaults to 0.0):
            Weight of the student's hard-label cross-entropy; > 0 requires labels in every batch.
        kd_chunk_size (`int`, *optional*):
            For students and teachers with a linear LM head (causal LM, seq2seq): the objective is computed from
            their final hidden states one chunk of this many tokens at a time, gradients included, so that neither
            model's `(tokens, vocabulary)` logits ever exist. `None` (default) picks `2**24 // vocab_size` rounded
            down to a power of two; `0` turns it off. Evaluation that hands logits to `compute_metrics` uses the
            logits path.
        teacher_placement (`str`, *optional*, defaults to `"auto"`):
            Where the teacher lives under `accelerate launch`: `"auto"` shards it under FSDP2 or DeepSpeed ZeRO-3 and
            replicates it otherwise; `"replicate"` keeps a full frozen copy per process; `"shard"` shards it like the
            student (FSDP2's `fully_shard`, or a forward-only ZeRO-3 engine); `"offload"` keeps its weights on CPU
            and streams them to the device layer by layer; a device list such as `"cuda:1"` or `"cuda:1,cuda:2"` gives it devices of its own in a
            single-process run (its logits come back to the student's device).
        teacher_deepspeed_config (`str`, *optional*):
            Under a DeepSpeed ZeRO-3 student, the path of a DeepSpeed JSON for the teacher's (forward-only, ZeRO-3)
            engine; default the student's config without optimizer and scheduler.
        teacher_dtype (`str`, *optional*):
            `float32`, `bfloat16` or `float16` for the teacher's weights; default the student's compute dtype.
        preflight (`str`, *optional*, defaults to `"refuse"`):
            Before training, log the memory plan of one process (student weights, gradients, optimizer state,
            teacher weights under its placement, activations, loss tiles) against its device's memory; `"refuse"`
            also refuses to start when the estimate exceeds it, naming a placement or batch size that would fit;
            `"print"` only logs it; `"off"` skips it.
        merge_adapter_on_save (`bool`, *optional*, defaults to `False`):
            For a PEFT (LoRA, ...) student, `save_model()` writes a full model with the adapters merged in, loadable
            with transformers alone, instead of the adapter (`adapter_config.json`, `adapter_model.safetensors`).
            Checkpoints always hold the adapter, so that training can resume.
        on_policy_fraction (`float`, *optional*, defaults to 0.0):
            Share of optimizer steps on which the student generates completions of the batch's prompts (the leading
            run of `-100` labels of each row, or the whole row without labels) and the KD term is taken over its own
            generated tokens, EOS included (GKD, Agarwal et al. 2024). `reverse_kl` is the usual `kd_loss` here. The
            steps follow a fixed round-robin (0.5: off, on, off, on, ...), the same on every process. 0 = off-policy
            only (today's behaviour).
        teacher_generation_fraction (`float`, *optional*, defaults to 0.0):
            Share of optimizer steps on which the teacher generates the completions instead (sequence-level KD).
            `on_policy_fraction + teacher_generation_fraction <= 1`; `ce_weight` applies on off-policy steps only.
        max_new_tokens (`int`, *optional*, defaults to 128):
            Longest completion generated on an on-policy or teacher-generated step, and for `eval_on_policy`.
        generation_temperature (`float`, *optional*, defaults to 1.0):
            Sampling temperature of the generation (not the KD term's `kd_temperature`); 0 = greedy.
        generation_top_p (`float`, *optional*, defaults to 1.0):
            Nucleus sampling: keep the smallest set of tokens whose probability reaches this (1.0 = off).
        generation_top_k (`int`, *optional*, defaults to 0):
            Sample among the k most likely tokens only (0 = off).
        generation_kwargs (`dict` or `str`, *optional*):
            Any other `transformers.GenerationConfig` field (e.g. `{"repetition_penalty": 1.1}`, `eos_token_id`);
            a JSON string on the command line.
        generation_backend (`str`, *optional*, defaults to `"transformers"`):
            What generates: `transformers` (`model.generate` on the unwrapped student). `vllm` is not supported yet.
        log_completions (`bool`, *optional*, defaults to `False`):
            Log a few prompt/completion pairs of the latest generated step every `logging_steps`.
        eval_on_policy (`bool`, *optional*):
            Add `eval_on_policy_reverse_kl` to evaluation: the teacher's reverse KL to the student on the student's
            own greedy completions of the eval prompts, per generated token. Default: on when `on_policy_fraction > 0`.

    Example:
        ```python
        >>> from hf_distill import DistillationConfig
        >>> args = DistillationConfig(output_dir="out", kd_loss="jsd", jsd_beta=0.5, kd_temperature=2.0, ce_weight=0.5)
        >>> args.kd_objective().describe()
        'loss = 1·[4 (T²) · jsd at T=2, beta=0.5] + 0.5·CE(labels), averaged over valid tokens of each optimizer step'
        ```
    """

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher to load when no `teacher_model` object is given: a Hub id or a local folder."},
    )
    teacher_revision: str | None = field(
        default=None,
        metadata={
            "help": "Branch, tag or commit of a teacher loaded by name. Resolved to a commit sha before loading; the "
            "weights are loaded at that sha and the student's lineage names it."
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Train from a teacher cache (a folder written by `hf-distill cache-teacher`, or a Hub dataset id) "
            "with no teacher loaded. teacher_model_name_or_path / teacher_revision, when also set, must match it."
        },
    )
    teacher_cache_tail: str = field(
        default="bucket",
        metadata={
            "help": "How the sparse KD term over a cache's top-k treats the rest of the vocabulary: bucket (one "
            "extra outcome holding the remaining mass of each model) or renormalize (both top-k renormalised)."
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Let the teacher's repository run its own Python code when loading. Off by default."},
    )
    teacher_top_k: int = field(
        default=20,
        metadata={"help": "Served teacher: log-probabilities requested per position (vLLM allows 20 by default)."},
    )
    teacher_request_concurrency: int = field(
        default=2, metadata={"help": "Served teacher: scoring requests in flight at once."}
    )
    teacher_request_timeout: float = field(
        default=120.0, metadata={"help": "Served teacher: seconds one scoring request may take."}
    )
    teacher_request_retries: int = field(
        default=3, metadata={"help": "Served teacher: retries with backoff after a transient failure, then stop."}
    )
    teacher_prefetch: int = field(
        default=2, metadata={"help": "Served teacher: batches sent for scoring ahead of the one training (0 = none)."}
    )
    teacher_api_key_env: str | None = field(
        default=None,
        metadata={"help": "Served teacher: name of the environment variable holding its API key (never the key)."},
    )
    teacher_provider: str | None = field(
        default=None,
        metadata={"help": "Served teacher: provider whose terms bind its outputs; default from the URL's host."},
    )
    teacher_license: str | None = field(
        default=None, metadata={"help": "Served teacher: the served model's license id (e.g. apache-2.0)."}
    )
    cross_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Distil from a teacher with a different tokenizer: auto, exact, chunk or uld (None refuses such "
            "a teacher). The two tokenizations of the same text are aligned by byte offsets.",
            "choices": list(CROSS_TOKENIZER_CHOICES),
        },
    )
    kd_loss: str = field(
        default="forward_kl",
        metadata={"help": "Divergence of the KD term.", "choices": list(DIVERGENCES)},
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the KD term, applied to both models' logits."}
    )
    kd_temperature_scaling: bool = field(
        default=True, metadata={"help": "Multiply the KD term by kd_temperature² (Hinton et al. 2015)."}
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={"help": "Teacher weight of the jsd mixture: 0 = forward KL(teacher‖student), 1 = reverse KL."},
    )
    skew_alpha: float = field(default=0.1, metadata={"help": "Skew α of skew_forward_kl / skew_reverse_kl."})
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the KD term."})
    ce_weight: float = field(
        default=0.0, metadata={"help": "Weight of the student's hard-label cross-entropy (needs labels)."}
    )

    kd_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per chunk of the memory-efficient loss (LM heads only): neither model's full logits are "
            "built. None picks 2**24 // vocab_size rounded down to a power of two (512 at 32k, 128 at 128k); "
            "0 turns it off and uses the models' logits."
        },
    )

    teacher_placement: str = field(
        default="auto",
        metadata={
            "help": "Where the teacher lives: auto (shard under FSDP2 or ZeRO-3, else replicate), replicate (a full "
            "copy per process), shard (FSDP2 fully_shard or a ZeRO-3 engine, like the student), offload (weights "
            "on CPU, streamed to the device layer by layer), or devices of its own in a single-process run, e.g. 'cuda:1' or 'cuda:1,cuda:2'."
        },
    )
    teacher_deepspeed_config: str | None = field(
        default=None,
        metadata={
            "help": "Under a DeepSpeed ZeRO-3 student with teacher_placement shard/auto: a DeepSpeed JSON for the "
            "teacher's engine instead of the student's config (its optimizer and scheduler are dropped either way)."
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the teacher's weights: float32, bfloat16 or float16. Default: the student's compute "
            "dtype (bfloat16 / float16 under bf16 / fp16 mixed precision, else the student's own)."
        },
    )
    preflight: str = field(
        default="refuse",
        metadata={
            "help": "Memory plan before training: refuse (log it, and refuse to start when the estimate exceeds the "
            "device's memory), print (log it only) or off."
        },
    )
    merge_adapter_on_save: bool = field(
        default=False,
        metadata={
            "help": "For a PEFT student: `save_model()` writes the adapters merged into a full model instead of the "
            "adapter alone. Checkpoints always hold the adapter."
        },
    )

    on_policy_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of optimizer steps on which the student generates completions of the batch's prompts and "
            "is distilled on its own tokens (on-policy, GKD). 0 = off-policy only."
        },
    )
    teacher_generation_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of optimizer steps on which the teacher generates the completions (sequence-level KD). "
            "on_policy_fraction + teacher_generation_fraction <= 1."
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Longest completion generated on on-policy / teacher-generated steps."}
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the generation (not kd_temperature); 0 = greedy."},
    )
    generation_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1.0 = off)."})
    generation_top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0 = off)."})
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Any other transformers.GenerationConfig field for the generation, as a dict (JSON on the "
            "command line), e.g. '{\"repetition_penalty\": 1.1}'."
        },
    )
    generation_backend: str = field(
        default="transformers",
        metadata={"help": "What generates: transformers (model.generate). vllm is not supported yet."},
    )
    log_completions: bool = field(
        default=False,
        metadata={"help": "Log a few prompt/completion pairs of the latest generated step every logging_steps."},
    )
    eval_on_policy: bool | None = field(
        default=None,
        metadata={
            "help": "Add eval_on_policy_reverse_kl: the teacher's reverse KL to the student on its own greedy "
            "completions of the eval prompts. Default: on when on_policy_fraction > 0."
        },
    )

    acknowledge_teacher_license: bool = field(
        default=False,
        metadata={
            "help": "Push even though the teacher's license is unknown or has terms hf_distill cannot check (e.g. "
            "Llama 2's), or under a student license other than the one the teacher's terms carry over. You confirm "
            "you have read the teacher's terms; the card records it."
        },
    )
    override_name_prefix: bool = field(
        default=False,
        metadata={
            "help": "Push under a repository name without the prefix the teacher's license requires (e.g. Llama's "
            "'Llama'); the card records the override."
        },
    )

    def __post_init__(self) -> None:
        _check_field_types(self)  # before anything reads them: a wrong type names its field, not a later symptom
        super().__post_init__()
        self.kd_objective()  # validates the distillation fields, naming the one at fault
        _check_placement(self.teacher_placement)
        if self.teacher_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(
                f"teacher_dtype={self.teacher_dtype!r}; use float32, bfloat16, float16 or leave it unset."
            )
        if self.teacher_cache_tail not in ("bucket", "renormalize"):
            raise ValueError(f"teacher_cache_tail={self.teacher_cache_tail!r}; use bucket or renormalize.")
        if self.preflight not in ("refuse", "print", "off"):
            raise ValueError(f"preflight={self.preflight!r}; use refuse, print or off.")
        if self.kd_chunk_size is not None and self.kd_chunk_size < 0:
            raise ValueError(f"kd_chunk_size={self.kd_chunk_size} must be >= 0 (0 = off, None = automatic).")
        _check_generation_fields(self)
        cross_tokenizer_method(self)
        check_served_fields(
            teacher_top_k=self.teacher_top_k,
            teacher_request_concurrency=self.teacher_request_concurrency,
            teacher_request_timeout=self.teacher_request_timeout,
            teacher_request_retries=self.teacher_request_retries,
            teacher_prefetch=self.teacher_prefetch,
        )

    def kd_objective(self) -> KDObjective:
        """The loss these arguments describe."""
        return kd_objective_from_args(self)


_BOOL_FIELDS = (
    "teacher_trust_remote_code",
    "kd_temperature_scaling",
    "merge_adapter_on_save",
    "acknowledge_teacher_license",
    "override_name_prefix",
    "log_completions",
)
_FLOAT_FIELDS = (
    "kd_temperature",
    "jsd_beta",
    "skew_alpha",
    "kd_weight",
    "ce_weight",
    "on_policy_fraction",
    "teacher_generation_fraction",
    "generation_temperature",
    "generation_top_p",
    "teacher_request_timeout",
)
_INT_FIELDS = (
    "max_new_tokens",
    "generation_top_k",
    "teacher_top_k",
    "teacher_request_concurrency",
    "teacher_request_retries",
    "teacher_prefetch",
)
_STR_FIELDS = ("teacher_cache_tail", "kd_loss", "teacher_placement", "preflight", "generation_backend")
_OPTIONAL_STR_FIELDS = (
    "teacher_model_name_or_path",
    "teacher_revision",
    "teacher_cache",
    "teacher_deepspeed_config",
    "teacher_dtype",
    "cross_tokenizer",
    "teacher_api_key_env",
    "teacher_provider",
    "teacher_license",
)


def _check_field_types(args: DistillationConfig) -> None:
    """Refuse a distillation field of the wrong type or a non-finite number, naming the field, the value and what is
    valid. Numbers given as strings are read as numbers, because YAML 1.1 (the `parse_yaml_file` and recipe reader)
    loads `1e-4` as the string '1e-4'; booleans must be real booleans (argparse already turns `--flag false` into one).
    """
    for name in _BOOL_FIELDS:
        value = getattr(args, name)
        if not isinstance(value, bool):
            raise TypeError(f"{name}={value!r} is not a boolean; use true or false (unquoted in YAML/JSON).")
    for name in _FLOAT_FIELDS:
        value = getattr(args, name)
        number = _as_number(value, float)
        if number is None:
            raise TypeError(f"{name}={value!r} is not a number; use a finite float, e.g. {_default(name)}.")
        if not math.isfinite(number):
            raise ValueError(f"{name}={value!r} is not finite; use a finite float, e.g. {_default(name)}.")
        setattr(args, name, number)
    if args.kd_chunk_size is not None:
        number = _as_number(args.kd_chunk_size, int)
        if number is None:
            raise TypeError(
                f"kd_chunk_size={args.kd_chunk_size!r} is not an integer; use a whole number of tokens >= 0 (0 = off) "
                "or leave it unset (automatic)."
            )
        args.kd_chunk_size = number
    for name in _INT_FIELDS:
        number = _as_number(getattr(args, name), int)
        if number is None:
            raise TypeError(
                f"{name}={getattr(args, name)!r} is not an integer; use a whole number, e.g. {_default(name)}."
            )
        setattr(args, name, number)
    if args.eval_on_policy is not None and not isinstance(args.eval_on_policy, bool):
        raise TypeError(f"eval_on_policy={args.eval_on_policy!r} is not a boolean; use true, false or leave it unset.")
    for name in _STR_FIELDS:
        if not isinstance(getattr(args, name), str):
            raise TypeError(f"{name}={getattr(args, name)!r} is not a string; {_STR_HINTS[name]}.")
    for name in _OPTIONAL_STR_FIELDS:
        value = getattr(args, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name}={value!r} is not a string; give a string or leave it unset.")


# The least value of each served-teacher request field (`hf_distill.served`); the timeout must exceed its bound.
_SERVED_MINIMUMS = {
    "teacher_top_k": 1,
    "teacher_request_concurrency": 1,
    "teacher_request_timeout": 0,
    "teacher_request_retries": 0,
    "teacher_prefetch": 0,
}


def check_served_fields(**values: float) -> None:
    """Refuse a served-teacher request setting out of range, naming it (also used by `ServedSettings`)."""
    for name, value in values.items():
        least = _SERVED_MINIMUMS[name]
        if name == "teacher_request_timeout" and not value > least:
            raise ValueError(f"{name}={value!r} must be > 0 seconds.")
        if value < least:
            raise ValueError(f"{name}={value!r} must be >= {least}.")


# The named placements of `teacher_placement` (see `hf_distill.teacher.placement`).
PLACEMENTS = ("auto", "replicate", "shard", "offload")
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "npu")  # what `placement.resolve_placement` puts a teacher on


def _check_placement(value: str) -> None:
    """Refuse a `teacher_placement` that is neither a placement nor a list of device names, as
    `placement.resolve_placement` would at the first step. Whether the devices exist is checked there, on the machine
    that trains."""
    if value in PLACEMENTS:
        return
    names = [part.strip() for part in value.split(",") if part.strip()] or [value]
    for name in names:
        try:
            device_type = torch.device(name).type
        except (RuntimeError, ValueError):
            device_type = None
        if device_type not in _DEVICE_TYPES:
            raise ValueError(
                f"teacher_placement={value!r}: {name!r} is neither a placement nor a device. Use one of "
                f"{', '.join(PLACEMENTS)}, or a comma-separated list of devices: cpu, cuda, cuda:N, xpu:N or mps "
                "(e.g. 'cuda:1' or 'cuda:1,cuda:2')."
            )


_STR_HINTS = {
    "teacher_cache_tail": "use bucket or renormalize",
    "kd_loss": f"use one of {', '.join(DIVERGENCES)}",
    "teacher_placement": "use auto, replicate, shard, offload or a device list such as 'cuda:1'",
    "preflight": "use refuse, print or off",
    "generation_backend": "use transformers",
}

# `GenerationConfig` fields that have a field of their own here, so `generation_kwargs` may not set them.
_OWN_GENERATION_FIELDS = {
    "max_new_tokens": "max_new_tokens",
    "temperature": "generation_temperature",
    "do_sample": "generation_temperature (0 = greedy, > 0 samples)",
    "top_p": "generation_top_p",
    "top_k": "generation_top_k",
}


def _check_generation_fields(args: DistillationConfig) -> None:
    """Refuse on-policy and generation settings outside their ranges, naming the field and the value."""
    on, teacher = args.on_policy_fraction, args.teacher_generation_fraction
    for name, value in (("on_policy_fraction", on), ("teacher_generation_fraction", teacher)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} must lie in [0, 1] (the share of optimizer steps).")
    if on + teacher > 1.0 + 1e-12:
        raise ValueError(
            f"on_policy_fraction={on} + teacher_generation_fraction={teacher} = {on + teacher:g} exceeds 1: they are "
            "shares of the same optimizer steps."
        )
    if args.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={args.max_new_tokens} must be >= 1.")
    if args.generation_temperature < 0:
        raise ValueError(f"generation_temperature={args.generation_temperature} must be >= 0 (0 = greedy).")
    if not 0.0 < args.generation_top_p <= 1.0:
        raise ValueError(f"generation_top_p={args.generation_top_p} must lie in (0, 1] (1 = off).")
    if args.generation_top_k < 0:
        raise ValueError(f"generation_top_k={args.generation_top_k} must be >= 0 (0 = off).")
    if args.generation_backend != "transformers":
        raise ValueError(
            f"generation_backend={args.generation_backend!r} is not supported; use transformers (model.generate on "
            "the student). A vLLM backend is not implemented yet."
        )
    kwargs = args.generation_kwargs
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as error:
            raise ValueError(f"generation_kwargs={args.generation_kwargs!r} is not valid JSON ({error}).") from None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(
            f"generation_kwargs={args.generation_kwargs!r} is not a mapping; give a dict or a JSON object."
        )
    for key in kwargs or {}:
        if key in _OWN_GENERATION_FIELDS:
            raise ValueError(f"generation_kwargs sets {key!r}; use the field {_OWN_GENERATION_FIELDS[key]} instead.")
        if key not in GenerationConfig().to_dict():
            raise ValueError(f"generation_kwargs: {key!r} is not a transformers.GenerationConfig field.")
    args.generation_kwargs = kwargs


def _default(name: str) -> Any:
    return DistillationConfig.__dataclass_fields__[name].default


def _as_number(value: Any, kind: type) -> int | float | None:
    """`value` as an int or float, or `None` when it is not one (bools are not numbers here; 1.5 is not an int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value)
        except ValueError:
            return None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    return None


def distillation_defaults() -> dict[str, Any]:
    """The documented defaults of every distillation field, as used with a plain `TrainingArguments`."""
    own = {f.name for f in fields(DistillationConfig)} - {f.name for f in fields(TrainingArguments)}
    return {f.name: f.default for f in fields(DistillationConfig) if f.name in own}


def distillation_setting(args: TrainingArguments, name: str) -> Any:
    """A distillation field of `args`, or its documented default when `args` is a plain `TrainingArguments`."""
    # `hasattr` first: the objective also reads upstream fields (`label_smoothing_factor`) every `args` has.
    return getattr(args, name) if hasattr(args, name) else distillation_defaults()[name]


def kd_objective_from_args(args: TrainingArguments) -> KDObjective:
    """Build (and so validate) the objective from `DistillationConfig` or plain `TrainingArguments`."""
    return KDObjective(**{name: distillation_setting(args, name) for name in _OBJECTIVE_FIELDS})


def cross_tokenizer_method(args: TrainingArguments) -> str | None:
    """The cross-tokenizer method these arguments ask for (`"auto"` resolved), `None` when it is off.

    Raises:
        `ValueError`: for a value that is not one of `CROSS_TOKENIZER_CHOICES`, naming the field.
    """
    value = distillation_setting(args, "cross_tokenizer")
    if value is None:
        return None
    if value not in CROSS_TOKENIZER_CHOICES:
        raise ValueError(
            f"cross_tokenizer={value!r} is not a method; use one of {', '.join(CROSS_TOKENIZER_CHOICES)}, or leave "
            "it unset when teacher and student share a tokenizer."
        )
    return DEFAULT_CROSS_TOKENIZER_METHOD if value == "auto" else value
