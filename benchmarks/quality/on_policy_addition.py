"""GKD (Agarwal et al., ICLR 2024) on CPU: on-policy distillation against off-policy distillation of the same student,
on a generation task where the student's own mistakes matter: multi-digit addition written out digit by digit.

    python benchmarks/quality/on_policy_addition.py --json addition.json     # 3 seeds, the defaults below
    python benchmarks/quality/on_policy_addition.py --student-from-teacher 0 --warm-start-steps 600 \\
        --student-steps 300 --student-lr 3e-3                                # a 1-layer student, warm-started
    python benchmarks/quality/on_policy_addition.py --seeds 0 --digits 2 --teacher-steps 20 --warm-start-steps 2 \\
        --student-steps 2 --batch 8 --train-problems 16 --eval-problems 8     # smoke size (numbers meaningless)

Task: `a+b=` with `a`, `b` zero-padded to `--digits` digits and written least-significant digit first, then the sum
(`--digits + 1` digits, also least-significant first) and an end-of-sequence token. A digit of the sum depends on the
carry, which a model most easily reads off the digits it has already written, so one wrong digit tends to make the
next one wrong too (exposure bias). The vocabulary is 14 characters, tokenized by a character-level tokenizer built
here (no download).

Teacher: a tiny Llama (hidden 64, 3 layers, 0.20M parameters) built from a config and trained by this script on fresh
random problems (cross-entropy on the sum's tokens, plain PyTorch loop) to near-perfect exact-match accuracy, which is
reported. Student: the teacher's layers 0 and 2 (`--student-from-teacher`, DistilBERT-style, 0.13M parameters; its
weights derive from the teacher's), which starts far from the teacher and recovers within ~100 steps. Optionally
(`--warm-start-steps`, as GKD distils students first fine-tuned on the task) each seed first trains it off-policy.
A 1-layer student (the second command) is nearer GKD's capacity gap, but small models learn addition after a plateau
of uneven length: whether it gets past it within the budget varies from seed to seed.
The three arms then continue from that same student for the same steps, batch, learning rate and divergence
(`--kd-loss`, reverse KL by default, the usual on-policy choice), all with `DistillationTrainer` on the same rows
(training prompts with the teacher's greedy answers as completions):
  off-policy   on_policy_fraction=0: KD on the teacher-written answers (GKD's "supervised KD" on teacher outputs)
  mixed 0.5    on_policy_fraction=0.5: every other step the student samples its own completions
  on-policy    on_policy_fraction=1.0: the student samples (temperature 1), the teacher grades every token
A seed sets the data order and the sampling. Scores on held-out problems: exact-match accuracy of the student's greedy
answers, and the teacher's per-token reverse KL, KL(p_student ‖ p_teacher) at T=1, on the student's own greedy
completions (up to and including EOS), averaged over generated tokens. Mean ± standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses.divergences import reverse_kl
from hf_distill.modeling.student_init import student_from_teacher_layers

VOCAB = ["<pad>", "<eos>", *"0123456789", "+", "="]
PAD, EOS = 0, 1
ARMS = {"off-policy": 0.0, "mixed 0.5": 0.5, "on-policy": 1.0}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over `VOCAB` (every character is one token), built locally."""
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(VOCAB)}, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def problems(count: int, digits: int, generator: torch.Generator) -> tuple[list[str], list[str]]:
    """`count` random problems: prompts `"a+b="` and answers (the sum), every number least-significant digit first."""
    top = 10**digits
    pairs = torch.randint(0, top, (count, 2), generator=generator).tolist()
    prompts = [f"{str(a).zfill(digits)[::-1]}+{str(b).zfill(digits)[::-1]}=" for a, b in pairs]
    answers = [str(a + b).zfill(digits + 1)[::-1] for a, b in pairs]
    return prompts, answers


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Equal-length texts -> token ids of shape `(B, L)`."""
    return torch.tensor(tokenizer(texts, add_special_tokens=False)["input_ids"])


def llama(hidden: int, layers: int, heads: int, length: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=length,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    return model


def train_teacher(model, tokenizer, digits: int, steps: int, batch: int, lr: float, seed: int) -> float:
    """Cross-entropy on the sum's tokens over fresh random problems; returns the seconds it took.

    A plain loop rather than `transformers.Trainer`: every batch is new problems drawn on the fly, which an
    iterable dataset could do too but with more code than the loop itself, and the teacher is not what is measured.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    prompt_length = 2 * digits + 2
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        prompts, answers = problems(batch, digits, generator)
        ids = torch.cat([encode(tokenizer, [p + a for p, a in zip(prompts, answers)]), torch.full((batch, 1), EOS)], 1)
        labels = ids.clone()
        labels[:, :prompt_length] = -100  # loss on the sum and EOS only
        model(input_ids=ids, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def greedy(model, prompt_ids: torch.Tensor, digits: int, batch: int = 256) -> torch.Tensor:
    """Greedy completions of equal-length prompts `(B, P)` -> `(B, digits + 2)` new tokens, PAD after EOS."""
    model.eval()
    out = []
    for i in range(0, len(prompt_ids), batch):
        chunk = prompt_ids[i : i + batch]
        generated = model.generate(
            input_ids=chunk,
            attention_mask=torch.ones_like(chunk),
            max_new_tokens=digits + 2,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )[:, chunk.shape[1] :]
        out.append(torch.nn.functional.pad(generated, (0, digits + 2 - generated.shape[1]), value=PAD))
    return torch.cat(out)


def completion_mask(completions: torch.Tensor) -> torch.Tensor:
    """`(B, C)` bool: the generated tokens up to and including the first EOS (all of them when none)."""
    eos_before = (completions == EOS).int().cumsum(1) - (completions == EOS).int()
    return eos_before == 0


@torch.no_grad()
def evaluate(student, teacher, tokenizer, prompts: list[str], answers: list[str], digits: int) -> dict[str, float]:
    """Exact-match accuracy of the student's greedy answers, and the teacher's per-token reverse KL on them.

    Returns:
        `{"accuracy": share of exact answers followed by EOS, "reverse_kl": KL(p_s ‖ p_t) at T=1 averaged over the
        generated tokens up to and including EOS, "generated_tokens": their count}`.
    """
    prompt_ids = encode(tokenizer, prompts)  # (B, P)
    completions = greedy(student, prompt_ids, digits)  # (B, C)
    target = torch.cat([encode(tokenizer, answers), torch.full((len(answers), 1), EOS)], 1)  # (B, digits + 2)
    accuracy = (completions == target).all(1).float().mean().item()
    mask = completion_mask(completions)  # (B, C)
    ids = torch.cat([prompt_ids, completions], 1)  # (B, P + C); PAD after EOS is masked out below
    start = prompt_ids.shape[1] - 1  # logits at position t predict token t + 1
    total, count = 0.0, 0
    for i in range(0, len(ids), 256):
        chunk, chunk_mask = ids[i : i + 256], mask[i : i + 256]
        s = student(input_ids=chunk).logits[:, start:-1]  # (b, C, V)
        t = teacher(input_ids=chunk).logits[:, start:-1]
        total += reverse_kl(s[chunk_mask].float(), t[chunk_mask].float()).sum().item()
        count += int(chunk_mask.sum())
    return {"accuracy": accuracy, "reverse_kl": total / count, "generated_tokens": count}


def teacher_rows(teacher, tokenizer, prompts: list[str], digits: int) -> Dataset:
    """Training rows: each prompt with the teacher's greedy answer (through its first EOS); labels -100 on the
    prompt. On-policy steps read only the prompt (the leading run of -100 labels)."""
    prompt_ids = encode(tokenizer, prompts)
    completions = greedy(teacher, prompt_ids, digits)
    mask = completion_mask(completions)
    rows = {"input_ids": [], "labels": []}
    for prompt, completion, keep in zip(prompt_ids.tolist(), completions.tolist(), mask.tolist()):
        answer = [token for token, k in zip(completion, keep) if k]
        rows["input_ids"].append(prompt + answer)
        rows["labels"].append([-100] * len(prompt) + answer)
    rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
    return Dataset.from_dict(rows)


def run_arm(
    student, teacher, tokenizer, rows: Dataset, fraction: float, steps: int, args, seed: int, out: str
) -> dict:
    """Trains `student` in place with `DistillationTrainer` for `steps` optimizer steps; returns the wall time."""
    config = DistillationConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=args.batch,
        learning_rate=args.student_lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
        weight_decay=0.0, save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        seed=seed, data_seed=seed, kd_loss=args.kd_loss, on_policy_fraction=fraction,
        max_new_tokens=args.digits + 2, generation_temperature=args.generation_temperature, preflight="off",
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=rows, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),  # pads labels with -100 too (any model)
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return {"train_seconds": time.perf_counter() - start}


def run_seed(seed: int, teacher, tokenizer, rows: Dataset, held_out, args) -> dict[str, dict]:
    """Every arm of one seed: its held-out scores and training time."""
    torch.manual_seed(seed)
    if args.student_from_teacher:  # a DistilBERT/Minitron-style student: some of the teacher's layers
        initial = student_from_teacher_layers(teacher, args.student_from_teacher)
    else:
        initial = llama(args.student_hidden, args.student_layers, args.student_heads, 4 * args.digits + 4)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        if args.warm_start_steps:  # GKD starts every arm from the same supervised student; ours: off-policy KD
            run_arm(initial, teacher, tokenizer, rows, 0.0, args.warm_start_steps, args, seed, out)
        results["start"] = evaluate(initial, teacher, tokenizer, *held_out, args.digits)
        for arm, fraction in ARMS.items():
            student = copy.deepcopy(initial)
            timing = run_arm(student, teacher, tokenizer, rows, fraction, args.student_steps, args, seed, out)
            scores = evaluate(student, teacher, tokenizer, *held_out, args.digits)
            results[arm] = {**scores, **timing, "parameters": sum(p.numel() for p in student.parameters())}
    return results


def _cell(values: list[float], digits: int, scale: float = 1.0) -> str:
    values = [v * scale for v in values]
    mean = statistics.mean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def run(args) -> dict:
    """The whole benchmark; returns the numbers the table shows (and more), JSON-serialisable."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer = build_tokenizer()
    torch.manual_seed(args.teacher_seed)
    teacher = llama(args.teacher_hidden, args.teacher_layers, args.teacher_heads, 4 * args.digits + 4)
    teacher_seconds = train_teacher(
        teacher, tokenizer, args.digits, args.teacher_steps, args.teacher_batch, args.teacher_lr, args.teacher_seed
    )
    generator = torch.Generator().manual_seed(10_000 + args.teacher_seed)  # problems apart from the teacher's stream
    held_out = problems(args.eval_problems, args.digits, generator)
    train_prompts, _ = problems(args.train_problems, args.digits, generator)
    teacher_scores = evaluate(teacher, teacher, tokenizer, *held_out, args.digits)
    rows = teacher_rows(teacher, tokenizer, train_prompts, args.digits)
    print(
        f"teacher: {sum(p.numel() for p in teacher.parameters()) / 1e3:.0f}k parameters, held-out exact match "
        f"{100 * teacher_scores['accuracy']:.1f}% after {args.teacher_steps} steps ({teacher_seconds:.0f} s)",
        flush=True,
    )
    seeds = {}
    for seed in args.seeds:
        seeds[seed] = run_seed(seed, teacher, tokenizer, rows, held_out, args)
        shown = ", ".join(
            f"{arm} {100 * r['accuracy']:.1f}% / {r['reverse_kl']:.3f}" for arm, r in seeds[seed].items()
        )
        print(f"seed {seed}: exact match / reverse KL: {shown} ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = {}
    for arm in ARMS:
        accuracy = [seeds[s][arm]["accuracy"] for s in args.seeds]
        kl = [seeds[s][arm]["reverse_kl"] for s in args.seeds]
        summary[arm] = {
            "on_policy_fraction": ARMS[arm],
            "accuracy_mean": statistics.mean(accuracy),
            "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
            "reverse_kl_mean": statistics.mean(kl),
            "reverse_kl_std": statistics.stdev(kl) if len(kl) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(seeds[s][arm]["train_seconds"] for s in args.seeds),
        }
    return {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "teacher": {
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "accuracy": teacher_scores["accuracy"],
            "train_seconds": teacher_seconds,
        },
        "student_parameters": seeds[args.seeds[0]]["off-policy"]["parameters"],
        "seeds": {str(s): r for s, r in seeds.items()},
        "arms": summary,
        "seconds": time.perf_counter() - start,
    }


def print_table(result: dict) -> None:
    settings, seeds = result["settings"], list(result["seeds"].values())
    print(
        f"\n{settings['digits']}-digit addition; teacher {result['teacher']['parameters'] / 1e3:.0f}k parameters "
        f"({100 * result['teacher']['accuracy']:.1f}% exact), student {result['student_parameters'] / 1e3:.0f}k; "
        f"{settings['warm_start_steps']} off-policy warm-start steps, then {settings['student_steps']} steps × "
        f"{settings['batch']} prompts per arm, kd_loss={settings['kd_loss']}; "
        f"{settings['eval_problems']} held-out problems; seeds {settings['seeds']} (mean ± std)\n"
    )
    print("| arm | on_policy_fraction | exact match | reverse KL on own greedy completions | train time |")
    print("|---|---|---|---|---|")
    teacher = result["teacher"]
    print(f"| teacher | | {100 * teacher['accuracy']:.1f}% | 0 | {teacher['train_seconds']:.0f} s |")
    accuracy = [run["start"]["accuracy"] for run in seeds]
    kl = [run["start"]["reverse_kl"] for run in seeds]
    print(f"| student at the start (every arm starts here) | | {_cell(accuracy, 1, 100)}% | {_cell(kl, 3)} | |")
    for arm, fraction in ARMS.items():
        accuracy = [run[arm]["accuracy"] for run in seeds]
        kl = [run[arm]["reverse_kl"] for run in seeds]
        seconds = result["arms"][arm]["train_seconds_mean"]
        print(f"| student, {arm} | {fraction:g} | {_cell(accuracy, 1, 100)}% | {_cell(kl, 3)} | {seconds:.0f} s |")
    for arm in ("on-policy", "mixed 0.5"):
        wins = sum(run[arm]["accuracy"] > run["off-policy"]["accuracy"] for run in seeds)
        lower = sum(run[arm]["reverse_kl"] < run["off-policy"]["reverse_kl"] for run in seeds)
        print(
            f"\n{arm} vs off-policy, of {len(seeds)} seeds: higher exact match in {wins}, lower reverse KL in {lower}",
            end="",
        )
    print(f"\n\n{result['seconds']:.0f} s in all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--teacher-hidden", type=int, default=64)
    parser.add_argument("--teacher-layers", type=int, default=3)
    parser.add_argument("--teacher-heads", type=int, default=4)
    parser.add_argument("--teacher-steps", type=int, default=900)
    parser.add_argument("--teacher-batch", type=int, default=128)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--teacher-seed", type=int, default=0)
    parser.add_argument(
        "--student-from-teacher", type=int, nargs="*", default=[0, 2],
        help="teacher layers the student starts from; none: a fresh student of --student-hidden/--student-layers",
    )  # fmt: skip
    parser.add_argument("--student-hidden", type=int, default=48)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--student-heads", type=int, default=4)
    parser.add_argument(
        "--warm-start-steps", type=int, default=0,
        help="off-policy KD steps every arm of a seed starts from (GKD distils a supervised student); 0: none",
    )  # fmt: skip
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--student-lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=64, help="prompts per student step")
    parser.add_argument("--kd-loss", default="reverse_kl")
    parser.add_argument("--generation-temperature", type=float, default=1.0, help="student sampling; 0 = greedy")
    parser.add_argument("--train-problems", type=int, default=4096, help="training prompts (teacher-answered)")
    parser.add_argument("--eval-problems", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the same numbers on any machine)")
    parser.add_argument("--json", help="also write the numbers here as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
