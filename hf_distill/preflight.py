"""The memory plan, checked before training starts (the trainer's `preflight`): what one process will hold (student
weights, gradients, optimizer state, teacher weights under its placement, activations, logits or loss tiles) against
its device's memory. `DistillationTrainer.memory_plan()` and `hf-distill plan` return it as a `MemoryPlan`.

Estimates, not measurements: weights, gradients and optimizer state are counted exactly from the models; activations
use the usual transformer rule of thumb (Korthikanti et al. 2022: ~34 bytes·tokens·hidden per layer at 2-byte
precision, fewer with activation checkpointing). The plan refuses only when the estimate exceeds the memory there is,
and says which placement or batch size would fit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import psutil
import torch
from accelerate.utils import calculate_maximum_sizes, dtype_byte_size
from torch import nn

from .modeling.lm_head import linear_head
from .teacher.placement import SHARDED_STRATEGIES, student_strategy

_GIB = 1024**3
_FLOAT32 = dtype_byte_size(torch.float32)  # optimizer moments and loss tiles are float32 whatever the weights are


@dataclass
class MemoryPlanInputs:
    """Everything the estimate needs, gathered by the caller (trainer or `hf-distill plan`)."""

    student: nn.Module
    teacher: nn.Module
    teacher_placement: str  # replicate / shard / offload / devices / shared_base / cache
    processes: int
    student_sharded: bool
    batch_size: int
    sequence_length: int
    vocab_size: int | None
    chunk_size: int  # 0: logits path
    optimizer_states: int  # per trainable parameter, in fp32: AdamW 2, SGD 0
    activation_checkpointing: bool
    compute_bytes: int  # 2 under bf16/fp16 autocast, else 4


@dataclass
class MemoryPlan:
    """Bytes one process will hold, row by row, against `capacity` bytes of its device."""

    rows: list[tuple[str, int]]
    device: str
    capacity: int | None
    scalable: int = 0  # the part that grows with the batch size (activations, logits)
    suggestions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(size for _, size in self.rows)

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total <= self.capacity

    def format(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        lines = [f"Memory plan per process on {self.device} (estimate)"]
        lines += [f"  {name:<{width}}  {_size(size):>11}" for name, size in self.rows]
        lines.append(f"  {'total':<{width}}  {_size(self.total):>11}")
        if self.capacity is not None:
            lines.append(f"  {'available':<{width}}  {_size(self.capacity):>11}")
        return "\n".join(lines)


def _size(count: int) -> str:
    return f"{count / _GIB:.2f} GiB" if count >= _GIB else f"{count / 1024**2:.1f} MiB"


def _bytes(parameters) -> int:
    # Not accelerate's compute_module_sizes: it counts buffers too, and gradients need the trainable parameters alone.
    return sum(p.numel() * p.element_size() for p in parameters)


def _config_value(model: nn.Module, *names: str) -> int:
    config = getattr(getattr(model, "get_base_model", lambda: model)(), "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return next((int(getattr(config, n)) for n in names if getattr(config, n, None)), 0)


def _largest_layer_bytes(model: nn.Module) -> int:
    """The largest block (a `_no_split_modules` class) or leaf module, as accelerate sizes one to offload or
    gather it."""
    return calculate_maximum_sizes(model)[1][0]


def _teacher_bytes(inputs: MemoryPlanInputs) -> int:
    full = _bytes(inputs.teacher.parameters())
    kind = inputs.teacher_placement
    if kind in ("shared_base", "devices", "cache"):
        return 0  # its weights are the student's, on devices of its own, or it is a cache read with the batches
    if kind == "shard":
        return math.ceil(full / inputs.processes) + _largest_layer_bytes(inputs.teacher)  # + one gathered layer
    if kind == "offload":
        return _largest_layer_bytes(inputs.teacher)
    return full


def _activation_bytes(inputs: MemoryPlanInputs) -> int:
    tokens = inputs.batch_size * inputs.sequence_length
    hidden = _config_value(inputs.student, "hidden_size", "d_model", "n_embd")
    layers = _config_value(inputs.student, "num_hidden_layers", "num_layers", "n_layer")
    if not hidden or not layers:
        return 0
    per_layer = 17 * tokens * hidden * inputs.compute_bytes  # 34 bytes/token/hidden at 2-byte precision
    if inputs.activation_checkpointing:  # layer inputs kept, one layer recomputed at a time
        return layers * tokens * hidden * inputs.compute_bytes + per_layer
    return layers * per_layer


def _loss_bytes(inputs: MemoryPlanInputs) -> int:
    if not inputs.vocab_size:
        return 0
    tokens = inputs.batch_size * inputs.sequence_length
    if inputs.chunk_size:  # two float32 (chunk, V) tiles plus one block's scratch
        return 2 * min(inputs.chunk_size, tokens) * inputs.vocab_size * _FLOAT32
    # both models' logits, their float32 log-probabilities and the gradient wrt the student's logits
    return tokens * inputs.vocab_size * (2 * inputs.compute_bytes + 3 * _FLOAT32)


def estimate_memory_plan(inputs: MemoryPlanInputs, device: str, capacity: int | None) -> MemoryPlan:
    """The plan for one process, with suggestions when it does not fit."""
    share = inputs.processes if inputs.student_sharded else 1
    trainable = [p for p in inputs.student.parameters() if p.requires_grad]
    activations, loss = _activation_bytes(inputs), _loss_bytes(inputs)
    rows = [
        ("student weights", math.ceil(_bytes(inputs.student.parameters()) / share)),
        ("student gradients", math.ceil(_bytes(trainable) / share)),
        ("optimizer state", math.ceil(sum(p.numel() for p in trainable) * _FLOAT32 * inputs.optimizer_states / share)),
        (f"teacher weights ({inputs.teacher_placement})", _teacher_bytes(inputs)),
        ("activations (estimate)", activations),
        ("logits / loss tiles" if not inputs.chunk_size else "loss tiles (chunked)", loss),
    ]
    plan = MemoryPlan(rows, device, capacity, scalable=activations + loss)
    if not plan.fits:
        plan.suggestions = _suggestions(inputs, plan)
    return plan


def _suggestions(inputs: MemoryPlanInputs, plan: MemoryPlan) -> list[str]:
    found = []
    fixed_without_teacher = plan.total - plan.scalable - _teacher_bytes(inputs)
    if inputs.teacher_placement == "replicate":
        for placement in ("shard", "offload"):
            if placement == "shard" and not inputs.student_sharded:
                continue
            other = dataclasses.replace(inputs, teacher_placement=placement)
            if fixed_without_teacher + _teacher_bytes(other) + plan.scalable <= plan.capacity:
                found.append(f"teacher_placement='{placement}'")
    room = plan.capacity - (plan.total - plan.scalable)
    if plan.scalable and room > 0:
        batch = int(inputs.batch_size * room / plan.scalable)
        if 1 <= batch < inputs.batch_size:
            found.append(f"per_device_train_batch_size={batch} (with gradient_accumulation_steps to keep the batch)")
    if not found:
        found.append("a smaller student or teacher, more processes with FSDP2, or a device with more memory")
    return found


def device_capacity(device: torch.device, processes: int = 1) -> int | None:
    """Total memory of a CUDA device, or this machine's available RAM shared by its processes (CPU runs)."""
    # Not accelerate's get_max_memory(): it reads *free* memory and opens a CUDA context on every GPU to do so.
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        return psutil.virtual_memory().available // max(processes, 1)  # what get_max_memory() reports for "cpu"
    return None


def refusal_message(plan: MemoryPlan) -> str:
    return (
        f"The memory plan needs {_size(plan.total)} per process but {plan.device} has {_size(plan.capacity)}:\n"
        f"{plan.format()}\nWhat would fit: {'; or '.join(plan.suggestions)}. "
        "Set preflight='print' to train anyway (the plan is an estimate)."
    )


def _sequence_length(dataset, limit: int = 256) -> int:
    """The longest `input_ids` among the first examples (what a padding collator pads a batch to), or 0."""
    if dataset is None or not hasattr(dataset, "__getitem__"):
        return 0
    lengths = []
    for index in range(min(len(dataset), limit)):
        example = dataset[index]
        ids = example.get("input_ids") if isinstance(example, dict) else None
        if ids is not None:
            lengths.append(len(ids))
    return max(lengths, default=0)


_OPTIMIZER_STATES = {"sgd": 0, "adafactor": 1, "adagrad": 1, "rmsprop": 1}


def memory_plan(trainer) -> MemoryPlan:
    """The plan of a `DistillationTrainer` before it trains: its models, arguments, placement and data."""
    args, accelerator = trainer.args, trainer.accelerator
    optimizer = str(getattr(args.optim, "value", args.optim))
    student_sharded = student_strategy(accelerator) in SHARDED_STRATEGIES
    placement = trainer.teacher_placement.kind
    if placement != "cache" and not any(True for _ in trainer.teacher_model.parameters()):
        placement = "shared_base"
    head = linear_head(trainer.model)
    inputs = MemoryPlanInputs(
        student=trainer.model,
        teacher=trainer.teacher_model,
        teacher_placement=placement,
        processes=accelerator.num_processes,
        student_sharded=student_sharded,
        batch_size=args.per_device_train_batch_size,
        sequence_length=_sequence_length(trainer.train_dataset),
        vocab_size=None if head is None else head.weight.shape[0],
        chunk_size=trainer.kd_chunk_size,
        optimizer_states=next((n for key, n in _OPTIMIZER_STATES.items() if optimizer.startswith(key)), 2),
        activation_checkpointing=bool(getattr(args, "activation_checkpointing", False)),
        compute_bytes=dtype_byte_size(torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32),
    )
    return estimate_memory_plan(inputs, str(args.device), device_capacity(args.device, accelerator.num_processes))
