"""The student's card: Hub metadata conventions, the lineage section, golden output, merging, and the template shipped
inside the wheel."""

import copy
import glob
import json
import os
import subprocess
import sys

import pytest

from hf_distill.hub.card import SECTION_END, SECTION_START, base_model, render_card, split_card
from hf_distill.hub.licenses import decide
from hf_distill.hub.lineage import Lineage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
TEACHER_SHA = "0123456789abcdef0123456789abcdef01234567"
INIT_SHA = "89abcdef0123456789abcdef0123456789abcdef"

RECORD = {
    "schema": 1,
    "teacher": {
        "name": "acme/teacher-7b",
        "source": "hub",
        "revision": TEACHER_SHA,
        "weights_bytes": 1_400_000_000,
        "license": {"id": "apache-2.0"},
        "kind": "model",
        "architecture": "LlamaForCausalLM",
        "parameters": 700_000_000,
        "adapter": None,
    },
    "student": {
        "init": {"kind": "pretrained", "name": "acme/student-base", "source": "hub", "revision": INIT_SHA},
        "architecture": "LlamaForCausalLM",
        "parameters": 120_000_000,
        "adapter": None,
    },
    "objective": {
        "description": "loss = 1·[4 (T²) · forward_kl at T=2], averaged over valid tokens of each optimizer step",
        "kd_loss": "forward_kl",
        "kd_temperature": 2.0,
        "kd_temperature_scaling": True,
        "jsd_beta": 0.5,
        "skew_alpha": 0.1,
        "kd_weight": 1.0,
        "ce_weight": 0.0,
        "kd_chunk_size": 512,
    },
    "datasets": [
        {"id": "acme/corpus", "config": None, "revision": "f" * 40, "split": "train", "fingerprint": "abc123"}
    ],
    "versions": {"hf_distill": "0.1.0", "transformers": "5.24.0", "torch": "2.13.0"},
    "evaluation": {
        "dataset": "acme/corpus",
        "examples": 200,
        "metric": {"name": "perplexity", "teacher": 8.5, "student": 10.0, "higher_is_better": False},
        "ce_loss": {"teacher": 2.14, "student": 2.3026},
        "kd_loss": 0.31,
        "agreement": 0.62,
        "parameters": {"teacher": 700_000_000, "student": 120_000_000},
        "size_on_disk": {"teacher": 1_400_000_000, "student": 240_000_000},
    },
}


def _lineage(**changes) -> Lineage:
    data = copy.deepcopy(RECORD)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = data
        for key in path:
            target = target[key]
        target[last] = value
    return Lineage.from_dict(data)


def _card(lineage=None, repo="me/student", existing=None, **options) -> str:
    lineage = lineage or _lineage()
    policy = decide(lineage.teacher["license"], repo, weights_derive_from_teacher=lineage.weights_derive_from_teacher)
    return render_card(lineage, policy, repo, existing, **options)


def test_card_matches_the_golden_file_and_renders_the_same_bytes_twice():
    card = _card()
    assert card == _card()
    with open(os.path.join(GOLDEN, "student_card.md"), encoding="utf-8") as f:
        assert card == f.read()


def test_card_metadata_follows_hub_conventions():
    meta, body = split_card(_card(tags=["my-tag"], language="en"))
    assert meta["base_model"] == "acme/student-base" and meta["base_model_relation"] == "finetune"
    assert meta["tags"] == ["distillation", "hf-distill", "my-tag"] and meta["language"] == "en"
    assert meta["datasets"] == ["acme/corpus"] and meta["library_name"] == "transformers"
    assert meta["distillation"]["schema"] == 1 and meta["distillation"]["teacher"]["revision"] == TEACHER_SHA
    assert "license" not in meta  # permissive teacher, weights not derived from it, no license asked for
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0] == {"type": "perplexity", "value": 10.0, "name": "student perplexity"}
    block = Lineage.from_dict(meta["distillation"])  # the block round-trips, with the license decision added
    assert block.to_dict() == {**_lineage().to_dict(), "license_policy": block.license_policy}
    assert block.license_policy["terms"] == "apache-2.0" and block.license_policy["student_license"] is None
    assert f"[acme/teacher-7b](https://huggingface.co/acme/teacher-7b/tree/{TEACHER_SHA})" in body
    assert (
        "| perplexity (lower is better) | 8.5 | 10 |" in body
        and "| top-1 agreement with the teacher | 100% | 62.0% |" in body
    )
    assert "On perplexity the student reaches 85.0% of the teacher's score (teacher ÷ student" in body
    assert "What a distilled model may lose" in body
    for junk in ("licence", "[None]", "None)", "/tmp", REPO):
        assert junk not in _card(), junk


@pytest.mark.parametrize(
    "changes, adapter_push, expected",
    [
        ({}, False, ("acme/student-base", "finetune")),
        ({}, True, ("acme/student-base", "adapter")),
        ({"student__init": {"kind": "teacher_layers", "layers": [0, 3]}}, False, ("acme/teacher-7b", "finetune")),
        ({"student__init": {"kind": "shared_base"}}, True, ("acme/teacher-7b", "adapter")),
        ({"student__init": {"kind": "random"}}, False, (None, None)),
        (
            {"student__init": {"kind": "pretrained", "name": "base", "source": "local", "weights_sha256": "0" * 64}},
            False,
            (None, None),
        ),
        # a teacher on disk: the student's layers derive from it, but there is no Hub id to point at
        (
            {"student__init": {"kind": "teacher_layers", "layers": [0]}, "teacher__source": "local"},
            False,
            (None, None),
        ),
    ],
)
def test_base_model_is_the_student_init_or_the_teacher_only_when_weights_derive(changes, adapter_push, expected):
    assert base_model(_lineage(**changes), adapter_push) == expected


def test_finetuned_from_overrides_but_never_takes_a_local_path():
    assert base_model(_lineage(), False, "acme/other") == ("acme/other", "finetune")
    with pytest.raises(ValueError, match="finetuned_from='/data/ckpt' is a local path"):
        base_model(_lineage(), False, "/data/ckpt")


def test_teacher_layers_student_of_a_restrictive_teacher_carries_its_license():
    lineage = _lineage(
        **{"student__init": {"kind": "teacher_layers", "layers": [0, 3]}, "teacher__license": {"id": "gemma"}}
    )
    meta, body = split_card(_card(lineage))
    assert meta["license"] == "gemma" and meta["base_model"] == "acme/teacher-7b"
    assert "its weights were initialised from the teacher's (from the teacher's layers [0, 3])" in body
    assert "- NOTICE file with the teacher's attribution notice" in body
    assert meta["distillation"]["license_policy"]["terms"] == "gemma"


def test_unresolved_teacher_revision_is_said_and_linked_without_a_commit():
    body = split_card(_card(_lineage(teacher__revision="unresolved")))[1]
    assert "| Teacher revision | unresolved (the commit could not be determined) |" in body
    assert "(https://huggingface.co/acme/teacher-7b)" in body and "tree/unresolved" not in body


def test_an_existing_readme_is_merged_not_clobbered():
    mine = "---\nlanguage: fr\ntags:\n- mine\nlicence: license\nbase_model: /home/me/ckpt\n---\n\n# My student\n\nWritten by me.\n"
    merged = _card(existing=mine)
    meta, body = split_card(merged)
    assert meta["language"] == "fr" and meta["tags"] == ["mine", "distillation", "hf-distill"]
    assert "licence" not in meta and meta["base_model"] == "acme/student-base"  # hf_distill's keys replace
    assert body.startswith("# My student\n\nWritten by me.\n\n" + SECTION_START) and body.rstrip().endswith(
        SECTION_END
    )
    # Merging again replaces the section instead of appending a second one.
    again = _card(_lineage(evaluation__kd_loss=0.25), existing=merged)
    assert again.count(SECTION_START) == 1 and "| KD loss to the teacher | 0 | 0.25 |" in again
    assert "Written by me." in again


def test_a_generated_placeholder_card_is_replaced():
    placeholder = (
        "---\nbase_model: /tmp/x/base\nlibrary_name: peft\n---\n\n# Model Card\n\n[More Information Needed]\n"
    )
    card = _card(existing=placeholder)
    assert "[More Information Needed]" not in card and "/tmp/x" not in card
    assert card.split("---\n", 2)[2].lstrip().startswith("# student")


@pytest.mark.slow
def test_installed_wheel_renders_the_card(tmp_path):
    # The template ships inside the wheel: build it, install it apart from the source tree, render from there.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            REPO,
        ],
        check=True,
        capture_output=True,
    )
    wheel = glob.glob(str(tmp_path / "dist" / "*.whl"))[0]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
    )
    script = (
        "import json, sys, hf_distill\n"
        "from hf_distill.hub.lineage import Lineage\nfrom hf_distill.hub.licenses import decide\n"
        "from hf_distill.hub.card import render_card\n"
        f"assert hf_distill.__file__.startswith({str(target)!r}), hf_distill.__file__\n"
        "lineage = Lineage.from_dict(json.loads(sys.stdin.read()))\n"
        "print(render_card(lineage, decide(lineage.teacher['license'], 'me/student'), 'me/student'), end='')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(RECORD),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == _card()
