"""A finished CPU (gloo) run destroys its process group at exit, before the interpreter tears down (where gloo's
threads would abort the process after a successful run: hf_distill.training.process_group)."""

import os
import subprocess
import sys
import textwrap

import pytest

MODULE = os.path.join(os.path.dirname(__file__), "..", "hf_distill", "training", "process_group.py")

SCRIPT = textwrap.dedent(
    """
    import atexit, importlib.util, sys
    import torch.distributed as dist

    # The module alone (it imports torch only), not the package: hf_distill's import is the slow part of a process.
    spec = importlib.util.spec_from_file_location("process_group", sys.argv[3])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    destroy_gloo_group_at_exit = module.destroy_gloo_group_at_exit

    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    # Registered first, so it runs last (atexit is last-in, first-out): after hf_distill's handler.
    atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
    destroy_gloo_group_at_exit()
    destroy_gloo_group_at_exit()  # registers once
    if sys.argv[2] == "ended":  # a script that ended the group itself (`trainer.end()`) is left alone
        dist.destroy_process_group()
    """
)


def _run(tmp_path, mode):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store"), mode, MODULE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow  # a process of its own (a few seconds)
def test_gloo_group_is_destroyed_before_interpreter_exit(tmp_path):
    assert "initialized at exit: False" in _run(tmp_path, "running")


@pytest.mark.slow
def test_a_group_destroyed_by_the_script_is_left_alone(tmp_path):
    assert "initialized at exit: False" in _run(tmp_path, "ended")


def test_nothing_is_registered_without_a_process_group():
    from hf_distill.training import process_group

    process_group.destroy_gloo_group_at_exit()  # no group in this test process
    assert process_group._registered is False
