"""The LLM dataset formats TRL defines, as tokenized rows for a causal-LM student: `input_ids`, `attention_mask` and
`labels` with `-100` on the prompt and template tokens (completion-only loss), so that in every row the prompt is the
leading run of `-100` labels (on-policy steps read it there).

Rendering and format checks are TRL's (`trl.data_utils`); what is written here is the labelling, the end-of-sequence
token, the truncation and the errors, none of which TRL exposes outside `SFTTrainer`'s private dataset preparation.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from datasets import Dataset
from jinja2 import TemplateError
from trl.data_utils import common_prefix_length, is_conversational, maybe_apply_chat_template, maybe_convert_to_chatml

from .._logging import get_logger

logger = get_logger(__name__)

FORMATS = ("tokenized", "conversational", "prompt_completion", "prompt_only", "text")
"""The formats `tokenize_for_distillation` reads (`format="auto"` picks one from the columns, see `detect_format`)."""

IGNORE_INDEX = -100


def detect_format(dataset: Dataset, *, text_column: str = "text") -> str:
    """The format of `dataset`, from its columns (first match wins).

    - `"tokenized"`: an `input_ids` column (rows already tokenized, e.g. `hf-distill generate` output).
    - `"conversational"`: a `messages` column (or ShareGPT-style `conversations`): lists of `{"role", "content"}`.
    - `"prompt_completion"`: `prompt` and `completion` columns, each plain text or a list of messages.
    - `"prompt_only"`: a `prompt` column alone (plain or a list of messages): for on-policy steps only.
    - `"text"`: a `text_column` column of plain text (language modelling: every token is a target).

    Args:
        dataset (`datasets.Dataset`): the rows.
        text_column (`str`, *optional*, defaults to `"text"`): the column of plain text.

    Returns:
        `str`: one of `FORMATS`.

    Raises:
        `ValueError`: no column of a known format, naming the dataset's columns and the ones each format needs.
    """
    columns = set(dataset.column_names)
    if "input_ids" in columns:
        return "tokenized"
    if columns & {"messages", "conversations"}:
        return "conversational"
    if "prompt" in columns:
        return "prompt_completion" if "completion" in columns else "prompt_only"
    if text_column in columns:
        return "text"
    raise ValueError(
        f"The dataset's columns ({', '.join(sorted(columns)) or 'none'}) match no known format. Give `messages` "
        "(conversational), `prompt` and `completion` (prompt-completion), `prompt` alone (prompt-only, on-policy), "
        f"`{text_column}` (plain text) or `input_ids` (tokenized rows), or rename a column to one of these."
    )


# The columns each format reads (besides the optional per-row `tools` and `chat_template_kwargs` of TRL's formats).
_NEEDED = {
    "conversational": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "prompt_only": ("prompt",),
    "tokenized": ("input_ids",),
}


def tokenize_for_distillation(
    dataset: Dataset,
    tokenizer: Any,
    *,
    format: str = "auto",  # the recipe's key; shadows the builtin only here
    max_length: int | None = None,
    text_column: str = "text",
    teacher_tokenizer: Any = None,
) -> Dataset:
    """Tokenize a dataset in any TRL format into rows a causal-LM student trains on.

    Each row becomes `input_ids`, `attention_mask` (all ones) and `labels`: `-100` on the prompt and on template
    tokens before the completion, the token ids on the completion (TRL's `completion_only_loss`), so the prompt is
    the leading run of `-100` labels. Other columns are dropped.

    - conversational (`messages`): the last turn must be the assistant's; it is the completion, and the turns before
      it are the prompt, rendered by the tokenizer's chat template with the generation prompt (TRL's
      `apply_chat_template` on `{"prompt": messages[:-1], "completion": messages[-1:]}`).
    - prompt-completion (`prompt`, `completion`): conversational lists are rendered as above; plain text is tokenized
      as `prompt + completion` with the tokenizer's special tokens, and the completion gets the EOS token appended
      unless it already ends with it (as TRL's `SFTTrainer` does). A rendered completion ends where the template ends
      the assistant's turn (its end-of-turn token, and any template text after it).
    - prompt-only (`prompt`): the prompt (with the generation prompt when conversational), every label `-100`:
      usable only on on-policy steps, where the student writes the completion.
    - text (`text_column`): the text plus EOS, every token a target (no prompt).
    - tokenized (`input_ids`): returned as it is (no truncation, no columns added or dropped).

    With a `teacher_tokenizer` that has a chat template (a cross-tokenizer teacher, `DistillationConfig.cross_tokenizer`),
    conversational rows (`messages`, or prompt-completion lists of messages) are also rendered by the *teacher's* chat
    template (the same messages and generation-prompt choices) and tokenized by the teacher, so the teacher reads its
    own markup rather than the student's; the trainer aligns the two renderings on the message contents
    (`TokenAligner.collate_rendered`). Rows then also carry the `TEACHER_ROW_COLUMNS`: `teacher_input_ids`,
    `teacher_labels` (`-100` on the teacher's prompt side, by the same rule as the student's labels), and
    `content_mask` / `teacher_content_mask` (1 on each side's tokens that lie inside a message's content). A row cut by
    `max_length` has its teacher row cut at the same place of the completion's content. Without a teacher chat
    template, or for plain text, nothing is added and the teacher reads the student's text (one info line says so).

    The prompt/completion boundary is the common prefix of the tokenized prompt and prompt + completion (TRL's
    `common_prefix_length`): templates that render a prompt alone differently from a prompt followed by an answer
    are handled as `SFTTrainer` handles them, with a warning naming the dropped prompt text.

    Args:
        dataset (`datasets.Dataset`): rows in one of `FORMATS`. A row may also carry TRL's optional `tools` (a list
            or its JSON) and `chat_template_kwargs` (a mapping) for the chat template.
        tokenizer (`PreTrainedTokenizerBase`): the student's tokenizer; conversational rows need its `chat_template`,
            plain completions and text its `eos_token`.
        format (`str`, *optional*, defaults to `"auto"`): one of `FORMATS`, or `"auto"` for `detect_format`.
        max_length (`int`, *optional*): rows longer than this are truncated to their first `max_length` tokens (the
            prompt is kept whole, the completion's end is cut). A row whose prompt leaves no completion token within
            `max_length`, and a prompt-only row longer than `max_length`, is refused, naming the row: cutting it would
            leave nothing to learn, or a prompt the student cannot continue. `None`: no limit.
        text_column (`str`, *optional*, defaults to `"text"`): the column of plain text for the `"text"` format.
        teacher_tokenizer (`PreTrainedTokenizerBase`, *optional*): a cross-tokenizer teacher's tokenizer: its chat
            template renders the conversational rows for the teacher (see above).

    Returns:
        `datasets.Dataset`: the columns `input_ids`, `attention_mask`, `labels` (lists of ints, one length per row),
        or `dataset` itself when it is already tokenized.

    Raises:
        `ValueError`: an unknown `format`, a column the format needs missing, a conversational row with a tokenizer
            without a chat template, a `messages` row whose last turn is not the assistant's, a row whose completion
            would be cut away, or a row the chat template refuses, naming the row and what to do.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> rows = Dataset.from_list([{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}])
    >>> rows = tokenize_for_distillation(rows, tokenizer, max_length=512)
    >>> rows.column_names
    ['input_ids', 'attention_mask', 'labels']
    ```
    """
    if format == "auto":
        format = detect_format(dataset, text_column=text_column)
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not a dataset format; use one of auto, {', '.join(FORMATS)}.")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length!r}; use an integer >= 1, or None for no limit.")
    if (
        format == "conversational"
        and "messages" not in dataset.column_names
        and "conversations" in dataset.column_names
    ):
        dataset = dataset.map(maybe_convert_to_chatml, remove_columns="conversations")  # ShareGPT from/value -> role
    needed = _NEEDED.get(format, (text_column,))
    missing = [column for column in needed if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"format={format!r} reads the column(s) {', '.join(needed)}, but {', '.join(missing)} is not in the "
            f"dataset (columns: {', '.join(dataset.column_names)}); rename the column or pick another format."
        )
    if format == "tokenized":
        return dataset
    if format == "conversational" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(_no_template("messages"))
    teacher = _chat_teacher(dataset, format, teacher_tokenizer)
    if teacher is not None:
        pair = functools.partial(_encode_pair, tokenizer=tokenizer, teacher_tokenizer=teacher, format=format)
        return dataset.map(
            lambda row, index: pair(row, index, max_length=max_length),
            with_indices=True,
            remove_columns=dataset.column_names,
            desc=f"Tokenizing {format} rows for the student and the teacher",
        )
    encode = functools.partial(_encode_row, tokenizer=tokenizer, format=format, text_column=text_column)
    return dataset.map(
        lambda row, index: _labelled(*encode(row, index), index=index, format=format, max_length=max_length),
        with_indices=True,
        remove_columns=dataset.column_names,
        desc=f"Tokenizing {format} rows",
    )


def _no_template(column: str) -> str:
    return (
        f"Column {column!r} holds conversations, but the tokenizer has no chat template to render them; use the "
        "tokenizer of a chat/instruct model, set `tokenizer.chat_template` (a Jinja string), or give the rows as "
        "plain text."
    )


def _encode_row(row: dict[str, Any], index: int, *, tokenizer: Any, format: str, text_column: str) -> tuple:
    """`(input_ids, prompt_length)` of one row: its tokens, and how many leading ones are prompt (not targets)."""
    if format == "text":
        ids = tokenizer(_with_eos(row[text_column], tokenizer, index, text_column))["input_ids"]
        return ids, 0
    example = _example(row, index, format)
    if is_conversational({"prompt": example["prompt"]}):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"Row {index}: {_no_template('prompt')}")
        return _encode_chat(example, row, index, tokenizer)
    prompt_ids = tokenizer(_text(example["prompt"], index, "prompt"))["input_ids"]
    if "completion" not in example:
        return prompt_ids, len(prompt_ids)
    completion = _with_eos(example["completion"], tokenizer, index, "completion")
    return _prompt_and_completion(prompt_ids, tokenizer(example["prompt"] + completion)["input_ids"], tokenizer)


def _example(row: dict[str, Any], index: int, format: str) -> dict[str, Any]:
    """A chat or prompt-completion row as TRL's prompt(-completion) example, checked."""
    if format == "conversational":
        example = _split_messages(row["messages"], index)
    else:
        example = {key: row[key] for key in ("prompt", "completion") if key in row and key in _NEEDED[format]}
    if "completion" in example and is_conversational({"prompt": example["prompt"]}) != is_conversational(
        {"completion": example["completion"]}
    ):
        raise ValueError(
            f"Row {index}: `prompt` and `completion` must both be lists of messages or both be text; this row mixes "
            "them."
        )
    if isinstance(example["prompt"], list) and not example["prompt"]:
        raise ValueError(f"Row {index}: `prompt` is an empty list; give the prompt's turns, or drop the row.")
    return example


def _split_messages(messages: list[dict[str, Any]] | None, index: int) -> dict[str, list]:
    """A conversation as TRL's prompt-completion example: the last (assistant) turn is the completion."""
    if not messages:
        raise ValueError(f"Row {index}: `messages` is empty; give the conversation as a list of role/content turns.")
    role = messages[-1].get("role") if isinstance(messages[-1], dict) else None
    if role != "assistant":
        raise ValueError(
            f"Row {index}: the last turn of `messages` is {role!r}, not 'assistant'; the last assistant turn is the "
            "completion the student learns. End the conversation with the assistant's reply, or give unanswered "
            "prompts as a `prompt` column (prompt-only, for on-policy steps)."
        )
    if len(messages) < 2:
        raise ValueError(
            f"Row {index}: `messages` holds only the assistant's turn; put the user's turn (the prompt) before it."
        )
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _render_chat(example: dict[str, Any], row: dict[str, Any], index: int, tokenizer: Any) -> dict[str, str]:
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    if row.get("chat_template_kwargs"):
        example = {**example, "chat_template_kwargs": row["chat_template_kwargs"]}
    try:
        return maybe_apply_chat_template(example, tokenizer, tools=tools)
    except (ValueError, KeyError, TypeError, IndexError, TemplateError) as error:
        raise ValueError(f"Row {index}: the chat template cannot render it ({error}).") from error


def _encode_chat(example: dict[str, Any], row: dict[str, Any], index: int, tokenizer: Any) -> tuple[list[int], int]:
    text = _render_chat(example, row, index, tokenizer)
    # The rendered text carries the template's own special tokens (BOS included): adding them again would double them,
    # as `tokenizer.apply_chat_template(tokenize=True)` knows.
    prompt_ids = tokenizer(text["prompt"], add_special_tokens=False)["input_ids"]
    if "completion" not in text:
        return prompt_ids, len(prompt_ids)
    ids = tokenizer(text["prompt"] + text["completion"], add_special_tokens=False)["input_ids"]
    return _prompt_and_completion(prompt_ids, ids, tokenizer)


def _prompt_and_completion(prompt_ids: list[int], ids: list[int], tokenizer: Any) -> tuple[list[int], int]:
    prompt_length = common_prefix_length(prompt_ids, ids)
    if prompt_length < len(prompt_ids):
        _warn_not_a_prefix(tokenizer.decode(prompt_ids[prompt_length:]))
    return ids, prompt_length


@functools.cache
def _warn_not_a_prefix(dropped: str) -> None:
    logger.warning(
        "The tokenized prompt is not a prefix of the tokenized prompt + completion (the chat template renders the "
        "prompt alone differently, or tokens merge across the boundary); the completion starts where they diverge "
        f"and the prompt's end {dropped!r} is not in the training row. Shown once per distinct text."
    )


def _text(value: Any, index: int, column: str) -> str:
    if not isinstance(value, str):
        what = "missing (null)" if value is None else f"a {type(value).__name__}, not text or a list of messages"
        raise ValueError(f"Row {index}: `{column}` is {what}; give it as text, or drop the row.")
    return value


def _with_eos(text: Any, tokenizer: Any, index: int, column: str) -> str:
    text = _text(text, index, column)
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError(
            f"The tokenizer has no eos_token to end `{column}` with (row {index}); set `tokenizer.eos_token` to the "
            "token that ends the model's answers."
        )
    return text if text.endswith(eos) else text + eos


def _labelled(
    ids: list[int], prompt_length: int, *, index: int, format: str, max_length: int | None
) -> dict[str, list[int]]:
    """The row's columns: `labels` are `-100` on the first `prompt_length` tokens, the ids after; cut to `max_length`."""
    if format != "prompt_only" and len(ids) <= prompt_length:
        raise ValueError(f"Row {index}: the completion has no tokens; give it a non-empty completion or drop the row.")
    if max_length is not None and len(ids) > max_length:
        if format == "prompt_only":
            raise ValueError(
                f"Row {index}: the prompt is {len(ids)} tokens, more than max_length={max_length}; a cut prompt is not "
                "the one the student should continue. Raise max_length or shorten or drop the row."
            )
        if prompt_length >= max_length:
            raise ValueError(
                f"Row {index}: its prompt is {prompt_length} tokens, so max_length={max_length} would cut away all "
                f"{len(ids) - prompt_length} completion tokens. Raise max_length or shorten or drop the row."
            )
        ids = ids[:max_length]
    labels = [IGNORE_INDEX] * prompt_length + list(ids[prompt_length:])
    return {"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": labels}


# ---- conversational rows rendered for a teacher of another tokenizer by its own chat template ----


def _chat_teacher(dataset: Dataset, format: str, teacher_tokenizer: Any) -> Any:
    """The teacher tokenizer when its chat template should render the rows for it, else `None` (logged once when a
    template is what is missing)."""
    if teacher_tokenizer is None or format not in ("conversational", "prompt_completion") or len(dataset) == 0:
        return None
    if format == "prompt_completion" and not is_conversational({"prompt": dataset[0]["prompt"]}):
        return None  # plain text: the teacher reads the same text, aligned in the collator
    if not getattr(teacher_tokenizer, "chat_template", None):
        logger.info(
            "The teacher's tokenizer (%s) has no chat template: the teacher reads the conversations as the student's "
            "chat template renders them (the student's markers as text); no teacher_input_ids column is added.",
            getattr(teacher_tokenizer, "name_or_path", "") or type(teacher_tokenizer).__name__,
        )
        return None
    return teacher_tokenizer


def _chat_side(example: dict[str, Any], row: dict[str, Any], index: int, tokenizer: Any) -> tuple:
    """One model's rendering of a chat example: `(ids, prompt_length, content_mask, offsets, content_spans)`."""
    text = _render_chat(example, row, index, tokenizer)
    prompt_ids = tokenizer(text["prompt"], add_special_tokens=False)["input_ids"]
    full = text["prompt"] + text.get("completion", "")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    if "completion" in text:
        ids, prompt_length = _prompt_and_completion(prompt_ids, ids, tokenizer)
    else:
        prompt_length = len(ids)
    spans = _content_spans(full, [*example["prompt"], *example.get("completion", [])])
    return ids, prompt_length, _inside(offsets, spans), offsets, spans


def _content_spans(text: str, messages: list[Any]) -> list[tuple[int, int] | None]:
    """Per message, the `[start, end)` characters of its content in the rendered `text` (found in order; a template
    that trims the content is matched by the trimmed content), `None` where it is not found."""
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        span = None
        if isinstance(content, str) and content.strip():
            for candidate in (content, content.strip()):
                start = text.find(candidate, cursor)
                if start >= 0:
                    span = (start, start + len(candidate))
                    cursor = span[1]
                    break
        spans.append(span)
    return spans


def _inside(offsets: list[tuple[int, int]], spans: list[tuple[int, int] | None]) -> list[int]:
    """1 for each token whose characters lie wholly inside one content span (a token straddling an edge is markup)."""
    found = sorted(span for span in spans if span is not None)
    mask, k = [], 0
    for start, end in offsets:
        while k < len(found) and found[k][1] <= start:
            k += 1
        mask.append(int(end > start and k < len(found) and found[k][0] <= start and end <= found[k][1]))
    return mask


def _encode_pair(
    row: dict[str, Any], index: int, *, tokenizer: Any, teacher_tokenizer: Any, format: str, max_length: int | None
) -> dict[str, list[int]]:
    """A chat row rendered for both models: the student's columns plus the `TEACHER_ROW_COLUMNS`."""
    example = _example(row, index, format)
    if not is_conversational({"prompt": example["prompt"]}):
        raise ValueError(
            f"Row {index}: `prompt` is text, but the dataset's first row is a list of messages; give every row in one "
            "form."
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"Row {index}: {_no_template('prompt')}")
    ids, prompt_length, content, offsets, spans = _chat_side(example, row, index, tokenizer)
    student = _labelled(ids, prompt_length, index=index, format=format, max_length=max_length)
    t_ids, t_prompt, t_content, t_offsets, t_spans = _chat_side(example, row, index, teacher_tokenizer)
    keep = len(t_ids)
    if len(student["input_ids"]) < len(ids):  # cut by max_length: cut the teacher at the same place of the content
        end = offsets[len(student["input_ids"]) - 1][1]
        last, t_last = spans[-1], t_spans[-1]
        if last is not None and t_last is not None:
            cut = t_last[0] + min(max(end - last[0], 0), t_last[1] - t_last[0])
            keep = next((k for k in range(t_prompt, len(t_ids)) if t_offsets[k][1] > cut), len(t_ids))
    t_ids = t_ids[:keep]
    return {
        **student,
        "teacher_input_ids": t_ids,
        "teacher_labels": [IGNORE_INDEX] * min(t_prompt, keep) + t_ids[t_prompt:],
        "content_mask": content[: len(student["input_ids"])],
        "teacher_content_mask": t_content[:keep],
    }
