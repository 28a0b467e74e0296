"""The YAML recipe behind `hf-distill train CONFIG.yaml`: which teacher, which student (and its adapters), which data,
which arguments.

Unknown keys raise, naming the key and where it was, so a typo never silently falls back to a default. Every value is
read the way `HfArgumentParser` reads the same field from the command line (TRL's CLI does the same with its YAML
configs), so `learning_rate: fast` or `layers: '0,2'` is refused naming the field, before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml
from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from transformers import GenerationConfig, HfArgumentParser
from transformers.hf_argparser import string_to_bool

from ..config import DistillationConfig
from ..data import FORMATS
from ..modeling.heads import TASKS

STUDENT_INITS = ("teacher_layers", "pretrained")
LOGPROB_DTYPES = ("float32", "float16", "uint8")


class RecipeError(ValueError):
    """A recipe the CLI refuses, in one line that starts with the recipe's path."""


@dataclass
class TeacherSpec:
    """`teacher:` section."""

    model_name_or_path: str = ""  # Hub id, local folder, packaged:<name>, or openai-compatible:<base_url>#<model>
    revision: str | None = None  # branch, tag or commit of a Hub teacher; resolved to a commit and recorded
    trust_remote_code: bool = False
    # A served teacher's tokenizer (local folder or Hub id): a server ships none, and the data is tokenized with it.
    tokenizer: str | None = None


@dataclass
class StudentSpec:
    """`student:` section."""

    init: str = "teacher_layers"  # teacher_layers: keep `layers` of the teacher; pretrained: load model_name_or_path
    # teacher_layers: the teacher's layers to keep; pretrained: optional, the layers of model_name_or_path to keep (a
    # cut of another model, e.g. a student with its own tokenizer for `args.cross_tokenizer`)
    layers: list[int] = field(default_factory=list)
    model_name_or_path: str | None = None
    trust_remote_code: bool = False
    quantization: str | None = None  # "4bit" / "8bit": a QLoRA student (needs a `peft` section and bitsandbytes)


@dataclass
class DataSpec:
    """`data:` section. Text for causal LM (a text file, or a table's `text_column`), a table of rows in an LLM dataset
    format (`format`), or a table for sequence classification."""

    text_file: str | None = None  # path or packaged:<name>; the text is split into `block_size`-token blocks
    dataset: str | None = None  # for `datasets.load_dataset`: a local folder, a format name (csv/json) or a Hub id
    data_files: list[str] | None = None  # a single path may be given as a string
    split: str = "train"
    # causal_lm tables: conversational (`messages`), prompt_completion, prompt_only (on-policy only), tokenized
    # (`input_ids`), text (`text_column` cut into blocks), or auto: picked from the columns (hf_distill.data)
    format: str = field(default="auto", metadata={"choices": ["auto", *FORMATS]})
    text_column: str = "text"
    label_column: str = "label"
    block_size: int = 128
    # text blocks: their first `prompt_length` tokens are a prompt (labels -100), the rest its continuation; what
    # on-policy steps need (the student continues each prompt): see trainer_configs/on_policy.yaml
    prompt_length: int | None = None
    max_length: int = 128  # tokens per row: classification text, and LLM-format rows (the completion's end is cut)
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
    # in the teacher's own tokenization (its ids, byte offsets, next-token log-probs): serves students of any tokenizer
    teacher_tokenized: bool = False


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

    def generation_config(self) -> GenerationConfig:
        """How the teacher answers, as `transformers.GenerationConfig` (which checks it: `max_new_tokens` > 0, and a
        warning for sampling settings under `do_sample: false`). `seed` and `chat_template` are not generation flags."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )


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
    _training_arguments: DistillationConfig | None = field(default=None, init=False, repr=False)

    def training_arguments(self) -> DistillationConfig:
        """The `args:` section as `DistillationConfig`, built once by `HfArgumentParser.parse_dict` (unknown keys
        raise); `load_recipe` builds it, so its checks run before anything is loaded."""
        if self._training_arguments is None:
            self._training_arguments = field_parser(DistillationConfig).parse_dict(self.args)[0]
        return self._training_arguments

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
    return field_parser(cls).parse_dict(typed_values(cls, values, where))[0]


class FieldParser(HfArgumentParser):
    """`HfArgumentParser` over one dataclass that reads one field at a time (`--name=value`), raises instead of
    printing its usage and exiting, and keeps each field's argparse action (its `nargs` tells a list field)."""

    def __init__(self, dataclass_type: type, **kwargs: Any) -> None:
        self.field_actions: dict[str, argparse.Action] = {}
        super().__init__(dataclass_type, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.field_actions.setdefault(action.dest, action)  # the field's own flag, not its `--no_<name>` twin
        return action

    def error(self, message: str) -> NoReturn:  # argparse prints the usage and exits; a recipe says one line
        raise ValueError(message)

    def read(self, name: str, value: Any) -> Any:
        """`value`, a YAML scalar, read as `--name=value` on the command line (types and choices checked)."""
        spelled = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return getattr(self.parse_known_args([f"--{name}={spelled}"])[0], name)


@functools.cache
def field_parser(cls: type) -> FieldParser:
    return FieldParser(cls)


def args_help() -> str:
    """Every `args:` field (`DistillationConfig`: `TrainingArguments` plus the distillation fields) with its type,
    default and help, as `HfArgumentParser` lists them; `hf-distill train --help` prints it."""
    parser = HfArgumentParser(
        DistillationConfig,
        usage=argparse.SUPPRESS,
        add_help=False,
        description="Keys of the recipe's `args:` section, also given as `--field value` after the recipe's path:",
    )
    return parser.format_help()


@functools.cache
def _optional_fields(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(name for name, hint in hints.items() if type(None) in typing.get_args(hint))


# List fields where one value may be written without brackets (`data_files: train.csv`).
_SCALAR_LISTS = {"data_files"}


def typed_values(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` with each one read by `HfArgumentParser` as it reads the same field given as `--name value` (YAML
    numbers and booleans are spelled as on the command line; a list field takes a YAML list, read item by item).
    A mapping or a list for a field that is not a boolean or a number (`report_to: []`) is left to the dataclass: the
    command line has no spelling for it.

    Raises:
        `ValueError` naming `where.name`, the value and what the field takes.
    """
    parser, optional = field_parser(cls), _optional_fields(cls)
    return {
        name: _read(parser, name, value, f"{where}.{name}", name in optional)
        if name in parser.field_actions
        else value
        for name, value in values.items()
    }


def _read(parser: FieldParser, name: str, value: Any, where: str, optional: bool) -> Any:
    action = parser.field_actions[name]
    if value is None:
        if optional or action.default is None:
            return None
        raise ValueError(f"{where} is empty; give it a value (default {action.default!r}) or remove the key.")
    if action.nargs in ("+", "*"):
        if name in _SCALAR_LISTS and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{where}={value!r} is not a list; write a YAML list, e.g. [0, 2].")
        return [_read_one(parser, action, item, f"{where}[{i}]")[0] for i, item in enumerate(value)]
    if isinstance(value, (dict, list)) and action.type not in (string_to_bool, int, float):
        return value  # the dataclass reads these itself (`report_to: []`, `fsdp_config: {...}`)
    return _read_one(parser, action, value, where)


def _read_one(parser: FieldParser, action: argparse.Action, value: Any, where: str) -> Any:
    # Two refusals argparse does not make: a YAML number is not a boolean (`--flag 1` is), and its float() reads
    # 'inf' and 'nan'.
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        if action.type is string_to_bool and numeric:
            raise ValueError("a number is not a boolean")
        read = parser.read(action.dest, value)
        if any(isinstance(v, float) and not math.isfinite(v) for v in (read if isinstance(read, list) else [read])):
            raise ValueError("not finite")
    except ValueError as error:
        raise ValueError(_refusal(action, value, where, error)) from None
    return read


def _refusal(action: argparse.Action, value: Any, where: str, error: ValueError) -> str:
    """What a value the parser refused should have been, in the recipe's words."""
    if action.type is string_to_bool:
        return f"{where}={value!r} is not a boolean; use true or false."
    if action.type is int:
        return f"{where}={value!r} is not an integer; use a whole number, e.g. 64."
    if action.type is float:
        return f"{where}={value!r} is not a number; use a number, e.g. 5.0e-4."
    if action.choices:
        return f"{where}={value!r}; use one of {', '.join(map(str, action.choices))}."
    return f"{where}={value!r}: {str(error).partition(': ')[2] or error}"


def _apply_override(raw: dict[str, Any], dotted: str, value: str) -> None:
    """`--data.block_size 64` sets raw['data']['block_size']; `--learning_rate 1e-4` sets raw['args'][...]."""
    parsed = yaml.safe_load(value)
    dotted = dotted.replace("-", "_")  # `--learning-rate` too, as `HfArgumentParser` (and `--help`) spell it
    section, _, key = dotted.partition(".")
    if key and section in (*_SECTIONS, *_OFFLINE_SECTIONS, "args"):
        target = raw.setdefault(section, {})
        if target is None:
            target = raw[section] = {}
        if not isinstance(target, dict):
            raise ValueError(f"`{section}` must be a mapping to take --{dotted}, got {type(target).__name__}.")
        target[key] = parsed
    elif dotted == "task":
        raw["task"] = parsed
    else:
        raw.setdefault("args", {})[dotted] = parsed


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
    if quantization and recipe.student.layers:
        raise ValueError(
            f"{path}: student.layers={recipe.student.layers!r} cuts a full-precision model and "
            f"student.quantization={quantization} loads a 4/8-bit one; use one of them."
        )
    if quantization and recipe.peft is None:
        raise ValueError(f"{path}: student.quantization={quantization} trains adapters only; add a `peft` section.")
    if recipe.peft is not None and recipe.student.layers and not recipe.args.get("merge_adapter_on_save"):
        built = "teacher layers" if recipe.student.init == "teacher_layers" else "student.layers of its model"
        raise ValueError(
            f"{path}: a `peft` student built from {built} has a base that exists nowhere else, so an adapter "
            "alone could not be loaded; set `args.merge_adapter_on_save: true` (or use student.init=pretrained "
            "without student.layers)."
        )


def _check_cross_tokenizer(path: str, recipe: Recipe) -> None:
    """`args.cross_tokenizer` distils into a causal LM student with a tokenizer of its own."""
    method = recipe.args.get("cross_tokenizer")
    if method is None:
        return
    if recipe.task != "causal_lm":
        raise ValueError(
            f"{path}: args.cross_tokenizer={method} distils causal language models; task={recipe.task}: remove it."
        )
    if recipe.student.init != "pretrained":
        raise ValueError(
            f"{path}: args.cross_tokenizer={method} distils into a student with its own tokenizer, but "
            f"student.init={recipe.student.init} copies the teacher (and its tokenizer); use student.init=pretrained "
            "with student.model_name_or_path (and student.layers to keep some of its layers), or remove "
            "args.cross_tokenizer."
        )
    if recipe.args.get("teacher_cache"):
        raise ValueError(
            f"{path}: args.teacher_cache is not supported with args.cross_tokenizer={method} by hf-distill train "
            "(a cache of `hf-distill cache-teacher` holds the teacher's scores of rows in its own tokens); remove one."
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


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError("no such file.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot be read ({error}).") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"YAML syntax error{where}: {problem}.") from None


# (section, field): the smallest value allowed. Sizes and counts must be positive; top_k 0 means "no top-k".
_MINIMUMS = {
    ("data", "block_size"): 1,
    ("data", "max_length"): 1,
    ("data", "prompt_length"): 1,
    ("data", "max_train_examples"): 1,
    ("cache", "k"): 1,
    ("cache", "batch_size"): 1,
    ("cache", "shard_size"): 1,
    ("generate", "batch_size"): 1,
    ("generate", "max_prompts"): 1,
    ("generate", "cache_top_k"): 1,
    ("generate", "top_k"): 0,
    ("student", "layers"): 0,
}
# (section, field): (low, high, whether high is allowed); low is always excluded. GenerationConfig checks none of
# these ranges itself (its logits warpers do, at the first `generate` step, after the teacher is loaded).
_RANGES = {
    ("data", "eval_fraction"): (0.0, 1.0, False),
    ("generate", "top_p"): (0.0, 1.0, True),
    ("cache", "temperature"): (0.0, math.inf, False),
    ("generate", "temperature"): (0.0, math.inf, False),
    ("generate", "cache_temperature"): (0.0, math.inf, False),
}


_ARG_MINIMUMS = {
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "save_steps": 1,
    "eval_steps": 1,
    "learning_rate": 0.0,
    "num_train_epochs": 0.0,
}


def _check_ranges(recipe: Recipe) -> None:
    for (section, name), low in _MINIMUMS.items():
        spec = getattr(recipe, section)
        value = getattr(spec, name) if spec is not None else None
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item < low:
                what = "a layer index >= 0" if name == "layers" else f"an integer >= {low}"
                raise ValueError(f"{section}.{name}={value!r}; use {what}.")
    for (section, name), (low, high, high_ok) in _RANGES.items():
        spec = getattr(recipe, section)
        value = getattr(spec, name) if spec is not None else None
        if value is not None and not (low < value < high or (high_ok and value == high)):
            bound = f"{high:g}]" if high_ok else (f"{high:g})" if math.isfinite(high) else "inf)")
            raise ValueError(f"{section}.{name}={value!r} is out of range; use a value in ({low:g}, {bound}.")
    for name, low in _ARG_MINIMUMS.items():  # TrainingArguments accepts these and fails only in the first step
        value = recipe.args.get(name)
        if value is not None and value < low:
            raise ValueError(f"args.{name}={value!r}; use {'an integer' if low == 1 else 'a number'} >= {low}.")
    max_steps = recipe.args.get("max_steps")
    if max_steps is not None and max_steps != -1 and max_steps < 1:  # Trainer would silently train by epochs
        raise ValueError(
            f"args.max_steps={max_steps!r}; use an integer >= 1, or -1 (or leave it out) to train for num_train_epochs."
        )
    for section in ("cache", "generate"):
        spec = getattr(recipe, section)
        if spec is not None and spec.logprob_dtype not in LOGPROB_DTYPES:
            raise ValueError(
                f"{section}.logprob_dtype={spec.logprob_dtype!r}; use one of {', '.join(LOGPROB_DTYPES)}."
            )


def _check_data_format(recipe: Recipe) -> None:
    data = recipe.data
    if data.format == "auto":
        return
    if recipe.task != "causal_lm":
        raise ValueError(
            f"data.format={data.format!r} is for causal_lm recipes; task={recipe.task} reads `text_column` and "
            "`label_column`. Remove data.format."
        )
    if data.text_file is not None and data.format != "text":
        raise ValueError(
            f"data.format={data.format!r} reads a table's columns, but data.text_file is plain text; give the rows as "
            "data.dataset with data_files (e.g. `dataset: json`), or use format: text."
        )


def load_recipe(path: str, overrides: list[tuple[str, str]] | None = None) -> Recipe:
    """Read a recipe YAML, apply `--field value` overrides, and validate every key and value.

    The `args` section is parsed by `HfArgumentParser` into `DistillationConfig` (any `TrainingArguments` field plus
    the distillation fields); other sections are read into their dataclasses above with the same conversions.
    Nothing is loaded: see `check_recipe_files` for the files and folders it names.

    Raises:
        `RecipeError` (a `ValueError`): one line, `"<path>: <what is wrong and how to fix it>"`.
    """
    try:
        return _load_recipe(path, overrides)
    except RecipeError:
        raise
    except (ValueError, TypeError) as error:
        raise RecipeError(_one_line(path, error)) from error


def _one_line(path: str, error: Exception) -> str:
    message = " ".join(str(error).split())
    return message if message.startswith(f"{path}:") else f"{path}: {message}"


def _load_recipe(path: str, overrides: list[tuple[str, str]] | None) -> Recipe:
    raw = _read_yaml(path)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the top level must be a mapping.")
    if raw.get("args") is not None and not isinstance(raw["args"], dict):
        raise ValueError(
            f"{path}: `args` must be a mapping of DistillationConfig fields (e.g. `learning_rate: 5.0e-4`), got "
            f"{type(raw['args']).__name__}."
        )
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
    args = typed_values(DistillationConfig, args, "args")
    recipe = Recipe(
        task=task,
        args=args,
        peft=raw.get("peft"),
        **{name: _build(cls, raw.get(name), name) for name, cls in _SECTIONS.items()},
        **{name: _build(cls, raw[name], name) for name, cls in _OFFLINE_SECTIONS.items() if name in raw},
    )
    recipe.peft_config()  # validates the section
    _check_ranges(recipe)
    _check_data_format(recipe)
    if recipe.generate is not None:
        try:
            recipe.generate.generation_config()
        except ValueError as error:
            raise ValueError(f"generate: {error}") from None
    try:
        recipe.training_arguments()  # DistillationConfig's own checks (distillation fields, TrainingArguments')
    except (ValueError, TypeError) as error:
        raise ValueError(f"args: {error}") from None
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
    if len(set(recipe.student.layers)) != len(recipe.student.layers):
        raise ValueError(f"{path}: student.layers={recipe.student.layers!r} repeats a layer; list each one once.")
    _check_adapter_student(path, recipe)
    _check_cross_tokenizer(path, recipe)
    if (recipe.data.text_file is None) == (recipe.data.dataset is None):
        raise ValueError(f"{path}: set exactly one of `data.text_file` and `data.dataset`.")
    return recipe
