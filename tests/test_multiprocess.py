"""Two real processes (gloo) give the same step as one process on the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_parity.py")
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")


def _run(command, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
    single, double = str(tmp_path / "one" / "out.pt"), str(tmp_path / "two" / "out.pt")
    _run([sys.executable, SCRIPT, single, "4", "1"])
    launch = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, double, "2", "2"]
    _run(launch, {"ACCELERATE_USE_CPU": "1"})
    one, two = torch.load(single), torch.load(double)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(one["logs"], two["logs"]):
        for key in ("loss", "kd_loss", "ce_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
