"""Where the teacher lives under `accelerate launch`: a full frozen copy per process, sharded like an FSDP2 or
DeepSpeed ZeRO-3 student, offloaded to CPU and streamed layer by layer, or on devices of its own in a single-process run.

Every process takes the same decisions from the same state, so the control flow never diverges between ranks.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch
from accelerate.utils import DistributedType
from torch import nn

from ..config import PLACEMENTS


@dataclass(frozen=True)
class Placement:
    """A resolved teacher placement: `replicate`, `shard`, `offload`, or `devices` (with `devices` listed)."""

    kind: str
    devices: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"devices {', '.join(self.devices)}" if self.kind == "devices" else self.kind


def student_strategy(accelerator) -> str:
    """How the student is distributed: `fsdp2`, `fsdp1`, `zero3`, `deepspeed` (ZeRO stages 0-2), `ddp` or `single`."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp2" if getattr(accelerator, "is_fsdp2", False) else "fsdp1"
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        return "zero3" if plugin is not None and plugin.zero_stage == 3 else "deepspeed"
    return "ddp" if accelerator.num_processes > 1 else "single"


SHARDED_STRATEGIES = ("fsdp1", "fsdp2", "zero3")


def _check_devices(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    for name in names:
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise ValueError(
                f"teacher_placement={value!r}: {name!r} is not a placement ({', '.join(PLACEMENTS)}) nor a device "
                "name such as 'cuda:1' or 'cpu'."
            ) from error
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"teacher_placement={value!r} names {name}, but this machine has {torch.cuda.device_count()} CUDA "
                "device(s); name devices that exist, or use 'replicate' / 'offload'."
            )
        if device.type not in ("cuda", "cpu", "xpu", "mps", "npu"):
            raise ValueError(f"teacher_placement={value!r}: device type {device.type!r} is not supported.")
    return names


def resolve_placement(value: str, accelerator) -> Placement:
    """Turn `DistillationConfig.teacher_placement` into a concrete placement for this run, or a clear error."""
    strategy = student_strategy(accelerator)
    if value == "auto":
        return Placement("shard" if strategy in ("fsdp2", "zero3") else "replicate")
    if value in ("replicate", "offload"):
        return Placement(value)
    if value == "shard":
        if strategy not in ("fsdp2", "zero3"):
            raise ValueError(
                f"teacher_placement='shard' shards the teacher like an FSDP2 or DeepSpeed ZeRO-3 student, but the "
                f"student runs '{strategy}'. Launch with FSDP2 or ZeRO-3 (trainer_configs/accelerate/), or use "
                "'replicate' (a full copy per process) or 'offload' (teacher weights on CPU, streamed to the device)."
            )
        return Placement("shard")
    devices = _check_devices(value)
    if accelerator.num_processes > 1:
        raise ValueError(
            f"teacher_placement={value!r} puts the teacher on devices of its own, which only works in a "
            f"single-process run; this run has {accelerator.num_processes} processes. Use 'replicate', 'shard' "
            "or 'offload'."
        )
    return Placement("devices", devices)


def _shard_like_student(teacher: nn.Module, accelerator) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    plugin = accelerator.state.fsdp_plugin
    names = set(getattr(plugin, "transformer_cls_names_to_wrap", None) or [])
    names |= set(getattr(teacher, "_no_split_modules", None) or [])
    for module in teacher.modules():
        if type(module).__name__ in names:
            fully_shard(module, reshard_after_forward=True)
    # The root too, resharded after its forward: otherwise embeddings and the LM head would stay gathered.
    fully_shard(teacher, reshard_after_forward=True)
    return teacher


def _shard_with_deepspeed(teacher: nn.Module, accelerator, teacher_config: str | dict | None) -> nn.Module:
    """A ZeRO-3 inference engine for the teacher: the student's DeepSpeed config (or `teacher_deepspeed_config`)
    without optimizer and scheduler, so each process holds its share of the teacher's weights."""
    import deepspeed

    if isinstance(teacher_config, str):
        with open(teacher_config) as f:
            teacher_config = json.load(f)
    config = copy.deepcopy(teacher_config or accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    config.setdefault("zero_optimization", {})["stage"] = 3
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if config.get(key) == "auto":  # not used for a forward-only engine, but DeepSpeed refuses "auto"
            config[key] = accelerator.state.deepspeed_plugin.deepspeed_config.get(key, 1)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def _on_devices(teacher: nn.Module, devices: tuple[str, ...]) -> nn.Module:
    from accelerate import dispatch_model, infer_auto_device_map

    if len(devices) == 1:
        return teacher.to(devices[0])
    max_memory = {
        torch.device(d).index: torch.cuda.get_device_properties(torch.device(d)).total_memory for d in devices
    }
    device_map = infer_auto_device_map(
        teacher, max_memory=max_memory, no_split_module_classes=getattr(teacher, "_no_split_modules", None)
    )
    return dispatch_model(teacher, device_map=device_map)


def apply_placement(
    teacher: nn.Module,
    placement: Placement,
    device: torch.device,
    accelerator,
    teacher_deepspeed_config: str | dict | None = None,
) -> nn.Module:
    """Put the frozen teacher where `placement` says; the returned module is what the trainer calls."""
    if placement.kind == "replicate":
        # `prepare_model` skips device placement under FSDP unless asked; `.to()` is explicit here.
        return teacher.to(device)
    if placement.kind == "shard" and student_strategy(accelerator) == "zero3":
        return _shard_with_deepspeed(teacher, accelerator, teacher_deepspeed_config)
    if placement.kind == "shard":
        return _shard_like_student(teacher.to(device), accelerator)
    if placement.kind == "offload":
        from accelerate import cpu_offload

        return cpu_offload(teacher.to("cpu"), execution_device=device)
    return _on_devices(teacher, placement.devices)


def teacher_device(placement: Placement, device: torch.device) -> torch.device:
    """The device the teacher's inputs go to (its first device when it has its own)."""
    return torch.device(placement.devices[0]) if placement.kind == "devices" else device
