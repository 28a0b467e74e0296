"""LLM dataset formats -> tokenized rows (hf_distill.data): each format's labels as written by hand, with a chat
template; auto-detection; bad input named; and the CLI recipe's `data: {dataset: json, format: ...}`."""

import json

import pytest
import yaml
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

from hf_distill.cli.recipe import RecipeError, load_recipe
from hf_distill.data import FORMATS, detect_format, tokenize_for_distillation

# The tiny tokenizer's vocabulary, by id: words split on whitespace; special tokens split out anywhere.
UNK, PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END = range(8)
W0, W1, W2, W3, W4 = range(8, 13)
X = -100  # an ignored label
WORDS = ["<unk>", "<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Each turn: `<|role|> content <|end|>`; the generation prompt opens the assistant's turn. BOS comes from the template
# (chat rows) or from the tokenizer's post-processor (plain text), never both.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS + [f"w{i}" for i in range(10)])}, "<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=WORDS[4:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def rows(dataset):
    return [(row["input_ids"], row["labels"]) for row in dataset]


def test_conversational_rows_learn_the_last_assistant_turn_only():
    dataset = Dataset.from_list(
        [
            {"messages": [user("w1 w2"), assistant("w3")], "id": 7},
            {
                "messages": [
                    {"role": "system", "content": "w0"},
                    user("w1"),
                    assistant("w2"),
                    user("w3"),
                    assistant("w4"),
                ],
                "id": 8,
            },
        ]
    )
    out = tokenize_for_distillation(dataset, tiny_tokenizer())
    assert out.column_names == ["input_ids", "attention_mask", "labels"]  # other columns dropped
    assert rows(out) == [
        ([BOS, USER, W1, W2, END, ASSISTANT, W3, END], [X, X, X, X, X, X, W3, END]),
        (
            [BOS, SYSTEM, W0, END, USER, W1, END, ASSISTANT, W2, END, USER, W3, END, ASSISTANT, W4, END],
            [X] * 14 + [W4, END],  # the earlier assistant turn is prompt
        ),
    ]
    assert out[0]["attention_mask"] == [1] * 8


def test_plain_prompt_completion_ends_with_eos_once():
    dataset = Dataset.from_list([{"prompt": "w1 w2", "completion": " w3"}, {"prompt": "w1", "completion": " w4<eos>"}])
    out = tokenize_for_distillation(dataset, tiny_tokenizer())
    assert rows(out) == [
        ([BOS, W1, W2, W3, EOS], [X, X, X, W3, EOS]),
        ([BOS, W1, W4, EOS], [X, X, W4, EOS]),  # already ends with EOS: not doubled
    ]


def test_conversational_prompt_completion_renders_with_the_generation_prompt():
    dataset = Dataset.from_list([{"prompt": [user("w1")], "completion": [assistant("w2 w3")]}])
    out = tokenize_for_distillation(dataset, tiny_tokenizer())
    assert rows(out) == [([BOS, USER, W1, END, ASSISTANT, W2, W3, END], [X, X, X, X, X, W2, W3, END])]


def test_prompt_only_rows_are_all_prompt():
    plain = tokenize_for_distillation(Dataset.from_list([{"prompt": "w1 w2"}]), tiny_tokenizer())
    chat = tokenize_for_distillation(Dataset.from_list([{"prompt": [user("w1")]}]), tiny_tokenizer())
    assert rows(plain) == [([BOS, W1, W2], [X, X, X])]
    assert rows(chat) == [([BOS, USER, W1, END, ASSISTANT], [X, X, X, X, X])]  # ends on the generation prompt


def test_text_rows_are_all_targets_with_eos():
    out = tokenize_for_distillation(Dataset.from_list([{"text": "w1 w2"}]), tiny_tokenizer())
    assert rows(out) == [([BOS, W1, W2, EOS], [BOS, W1, W2, EOS])]


def test_tokenized_rows_are_kept_as_they_are():
    dataset = Dataset.from_list([{"input_ids": [W1, W2, W3], "labels": [X, W2, W3], "prompt": "w1"}])
    assert detect_format(dataset) == "tokenized"
    assert tokenize_for_distillation(dataset, tiny_tokenizer(), max_length=1) is dataset


def test_a_template_rendering_the_prompt_alone_differently_starts_the_completion_where_they_diverge(monkeypatch):
    from hf_distill.data import formats

    warnings = []
    monkeypatch.setattr(formats.logger, "warning", warnings.append)
    formats._warn_not_a_prefix.cache_clear()
    # The generation prompt carries an extra `w0` the full conversation does not (like an empty thought block).
    template = CHAT_TEMPLATE.replace("<|assistant|> {% endif %}", "<|assistant|> w0 {% endif %}")
    dataset = Dataset.from_list([{"messages": [user("w1"), assistant("w3")]}] * 2)
    out = tokenize_for_distillation(dataset, tiny_tokenizer(template))
    assert rows(out) == [([BOS, USER, W1, END, ASSISTANT, W3, END], [X, X, X, X, X, W3, END])] * 2
    assert len(warnings) == 1 and "is not a prefix of the tokenized prompt + completion" in warnings[0]


def test_max_length_cuts_the_completion_end_and_refuses_to_cut_it_all():
    dataset = Dataset.from_list([{"prompt": "w1 w2", "completion": " w3 w4"}])
    assert rows(tokenize_for_distillation(dataset, tiny_tokenizer(), max_length=4)) == [
        ([BOS, W1, W2, W3], [X, X, X, W3])
    ]
    with pytest.raises(ValueError, match="Row 0: its prompt is 3 tokens, so max_length=3 would cut away all 3"):
        tokenize_for_distillation(dataset, tiny_tokenizer(), max_length=3)
    prompts = Dataset.from_list([{"prompt": "w1"}, {"prompt": "w1 w2 w3"}])
    with pytest.raises(ValueError, match="Row 1: the prompt is 4 tokens, more than max_length=3"):
        tokenize_for_distillation(prompts, tiny_tokenizer(), max_length=3)


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"input_ids": [1], "messages": [user("w1")]}, "tokenized"),
        ({"messages": [user("w1")], "prompt": "w1"}, "conversational"),
        ({"conversations": [{"from": "human", "value": "w1"}]}, "conversational"),
        ({"prompt": "w1", "completion": "w2"}, "prompt_completion"),
        ({"prompt": [user("w1")], "completion": [assistant("w2")]}, "prompt_completion"),
        ({"prompt": "w1", "id": 3}, "prompt_only"),
        ({"text": "w1", "id": 3}, "text"),
    ],
)
def test_detect_format(row, expected):
    assert detect_format(Dataset.from_list([row])) == expected
    assert expected in FORMATS


def test_sharegpt_conversations_are_read_as_messages():
    dataset = Dataset.from_list(
        [{"conversations": [{"from": "user", "value": "w1"}, {"from": "assistant", "value": "w2"}]}]
    )
    assert rows(tokenize_for_distillation(dataset, tiny_tokenizer())) == [
        ([BOS, USER, W1, END, ASSISTANT, W2, END], [X, X, X, X, X, W2, END])
    ]


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        ([{"question": "w1"}], {}, "columns \\(question\\) match no known format"),
        (
            [{"messages": [user("w1"), assistant("w2")]}, {"messages": [user("w1"), assistant("w2"), user("w3")]}],
            {},
            "Row 1: the last turn of `messages` is 'user', not 'assistant'",
        ),
        ([{"messages": [assistant("w2")]}], {}, "Row 0: `messages` holds only the assistant's turn"),
        ([{"messages": [user("w1"), assistant("w2")]}], {"chat_template": None}, "Column 'messages' holds conversa"),
        ([{"prompt": [user("w1")]}], {"chat_template": None}, "Row 0: Column 'prompt' holds conversations, but the"),
        (
            [{"prompt": "w1"}],
            {"format": "prompt_completion"},
            "completion is not in the dataset \\(columns: prompt\\)",
        ),
        ([{"prompt": "w1"}], {"format": "chat"}, "format='chat' is not a dataset format; use one of auto, tokenized"),
        ([{"prompt": [user("w1")], "completion": "w2"}], {}, "Row 0: `prompt` and `completion` must both be"),
        ([{"prompt": "w1"}, {"prompt": None}], {}, "Row 1: `prompt` is missing \\(null\\); give it as text"),
        ([{"prompt": []}], {"format": "prompt_only"}, "Row 0: `prompt` is an empty list"),
        ([{"messages": []}], {}, "Row 0: `messages` is empty"),
    ],
)
def test_bad_input_names_the_column_or_row(data, kwargs, message):
    tokenizer = tiny_tokenizer(kwargs.pop("chat_template", CHAT_TEMPLATE))
    with pytest.raises(ValueError, match=message):
        tokenize_for_distillation(Dataset.from_list(data), tokenizer, **kwargs)


# The CLI recipe: `data: {dataset: json, data_files: ..., format: ...}` loads a JSONL file and tokenizes it as above.
JSONL_ROWS = {  # rows of different lengths
    "conversational": [{"messages": [user(f"w{i}"), assistant("w2 " * (i + 1))]} for i in range(4)],
    "prompt_completion": [{"prompt": f"w{i}", "completion": " w3" * (i + 1)} for i in range(4)],
    "prompt_only": [{"prompt": [user("w1 " * (i + 1))]} for i in range(4)],
    "tokenized": [
        {"input_ids": [W1] * (i + 1), "attention_mask": [1] * (i + 1), "labels": [W1] * (i + 1)} for i in range(4)
    ],
}


def _recipe(tmp_path, data):
    path = tmp_path / "recipe.yaml"
    recipe = {
        "teacher": {"model_name_or_path": "t"},
        "student": {"init": "teacher_layers", "layers": [0]},
        "data": data,
        "args": {"output_dir": str(tmp_path / "out")},
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _jsonl(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("named", [False, True], ids=["auto", "named"])
@pytest.mark.parametrize("data_format", sorted(JSONL_ROWS))
def test_the_cli_recipe_loads_a_jsonl_file_of_each_format(tmp_path, data_format, named):
    from hf_distill.cli.train import load_data

    data_files = _jsonl(tmp_path, JSONL_ROWS[data_format])
    data = {"dataset": "json", "data_files": data_files, "format": data_format if named else "auto"}
    recipe = load_recipe(_recipe(tmp_path, {**data, "eval_fraction": 0.25}))
    tokenizer = tiny_tokenizer()
    train, evaluation, collator, _ = load_data(recipe, tokenizer)
    expected = tokenize_for_distillation(Dataset.from_list(JSONL_ROWS[data_format]), tokenizer, max_length=128)
    assert rows(train) + rows(evaluation) == rows(expected)  # the last quarter held out
    assert (len(train), len(evaluation)) == (3, 1) and evaluation.info.dataset_name == "rows.jsonl"
    assert isinstance(collator, DataCollatorForSeq2Seq)  # ragged rows are padded, labels with -100


def test_the_cli_recipe_truncates_to_data_max_length_and_names_bad_rows(tmp_path):
    from hf_distill.cli.train import load_data

    data_files = _jsonl(tmp_path, [{"prompt": "w1 w2", "completion": " w3 w4"}] * 3 + [{"prompt": "w1 w2 w3"}])
    recipe = load_recipe(_recipe(tmp_path, {"dataset": "json", "data_files": data_files, "max_length": 4}))
    with pytest.raises(ValueError, match="^data: Row 3: `completion` is missing \\(null\\); give it as text"):
        load_data(recipe, tiny_tokenizer())
    data_files = _jsonl(tmp_path, [{"prompt": "w1 w2", "completion": " w3 w4"}] * 4)
    train, _, _, _ = load_data(
        load_recipe(_recipe(tmp_path, {"dataset": "json", "data_files": data_files, "max_length": 4})),
        tiny_tokenizer(),
    )
    assert train[0]["input_ids"] == [BOS, W1, W2, W3] and train[0]["labels"] == [X, X, X, W3]


def test_the_cli_recipe_keeps_plain_text_in_blocks(tmp_path):
    from hf_distill.cli.train import load_data

    data_files = _jsonl(tmp_path, [{"text": "w1 w2 w3 w4", "prompt_id": 1}] * 2)
    recipe = load_recipe(_recipe(tmp_path, {"dataset": "json", "data_files": data_files, "block_size": 3}))
    train, evaluation, _, _ = load_data(recipe, tiny_tokenizer())
    # "w1 w2 w3 w4\n\nw1 w2 w3 w4" tokenized line by line (each line, the blank one too, starts with BOS), cut into
    # 3-token blocks: the 11 tokens give 3 blocks, the last one held out.
    assert train["input_ids"] == [[BOS, W1, W2], [W3, W4, BOS]] and evaluation["input_ids"] == [[BOS, W1, W2]]


@pytest.mark.parametrize(
    "data, task, message",
    [
        ({"dataset": "json", "format": "chat"}, "causal_lm", "data.format='chat'; use one of auto, tokenized"),
        ({"text_file": "x.txt", "format": "conversational"}, "causal_lm", "data.text_file is plain text"),
        ({"dataset": "csv", "format": "prompt_only"}, "sequence_classification", "is for causal_lm recipes"),
    ],
)
def test_the_recipe_refuses_a_format_it_cannot_read(tmp_path, data, task, message):
    path = _recipe(tmp_path, data)
    raw = yaml.safe_load(open(path))
    open(path, "w").write(yaml.safe_dump({**raw, "task": task}))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_the_format_can_be_given_on_the_command_line(tmp_path):
    from hf_distill.cli.recipe import parse_overrides

    path = _recipe(tmp_path, {"dataset": "json", "data_files": "rows.jsonl"})
    assert load_recipe(path).data.format == "auto"
    assert load_recipe(path, parse_overrides(["--data.format", "prompt_only"])).data.format == "prompt_only"


def test_prompt_length_makes_the_start_of_each_text_block_a_prompt(tmp_path):
    from hf_distill.cli.train import load_data

    data_files = _jsonl(tmp_path, [{"text": "w1 w2 w3 w4"}] * 2)
    data = {"dataset": "json", "data_files": data_files, "block_size": 3, "prompt_length": 2}
    train, evaluation, _, _ = load_data(load_recipe(_recipe(tmp_path, data)), tiny_tokenizer())
    # The blocks of the test above, their first 2 tokens labelled -100: the prompt an on-policy step continues.
    assert train["input_ids"] == [[BOS, W1, W2], [W3, W4, BOS]] and evaluation["input_ids"] == [[BOS, W1, W2]]
    assert train["labels"] == [[X, X, W2], [X, X, BOS]] and evaluation["labels"] == [[X, X, W2]]
    too_long = load_recipe(_recipe(tmp_path, {**data, "prompt_length": 3}))
    with pytest.raises(ValueError, match="^data: prompt_length=3 leaves no continuation in blocks of block_size=3"):
        load_data(too_long, tiny_tokenizer())
    formatted = _jsonl(tmp_path, [{"prompt": "w1", "completion": " w2"}] * 2)
    with pytest.raises(ValueError, match="prompt_length cuts prompts out of text blocks"):
        load_data(
            load_recipe(_recipe(tmp_path, {"dataset": "json", "data_files": formatted, "prompt_length": 1})),
            tiny_tokenizer(),
        )
