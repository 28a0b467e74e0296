"""The YAML recipe behind `hf-distill train CONFIG.yaml`: which teacher, which student (and its adapters), which data,
which arguments.

Unknown keys raise, naming the key and where it was, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from .config import DistillationConfig

TASKS = ("causal_lm", "sequence_classification")
STUDENT_INITS = ("teacher_layers", "pretrained")


@dataclass
class TeacherSpec:
    """`teacher:` section."""

    model_name_or_path: str = ""  # Hub id, local folder, or packaged:<name>
    trust_remote_code: bool = False


@dataclass
class StudentSpec:
    """`student:` section."""

    init: str = "teacher_layers"  # teacher_layers: keep `layers` of the teacher; pretrained: load model_name_or_path
    layers: list[int] = field(default_factory=list)
    model_name_or_path: str | None = None
    trust_remote_code: bool = False
    quantization: str | None = None  # "4bit" / "8bit": a QLoRA student (needs a `peft` section and bitsandbytes)


@dataclass
class DataSpec:
    """`data:` section. Text for causal LM (a text file), or a table for sequence classification."""

    text_file: str | None = None  # path or packaged:<name>; the text is split into `block_size`-token blocks
    dataset: str | None = None  # for `datasets.load_dataset`: a local folder, a format name (csv/json) or a Hub id
    data_files: str | list[str] | None = None
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    block_size: int = 128
    max_length: int = 128
    max_train_examples: int | None = None
    eval_fraction: float = 0.1
    seed: int = 0


@dataclass
class CacheSpec:
    """`cache:` section of `hf-distill cache-teacher`: the teacher's top-k over the recipe's train and eval data,
    written to `<output_dir>/train` and `<output_dir>/eval`."""

    output_dir: str = ""
    k: int = 64
    temperature: float = 1.0  # training from the cache must use the same kd_temperature
    logprob_dtype: str = "float16"  # float32, float16 or uint8 (quantised)
    batch_size: int = 8
    shard_size: int = 1024


@dataclass
class GenerateSpec:
    """`generate:` section of `hf-distill generate`: the teacher answers the prompts in `data.dataset`."""

    output_dir: str = ""
    prompt_column: str = "prompt"
    chat_template: bool = True  # format prompts with the tokenizer's chat template when it has one
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int = 0
    batch_size: int = 8
    max_prompts: int | None = None
    cache_top_k: int | None = None  # also keep the teacher's top-k over its own responses (a teacher cache)
    cache_temperature: float = 1.0
    logprob_dtype: str = "float16"


@dataclass
class Recipe:
    task: str
    teacher: TeacherSpec
    student: StudentSpec
    data: DataSpec
    args: dict[str, Any]
    peft: dict[str, Any] | None = None
    cache: CacheSpec | None = None
    generate: GenerateSpec | None = None

    def training_arguments(self) -> DistillationConfig:
        return DistillationConfig(**self.args)

    def peft_config(self) -> PeftConfig | None:
        """The `peft:` section as a peft config (`peft_type: LORA` plus that config's own fields), or `None`."""
        return None if self.peft is None else _peft_config(self.peft)


def _peft_config(section: dict[str, Any]) -> PeftConfig:
    if not isinstance(section, dict):
        raise ValueError(f"`peft` must be a mapping, got {type(section).__name__}.")
    peft_type = str(section.get("peft_type", "")).upper()
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ValueError(
            f"peft.peft_type={section.get('peft_type')!r}; use one of {', '.join(sorted(PEFT_TYPE_TO_CONFIG_MAPPING))}."
        )
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    known = {f.name for f in dataclasses.fields(config_class) if f.init}
    settings = {k: v for k, v in section.items() if k != "peft_type"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {', '.join(unknown)} in `peft` for {config_class.__name__}.")
    return config_class(**settings)


_SECTIONS = {"teacher": TeacherSpec, "student": StudentSpec, "data": DataSpec}
_OFFLINE_SECTIONS = {"cache": CacheSpec, "generate": GenerateSpec}


def _build(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"`{where}` must be a mapping, got {type(values).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {', '.join(unknown)} in `{where}`; valid keys: {', '.join(sorted(known))}.")
    return cls(**values)


def _apply_override(raw: dict[str, Any], dotted: str, value: str) -> None:
    """`--data.block_size 64` sets raw['data']['block_size']; `--learning_rate 1e-4` sets raw['args'][...]."""
    parsed = yaml.safe_load(value)
    section, _, key = dotted.partition(".")
    if key and section in (*_SECTIONS, *_OFFLINE_SECTIONS, "args"):
        raw.setdefault(section, {})[key] = parsed
    elif dotted == "task":
        raw["task"] = parsed
    else:
        raw.setdefault("args", {})[dotted] = parsed


def _coerce_number(value: Any, default: Any) -> Any:
    # YAML 1.1 reads `1e-4` (no dot) as a string; a numeric field must still get a number.
    if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return type(default)(value) if isinstance(default, float) else int(value)
        except ValueError:
            return value  # let DistillationConfig report it
    return value


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """`['--a', '1', '--b=2']` -> `[('a', '1'), ('b', '2')]`, refusing a flag without a value."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"Expected --field value after the config path, got {token!r}.")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ValueError(f"{token} needs a value, e.g. {token} 1e-4.")
            key, value = token[2:], tokens[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


def _check_adapter_student(path: str, recipe: Recipe) -> None:
    quantization = recipe.student.quantization
    if quantization not in (None, "4bit", "8bit"):
        raise ValueError(f"{path}: student.quantization={quantization!r}; use 4bit, 8bit or leave it out.")
    if quantization and recipe.student.init != "pretrained":
        raise ValueError(f"{path}: student.quantization={quantization} needs student.init=pretrained.")
    if quantization and recipe.peft is None:
        raise ValueError(f"{path}: student.quantization={quantization} trains adapters only; add a `peft` section.")
    if (
        recipe.peft is not None
        and recipe.student.init == "teacher_layers"
        and not recipe.args.get("merge_adapter_on_save")
    ):
        raise ValueError(
            f"{path}: a `peft` student built from teacher layers has a base that exists nowhere else, so an adapter "
            "alone could not be loaded; set `args.merge_adapter_on_save: true` (or use student.init=pretrained)."
        )


def _check_offline(path: str, recipe: Recipe) -> None:
    for name in _OFFLINE_SECTIONS:
        section = getattr(recipe, name)
        if section is not None and not section.output_dir:
            raise ValueError(f"{path}: `{name}.output_dir` is required.")
    if recipe.generate is not None and recipe.data.dataset is None:
        raise ValueError(f"{path}: generate reads prompts from `data.dataset` (with data_files); set it.")
    if (recipe.data.text_file is None) == (recipe.data.dataset is None):
        raise ValueError(f"{path}: set exactly one of `data.text_file` and `data.dataset`.")


def load_recipe(path: str, overrides: list[tuple[str, str]] | None = None) -> Recipe:
    """Read a recipe YAML, apply `--field value` overrides, and validate every key.

    The `args` section is validated against `DistillationConfig` (any `TrainingArguments` field plus the
    distillation fields); other sections against their dataclasses above.
    """
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a mapping.")
    for key, value in overrides or []:
        _apply_override(raw, key, value)
    unknown = sorted(set(raw) - {"task", "args", "peft", *_SECTIONS, *_OFFLINE_SECTIONS})
    if unknown:
        raise ValueError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; valid: task, teacher, student, data, peft, args, "
            "cache, generate."
        )
    task = raw.get("task", "causal_lm")
    if task not in TASKS:
        raise ValueError(f"{path}: task={task!r} is not supported by the CLI; use one of {', '.join(TASKS)}.")
    args = raw.get("args") or {}
    arg_fields = {f.name for f in dataclasses.fields(DistillationConfig) if f.init}
    unknown = sorted(set(args) - arg_fields)
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {', '.join(unknown)} in `args`; they must be DistillationConfig / "
            "TrainingArguments fields."
        )
    args = {
        key: _coerce_number(value, DistillationConfig.__dataclass_fields__[key].default) for key, value in args.items()
    }
    recipe = Recipe(
        task=task,
        args=args,
        peft=raw.get("peft"),
        **{name: _build(cls, raw.get(name), name) for name, cls in _SECTIONS.items()},
        **{name: _build(cls, raw[name], name) for name, cls in _OFFLINE_SECTIONS.items() if name in raw},
    )
    recipe.peft_config()  # validates the section
    if not recipe.teacher.model_name_or_path:
        raise ValueError(f"{path}: `teacher.model_name_or_path` is required.")
    if "student" not in raw and (recipe.cache or recipe.generate):  # cache-teacher / generate need no student
        _check_offline(path, recipe)
        return recipe
    if recipe.student.init not in STUDENT_INITS:
        raise ValueError(f"{path}: student.init={recipe.student.init!r}; use one of {', '.join(STUDENT_INITS)}.")
    if recipe.student.init == "pretrained" and not recipe.student.model_name_or_path:
        raise ValueError(f"{path}: student.init=pretrained needs `student.model_name_or_path`.")
    if recipe.student.init == "teacher_layers" and not recipe.student.layers:
        raise ValueError(f"{path}: student.init=teacher_layers needs `student.layers`, e.g. [0, 6, 12, 18, 24, 29].")
    _check_adapter_student(path, recipe)
    if (recipe.data.text_file is None) == (recipe.data.dataset is None):
        raise ValueError(f"{path}: set exactly one of `data.text_file` and `data.dataset`.")
    return recipe
