"""On-policy distillation (issue 17): the schedule, prompts and scored batches; the first generated step's loss
against a hand-written reference for every divergence on both loss paths; bit-for-bit today's behaviour at 0; GA
invariance over ragged completions; PEFT and the shared base; teacher-generated steps; refusals; the eval metric;
the logs and the lineage."""

import copy
import math
import re

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from tiny_models import PARITY_ARGS, collate, llama, t5
from transformers import GenerationConfig

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.hub.card import render_card
from hf_distill.hub.licenses import decide
from hf_distill.losses import DIVERGENCES, per_token_divergence
from hf_distill.on_policy.generation import generate_completions
from hf_distill.on_policy.prompts import extract_prompts
from hf_distill.on_policy.schedule import OFF_POLICY, ON_POLICY, TEACHER_GENERATED, step_kind
from hf_distill.on_policy.scored_batch import scored_batch

PAD = 0
MAX_NEW = 5


def prompt_rows(n: int = 4, seed: int = 0, completion: bool = True) -> list[dict]:
    """Tokenized rows by hand: a prompt of 2-5 tokens (labels -100), a completion of 1-4 tokens, right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        p, c = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        ids = torch.randint(3, 97, (p + c,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:], "attention_mask": [1] * (p + c)})
    width = max(len(r["input_ids"]) for r in rows)
    for r in rows:
        pad = width - len(r["input_ids"])
        r["input_ids"] += [PAD] * pad
        r["labels"] += [-100] * pad
        r["attention_mask"] += [0] * pad
        if not completion:
            del r["labels"]
    return rows


def prompts_of(rows: list[dict]) -> list[list[int]]:
    return [[t for t, lab in zip(r["input_ids"], r["labels"]) if lab == -100 and t != PAD] for r in rows]


def greedy(model, prompts: list[list[int]], eos, max_new: int = MAX_NEW) -> list[list[int]]:
    """`model.generate` on the left-padded prompts; each completion cut after its first EOS."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=PAD,
            eos_token_id=eos,
        )[:, width:].tolist()  # fmt: skip
    model.train(was_training)
    completions = []
    for row in out:
        cut = next((i + 1 for i, t in enumerate(row) if t == eos), len(row))
        completions.append(row[:cut])
    return completions


def reference_kd(student, teacher, prompts, completions, loss="reverse_kl", temperature=1.0, beta=0.5, skew=0.1):
    """Teacher and student forward on each prompt + completion alone; the divergence at every position that predicts
    a completion token (EOS included), averaged over all of them, times T²."""
    total, count = 0.0, 0
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            seq = torch.tensor([p + c])
            s = student(input_ids=seq).logits[0, len(p) - 1 : len(p) + len(c) - 1]
            t = teacher(input_ids=seq).logits[0, len(p) - 1 : len(p) + len(c) - 1]
            total += per_token_divergence(s, t, loss, temperature, beta, skew).sum().item()
            count += len(c)
    return temperature**2 * total / count


def ragged_eos(student, prompts) -> int:
    """A token the student's greedy completions reach at different steps (or not at all): used as EOS, it makes the
    completions of one batch of different lengths."""
    free = greedy(student, prompts, eos=None)
    for t in sorted({t for row in free for t in row}):
        lengths = {row.index(t) if t in row else MAX_NEW for row in free}
        if len(lengths) > 1 and min(lengths) < MAX_NEW - 1:
            return t
    raise AssertionError(f"no token makes these completions ragged: {free}")


def make_trainer(training_args, student, teacher, rows, **fields):
    plain_list = fields.pop("plain_list", False)  # a list of rows: no column names to check at construction
    defaults = {"per_device_train_batch_size": 4, "generation_temperature": 0.0, "max_new_tokens": MAX_NEW}
    args = training_args(**{**PARITY_ARGS, "max_steps": 1, **defaults, **fields})
    data = rows if plain_list else Dataset.from_list(rows)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=collate
    )


def train_logs(trainer) -> list[dict]:
    trainer.train()
    return [e for e in trainer.state.log_history if "loss" in e]


# ---- pure pieces ----


def test_schedule_is_a_smooth_round_robin_from_step_zero():
    assert [step_kind(s, 0.5) for s in range(6)] == [OFF_POLICY, ON_POLICY] * 3
    assert {step_kind(s, 0.0) for s in range(50)} == {OFF_POLICY}
    assert {step_kind(s, 1.0) for s in range(50)} == {ON_POLICY}
    assert {step_kind(s, 0.0, 1.0) for s in range(50)} == {TEACHER_GENERATED}
    assert [step_kind(s, 0.25, 0.25) for s in range(4)] == [OFF_POLICY, ON_POLICY, TEACHER_GENERATED, OFF_POLICY]
    kinds = [step_kind(s, 0.3, 0.1) for s in range(1000)]
    assert (kinds.count(ON_POLICY), kinds.count(TEACHER_GENERATED)) == (300, 100)
    # computed from step 0 whatever was asked before: a resumed run continues the same sequence
    assert step_kind(999, 0.3, 0.1) == kinds[999]


def test_prompts_are_the_leading_minus_100_run_left_padded_whatever_the_padding_side():
    batch = {
        "input_ids": torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 0, 0]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, -100, 6, 7, 8], [-100, -100, -100, 12, -100, -100]]),
    }
    prompts = extract_prompts(batch, pad_token_id=0)
    assert prompts.input_ids.tolist() == [[0, 0, 5], [9, 10, 11]]
    assert prompts.attention_mask.tolist() == [[0, 0, 1], [1, 1, 1]]
    del batch["labels"]  # prompt-only: the whole real row
    assert extract_prompts(batch, 0).input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 12]]
    with pytest.raises(ValueError, match="Row 0 of this batch has no prompt"):
        extract_prompts({"input_ids": torch.tensor([[4, 5]]), "labels": torch.tensor([[4, 5]])}, 0)


def test_scored_batch_cuts_after_the_first_eos_and_labels_the_completion_only():
    prompts = extract_prompts(
        {"input_ids": torch.tensor([[0, 5], [6, 7]]), "attention_mask": torch.tensor([[0, 1], [1, 1]])}, 0
    )
    completions = torch.tensor([[3, 2, 9], [4, 4, 4]])  # EOS = 2: the first row stops after 2 tokens
    batch = scored_batch(prompts, completions, stop_ids=[2], pad_token_id=0, max_new_tokens=3)
    assert batch.input_ids.tolist() == [[5, 3, 2, 0, 0], [6, 7, 4, 4, 4]]
    assert batch.labels.tolist() == [[-100, 3, 2, -100, -100], [-100, -100, 4, 4, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.completion_lengths.tolist() == [2, 3] and batch.hit_max.tolist() == [False, True]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"on_policy_fraction": 1.5}, "on_policy_fraction=1.5 must lie in [0, 1]"),
        ({"teacher_generation_fraction": -0.1}, "teacher_generation_fraction=-0.1 must lie in [0, 1]"),
        ({"on_policy_fraction": 0.7, "teacher_generation_fraction": 0.4}, "on_policy_fraction=0.7 + teacher_gen"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
        ({"generation_temperature": -1.0}, "generation_temperature=-1.0 must be >= 0"),
        ({"generation_top_p": 0.0}, "generation_top_p=0.0 must lie in (0, 1]"),
        ({"generation_top_k": -2}, "generation_top_k=-2 must be >= 0"),
        ({"generation_backend": "vllm"}, "generation_backend='vllm' is not supported"),
        ({"generation_kwargs": {"top_k": 4}}, "generation_kwargs sets 'top_k'; use the field generation_top_k"),
        ({"generation_kwargs": {"colour": 1}}, "generation_kwargs: 'colour' is not a transformers.GenerationConfig"),
        ({"generation_kwargs": "{oops"}, "generation_kwargs='{oops' is not valid JSON"),
        ({"max_new_tokens": 2.5}, "max_new_tokens=2.5 is not an integer"),
        ({"on_policy_fraction": "half"}, "on_policy_fraction='half' is not a number"),
        ({"log_completions": "yes"}, "log_completions='yes' is not a boolean"),
        ({"eval_on_policy": 1}, "eval_on_policy=1 is not a boolean"),
    ],
)
def test_bad_on_policy_fields_are_refused_naming_field_and_value(tmp_path, values, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        DistillationConfig(output_dir=str(tmp_path), **values)


def test_generation_kwargs_from_the_command_line_are_json(tmp_path):
    args = DistillationConfig(output_dir=str(tmp_path), generation_kwargs='{"repetition_penalty": 1.2}')
    assert args.generation_kwargs == {"repetition_penalty": 1.2}


# ---- refusals at construction ----


def test_a_teacher_cache_is_refused(training_args):
    with pytest.raises(ValueError, match="a teacher cache cannot grade new text"):
        make_trainer(training_args, llama(), None, prompt_rows(), on_policy_fraction=0.5, teacher_cache="some/cache")


def test_an_encoder_decoder_student_is_refused(training_args):
    with pytest.raises(ValueError, match="decoder-only causal LM student; T5ForConditionalGeneration is not one"):
        make_trainer(training_args, t5(), t5(), prompt_rows(), on_policy_fraction=1.0)


def test_prompt_only_rows_with_off_policy_steps_are_refused(training_args):
    rows = prompt_rows(completion=False)
    with pytest.raises(ValueError, match="no `labels` column .* 50% of steps are off-policy"):
        make_trainer(training_args, llama(), llama(64, 2), rows, on_policy_fraction=0.5)
    # the same rows as a plain list (no column names to read): refused at the first off-policy step
    trainer = make_trainer(training_args, llama(), llama(64, 2), rows, on_policy_fraction=0.5, plain_list=True)
    with pytest.raises(ValueError, match="Optimizer step 0 is off-policy but its batch has no label to learn"):
        trainer.train()
    # prompt-only rows as hf_distill.data writes them: a labels column of -100 only (nothing to learn off-policy)
    all_prompt = [{**r, "labels": [-100] * len(r["input_ids"])} for r in rows]
    trainer = make_trainer(training_args, llama(), llama(64, 2), all_prompt, on_policy_fraction=0.5)
    with pytest.raises(ValueError, match="Optimizer step 0 is off-policy but its batch has no label to learn"):
        trainer.train()
    # fully on-policy, prompt-only rows train
    make_trainer(training_args, llama(), llama(64, 2), rows, on_policy_fraction=1.0)


def test_kd_weight_zero_is_refused(training_args):
    with pytest.raises(ValueError, match="kd_weight=0: generated steps have no labels"):
        make_trainer(
            training_args, llama(), llama(64, 2), prompt_rows(), on_policy_fraction=0.5, kd_weight=0.0, ce_weight=1.0
        )


# ---- the first generated step against a hand-written reference ----


@pytest.mark.parametrize("chunk", [0, 8], ids=["logits", "chunked"])
@pytest.mark.parametrize(
    "loss", [pytest.param(d, marks=[] if d == "reverse_kl" else pytest.mark.slow) for d in DIVERGENCES]
)
def test_first_on_policy_step_kd_loss_equals_a_hand_written_reference(training_args, loss, chunk):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    rows = prompt_rows()
    eos = ragged_eos(student, prompts_of(rows))
    settings = {"kd_loss": loss, "kd_temperature": 2.0, "jsd_beta": 0.3, "skew_alpha": 0.2, "ce_weight": 0.5}
    completions = greedy(student, prompts_of(rows), eos)
    assert len({len(c) for c in completions}) > 1  # ragged
    expected = reference_kd(student, teacher, prompts_of(rows), completions, loss, 2.0, 0.3, 0.2)
    trainer = make_trainer(
        training_args, student, teacher, rows, on_policy_fraction=1.0, kd_chunk_size=chunk,
        generation_kwargs={"eos_token_id": eos}, **settings,
    )  # fmt: skip
    assert trainer.kd_chunk_size == chunk
    (log,) = train_logs(trainer)
    assert log["kd_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert "ce_loss" not in log  # no CE term on a generated step (ce_weight applies off-policy only)
    assert log["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert log["on_policy_steps"] == 1
    assert log["generated_length"] == pytest.approx(sum(map(len, completions)) / 4)


def test_teacher_generated_step_scores_the_teachers_greedy_completions(training_args):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    rows = prompt_rows()
    completions = greedy(teacher, prompts_of(rows), eos=2)
    expected = reference_kd(student, teacher, prompts_of(rows), completions, "forward_kl")
    trainer = make_trainer(training_args, student, teacher, rows, teacher_generation_fraction=1.0)
    (log,) = train_logs(trainer)
    assert log["kd_loss"] == pytest.approx(expected, rel=1e-5)
    assert (log["teacher_generated_steps"], log["on_policy_steps"]) == (1, 0)


# ---- schedules and today's behaviour ----


def test_a_teacher_identical_to_the_student_gives_zero_kd_on_generated_steps(training_args):
    torch.manual_seed(0)
    student = llama(32, 1)
    logs = train_logs(
        make_trainer(training_args, student, copy.deepcopy(student), prompt_rows(), on_policy_fraction=1.0)
    )
    assert logs[0]["kd_loss"] == pytest.approx(0.0, abs=1e-6)


def test_fraction_zero_is_todays_training_bit_for_bit(training_args, tmp_path):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    start = copy.deepcopy(student.state_dict())
    rows = prompt_rows(8)
    plain = make_trainer(
        training_args, student, teacher, rows, max_steps=3, per_device_train_batch_size=2, ce_weight=0.5
    )
    plain.train()
    today = {k: v.clone() for k, v in student.state_dict().items()}
    student.load_state_dict(start)
    fields = {"on_policy_fraction": 0.0, "max_new_tokens": 3, "generation_temperature": 0.7, "log_completions": True}
    zero = make_trainer(
        training_args, student, teacher, rows, max_steps=3, per_device_train_batch_size=2, ce_weight=0.5,
        output_dir=tmp_path / "zero", **fields,
    )  # fmt: skip
    zero.train()
    for name, value in student.state_dict().items():
        assert torch.equal(value, today[name]), name
    assert [e["loss"] for e in zero.state.log_history if "loss" in e] == [
        e["loss"] for e in plain.state.log_history if "loss" in e
    ]
    assert not any("on_policy_steps" in e for e in zero.state.log_history)


def test_half_alternates_off_and_on_and_the_logs_carry_counts_lengths_and_timers(training_args, caplog):
    torch.manual_seed(0)
    rows = prompt_rows(8)
    trainer = make_trainer(
        training_args, llama(32, 1), llama(64, 2), rows, max_steps=4, per_device_train_batch_size=2,
        on_policy_fraction=0.5, ce_weight=0.5, generation_temperature=1.0, log_completions=True,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="hf_distill"):
        logs = train_logs(trainer)
    assert [e["on_policy_steps"] for e in logs] == [0, 1, 0, 1]
    assert ["ce_loss" in e for e in logs] == [True, False, True, False]  # CE on off-policy steps only
    for log in logs:
        assert log["teacher_generated_steps"] == 0
        assert all(log[t] >= 0 for t in ("time_generation", "time_teacher", "time_student"))
    assert [log["time_generation"] > 0 for log in logs] == [False, True, False, True]
    on = logs[1]
    assert 1 <= on["generated_length"] <= MAX_NEW and 0 <= on["hit_max_new_tokens"] <= 1
    assert "generated completion" in caplog.text
    assert "ce_weight applies on off-policy steps only" in trainer.lineage().objective["description"]
    assert trainer.lineage().objective["on_policy_fraction"] == 0.5
    assert trainer.lineage().objective["generation"]["max_new_tokens"] == MAX_NEW
    lineage = trainer.lineage()  # the card's objective row and its `distillation:` metadata carry them too
    policy = decide(lineage.teacher["license"], "me/student", acknowledge_teacher_license=True)
    card = render_card(lineage, policy, "me/student")
    assert "the student's own completions on 50% of steps" in card and "on_policy_fraction: 0.5" in card


def test_sampling_is_seeded_per_step_and_leaves_the_training_rng_alone(training_args, tmp_path):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        student = llama(32, 1)
        trainer = make_trainer(
            training_args, student, llama(64, 2), prompt_rows(8), max_steps=2, per_device_train_batch_size=4,
            on_policy_fraction=1.0, generation_temperature=1.0, output_dir=tmp_path / name,
        )  # fmt: skip
        trainer.train()
        runs.append(student.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key
    prompts = extract_prompts(collate(prompt_rows()), PAD)
    config = GenerationConfig(max_new_tokens=4, do_sample=True, pad_token_id=PAD)
    state = torch.random.get_rng_state()
    first = generate_completions(student.eval(), prompts, config, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the training RNG is untouched
    assert torch.equal(generate_completions(student, prompts, config, seed=7), first)


def test_gradient_accumulation_is_exact_over_ragged_completions(training_args, tmp_path):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    rows = prompt_rows(8)
    eos = ragged_eos(student, prompts_of(rows[:4]))
    start = copy.deepcopy(student.state_dict())
    results = []
    for batch, ga in ((4, 1), (2, 2)):
        student.load_state_dict(start)
        trainer = make_trainer(
            training_args, student, teacher, rows, max_steps=2, per_device_train_batch_size=batch,
            gradient_accumulation_steps=ga, on_policy_fraction=1.0, kd_loss="reverse_kl",
            generation_kwargs={"eos_token_id": eos}, output_dir=tmp_path / f"b{batch}",
        )  # fmt: skip
        results.append((train_logs(trainer), copy.deepcopy(student.state_dict())))
    (logs_a, params_a), (logs_b, params_b) = results
    assert 0 < logs_a[0]["hit_max_new_tokens"] < 1 or logs_a[0]["generated_length"] < MAX_NEW  # ragged
    for a, b in zip(logs_a, logs_b):
        assert b["kd_loss"] == pytest.approx(a["kd_loss"], rel=1e-5)
        assert b["generated_length"] == pytest.approx(a["generated_length"])
    for name, value in params_a.items():
        torch.testing.assert_close(params_b[name], value, rtol=1e-5, atol=1e-6, msg=name)


# ---- PEFT and the shared base ----


def test_a_lora_student_trains_on_policy(training_args):
    torch.manual_seed(0)
    trainer = DistillationTrainer(
        model=llama(32, 1),
        teacher_model=llama(64, 2),
        args=training_args(**{**PARITY_ARGS, "max_steps": 2}, per_device_train_batch_size=4, on_policy_fraction=1.0,
                           generation_temperature=0.0, max_new_tokens=MAX_NEW),
        train_dataset=Dataset.from_list(prompt_rows(8)),
        data_collator=collate,
        peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    logs = train_logs(trainer)
    assert [e["on_policy_steps"] for e in logs] == [1, 1] and all(math.isfinite(e["kd_loss"]) for e in logs)
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed


def test_shared_base_teacher_on_policy_and_teacher_generated(training_args):
    torch.manual_seed(0)
    for fields in ({"on_policy_fraction": 1.0}, {"teacher_generation_fraction": 1.0}):
        trainer = DistillationTrainer(
            model=llama(32, 1),
            teacher_model="base",
            args=training_args(**{**PARITY_ARGS, "max_steps": 1}, per_device_train_batch_size=4,
                               generation_temperature=0.0, max_new_tokens=MAX_NEW, **fields),
            train_dataset=Dataset.from_list(prompt_rows()),
            data_collator=collate,
            peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
        )  # fmt: skip
        (log,) = train_logs(trainer)
        assert log["kd_loss"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at zero: the student is its base


# ---- evaluation ----


def test_eval_on_policy_reverse_kl_equals_a_reference(training_args):
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    rows = prompt_rows(4, seed=3)
    args = training_args(per_device_eval_batch_size=2, eval_on_policy=True, max_new_tokens=MAX_NEW)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=Dataset.from_list(rows), data_collator=collate
    )
    metrics = trainer.evaluate()
    eos = student.generation_config.eos_token_id
    expected = reference_kd(student, teacher, prompts_of(rows), greedy(student, prompts_of(rows), eos), "reverse_kl")
    assert metrics["eval_on_policy_reverse_kl"] == pytest.approx(expected, rel=1e-5)
    assert "eval_kd_loss" in metrics  # the existing metrics are still there
    # default: on only when on_policy_fraction > 0
    args = training_args(per_device_eval_batch_size=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=Dataset.from_list(rows), data_collator=collate
    )
    assert "eval_on_policy_reverse_kl" not in trainer.evaluate()


def test_compare_with_teacher_in_an_on_policy_run_compares_a_task_metric_not_the_students_own(training_args):
    # The on-policy metric scores the student against the teacher: the teacher has none to compare it with.
    torch.manual_seed(0)
    student, teacher = llama(32, 1), llama(64, 2)
    rows = prompt_rows(4, seed=3)
    args = training_args(per_device_eval_batch_size=2, eval_on_policy=True, max_new_tokens=MAX_NEW)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=Dataset.from_list(rows), data_collator=collate
    )
    comparison = trainer.compare_with_teacher()
    assert comparison["metric"] is None or comparison["metric"]["name"] != "on_policy_reverse_kl"


def test_generation_stops_where_the_students_generate_stops():
    # A chat model's generation config lists its end-of-turn token beside EOS; the tokenizer knows only EOS.
    from types import SimpleNamespace

    from hf_distill.on_policy.steps import _special_ids

    student = llama()
    student.generation_config.eos_token_id = [2, 7]
    tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    assert _special_ids(student, tokenizer, {}) == (0, [2, 7])  # pad from the tokenizer, stops from generate's config
    assert _special_ids(student, tokenizer, {"eos_token_id": 5}) == (0, 5)  # generation_kwargs first
    student.generation_config.eos_token_id = None
    assert _special_ids(student, tokenizer, {}) == (0, 2)
