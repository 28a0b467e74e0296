"""A recipe's files and folders, checked before anything is loaded: the teacher's and student's folders, the data
files, the teacher cache, DeepSpeed configs, `student.layers` against the `config.json` of the model they are cut
from, and `output_dir` against the folders the run reads. `hf-distill train` runs this right after `load_recipe`, so
a wrong path is one line, not a traceback after minutes of loading."""

from __future__ import annotations

import json
import os
from typing import Any

from .. import _packaged as assets
from ..served.endpoint import is_served_spec
from ..training.output_guard import check_output_dir
from .recipe import Recipe, RecipeError, _one_line


def _looks_local(name: str) -> bool:
    # A Hub id is `name` or `namespace/name`; anything that starts like a path, or exists, is a path.
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name) or name.count("/") > 1


def _check_model(name: str | None, where: str) -> None:
    if not name or is_served_spec(name):  # a served teacher is checked against its server when it is used
        return
    if assets.is_packaged(name):
        try:
            assets.packaged_model_info(name)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    elif _looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        raise ValueError(f"{where}={name!r}: no such folder; give a saved model's folder or a Hub id.")


def _check_file(name: str | None, where: str, folder_ok: bool = False) -> None:
    if not name or "://" in name or any(c in name for c in "*?["):  # URLs and globs are for `datasets` to resolve
        return
    path = os.path.expanduser(name)
    if not (os.path.isfile(path) or (folder_ok and os.path.isdir(path))):
        raise ValueError(f"{where}={name!r}: no such {'file or folder' if folder_ok else 'file'}.")


def _readable_config(name: str | None) -> dict[str, Any] | None:
    """The `config.json` of a teacher that is a local folder, or a packaged model whose folder already holds one
    (read as JSON: no weights are loaded, nothing is converted or downloaded); `None` otherwise."""
    if not name:
        return None
    try:
        if assets.is_packaged(name):
            folder = assets.packaged_model_dir(name)  # the installed package (SmolLM2's holds only its GGUF file)
        elif _looks_local(name):
            folder = os.path.expanduser(name)
        else:
            return None
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, ImportError):  # unreadable here: the loader reports it
        return None
    return config if isinstance(config, dict) else None


def _check_student_layers(recipe: Recipe) -> None:
    """`student.layers` within the `num_hidden_layers` of the model they are cut from (the teacher, or the pretrained
    student's `model_name_or_path`), when its config can be read without loading it."""
    if not recipe.student.layers:
        return
    if recipe.student.init == "teacher_layers":
        role, name = "teacher", recipe.teacher.model_name_or_path
    else:
        role, name = "student model", recipe.student.model_name_or_path
    config = _readable_config(name) or {}
    count = next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in config), None)
    if isinstance(count, bool) or not isinstance(count, int):
        return
    bad = [i for i in recipe.student.layers if i >= count]
    if bad:
        raise ValueError(
            f"student.layers={recipe.student.layers!r}: the {role} {name!r} has {count} layers (num_hidden_layers in "
            f"its config.json), so {', '.join(map(str, bad))} is out of range; use indices in [0, {count - 1}]."
        )


def _check_output_dir(recipe: Recipe) -> None:
    """`args.output_dir` not equal to or inside a local folder the run reads (teacher, student, teacher cache)."""
    output_dir = recipe.args.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        return

    def local(name: str | None) -> str | None:  # packaged models live in their own cache, never resolved here
        return name if isinstance(name, str) and name and not assets.is_packaged(name) and _looks_local(name) else None

    try:
        check_output_dir(
            output_dir,
            student=local(recipe.student.model_name_or_path),
            teacher=local(recipe.teacher.model_name_or_path),
            teacher_cache=local(recipe.args.get("teacher_cache")),
        )
    except ValueError as error:  # name the recipe key
        message = str(error)
        raise ValueError(f"args.{message}" if message.startswith("output_dir=") else message) from None


def check_recipe_files(path: str, recipe: Recipe) -> None:
    """Refuse a recipe that names a missing local file or folder (teacher, student, text, data files, teacher cache,
    DeepSpeed config), `student.layers` beyond the layers of the model they are cut from (when its
    `config.json` is on disk), or an
    `args.output_dir` equal to or inside the teacher's, the student's or the teacher cache's folder, before anything
    is loaded. Hub ids and packaged assets are left to their loaders (offline, a Hub id may only be in the local
    cache).

    Raises:
        `RecipeError`: `"<path>: <field>='<value>': no such file."`.
    """
    try:
        _check_model(recipe.teacher.model_name_or_path, "teacher.model_name_or_path")
        _check_model(recipe.student.model_name_or_path, "student.model_name_or_path")
        _check_model(recipe.teacher.tokenizer, "teacher.tokenizer")
        data = recipe.data
        if data.text_file is not None:
            if assets.is_packaged(data.text_file):
                try:
                    assets.packaged_text_path(data.text_file)
                except (ValueError, OSError, ImportError) as error:
                    raise ValueError(f"data.text_file: {error}") from None
            else:
                _check_file(data.text_file, "data.text_file")
        for i, name in enumerate(data.data_files or []):
            _check_file(name, f"data.data_files[{i}]")
        if data.dataset is not None and _looks_local(data.dataset):
            _check_file(data.dataset, "data.dataset", folder_ok=True)
        cache = recipe.args.get("teacher_cache")
        if isinstance(cache, str) and _looks_local(cache) and not os.path.isdir(os.path.expanduser(cache)):
            raise ValueError(f"args.teacher_cache={cache!r}: no such folder; run `hf-distill cache-teacher` first.")
        for name in ("teacher_deepspeed_config", "deepspeed"):
            value = recipe.args.get(name)
            if isinstance(value, str):
                _check_file(value, f"args.{name}")
        _check_student_layers(recipe)
        _check_output_dir(recipe)
    except ValueError as error:
        raise RecipeError(_one_line(path, error)) from error
