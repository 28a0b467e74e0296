"""The teacher's license terms applied to a push: refusals that name the term, and the decision recorded."""

import pytest

from hf_distill.hub.licenses import PERMISSIVE, TERMS, LicensePolicyError, decide, needs_license_file, terms_key
from hf_distill.hub.push import teacher_license_files, user_license_copy
from hf_distill.hub.secrets import PushRefusedError

LLAMA31 = {"id": "llama3.1", "link": "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/LICENSE"}


@pytest.mark.parametrize(
    "license_record, key",
    [
        ({"id": "llama3.1"}, "llama3.1"),
        ({"id": "other", "name": "qwen-research"}, "qwen-research"),
        ({"id": "other", "name": "Qwen"}, "qwen"),
        ({"id": "other", "name": "my-lab-license"}, "unknown"),
        ({"id": "unknown"}, "unknown"),
        (None, "unknown"),
        ({"id": "Apache-2.0"}, "apache-2.0"),
    ],
)
def test_terms_are_recognised_from_card_fields(license_record, key):
    assert terms_key(license_record) == key


@pytest.mark.parametrize(
    "license_id, repo, allowed",
    [
        ("llama3.1", "me/tiny-student", False),
        ("llama3.1", "me/Llama-tiny-student", True),
        ("llama3.2", "me/llama-3.2-mini", True),  # the prefix is compared without case or separators
        ("llama4", "me/student-Llama", False),  # the name must *begin* with it
        ("llama3", "me/Llama-tiny", False),  # Llama 3 (3.0) asks for "Llama 3"
        ("llama3", "me/Llama-3-tiny", True),
        ("gemma", "me/tiny-student", True),  # no name rule
    ],
)
def test_name_prefix_rule(license_id, repo, allowed):
    if allowed:
        decision = decide({"id": license_id}, repo)
        assert not decision.overridden
        return
    with pytest.raises(LicensePolicyError) as raised:
        decide({"id": license_id}, repo)
    message = str(raised.value)
    assert repo in message and TERMS[license_id].name_prefix in message and "override_name_prefix=True" in message
    assert "any outputs or results of the Llama Materials" in message  # the term is quoted
    decision = decide({"id": license_id}, repo, override_name_prefix=True)
    assert decision.overridden == [f"model name without the required prefix “{TERMS[license_id].name_prefix}”"]


def test_llama_duties_are_all_applied_and_recorded():
    decision = decide(LLAMA31, "me/Llama-student")
    assert decision.student_license == LLAMA31  # propagated, with its link
    assert decision.built_with == "Built with Llama"
    assert decision.notice.startswith("Llama 3.1 is licensed under the Llama 3.1 Community License")
    assert decision.needs_license_copy and not decision.non_commercial
    assert any("begins with “Llama”" in d for d in decision.duties)
    assert decision.to_dict()["terms"] == "llama3.1"


def test_gemma_propagates_and_refuses_another_license_unless_acknowledged():
    decision = decide({"id": "gemma"}, "me/student")
    assert decision.student_license == {"id": "gemma"} and "ai.google.dev/gemma/terms" in decision.notice
    with pytest.raises(LicensePolicyError, match=r"license='mit'.*Gemma Terms of Use.*acknowledge_teacher_license"):
        decide({"id": "gemma"}, "me/student", student_license="mit")
    decision = decide({"id": "gemma"}, "me/student", student_license="mit", acknowledge_teacher_license=True)
    assert decision.student_license == {"id": "mit"} and decision.acknowledged


def test_qwen_research_is_non_commercial():
    decision = decide({"id": "other", "name": "qwen-research", "link": "LICENSE"}, "me/student")
    assert decision.non_commercial and decision.built_with == "Built with Qwen"
    assert decision.student_license == {"id": "other", "name": "qwen-research", "link": "LICENSE"}
    assert "non-commercial use only" in decision.duties


@pytest.mark.parametrize("license_record", [None, {"id": "other", "name": "my-lab-license"}, {"id": "unknown"}])
def test_unknown_license_needs_an_explicit_acknowledgement(license_record):
    with pytest.raises(LicensePolicyError, match="unknown.*acknowledge_teacher_license=True"):
        decide(license_record, "me/student")
    decision = decide(license_record, "me/student", student_license="apache-2.0", acknowledge_teacher_license=True)
    assert decision.terms == "unknown" and decision.acknowledged[0].startswith("unknown teacher license")
    assert decision.student_license == {"id": "apache-2.0"}


def test_llama2_output_clause_is_quoted_and_needs_acknowledgement():
    with pytest.raises(LicensePolicyError, match="improve any other large language model"):
        decide({"id": "llama2"}, "me/student")
    assert decide({"id": "llama2"}, "me/student", acknowledge_teacher_license=True).acknowledged


@pytest.mark.parametrize("derive", [False, True])
def test_permissive_teacher(derive):
    decision = decide({"id": "apache-2.0"}, "me/student", weights_derive_from_teacher=derive)
    assert decision.built_with is None and decision.notice is None and not decision.non_commercial
    # Weights cut from the teacher keep its license (and its text); a student trained on outputs alone is free.
    assert decision.student_license == ({"id": "apache-2.0"} if derive else None)
    assert decision.needs_license_copy is derive
    assert decide({"id": "mit"}, "me/s", student_license="apache-2.0").student_license == {"id": "apache-2.0"}


@pytest.mark.parametrize("license_id", PERMISSIVE)
def test_a_permissive_license_without_a_license_file_needs_only_its_id(license_id, tmp_path):
    """Weights cut from a permissive teacher carry its license; the Hub knows every permissive id and links its text,
    so a push needs no LICENSE file when the teacher has none to copy (one table: `licenses.PERMISSIVE`)."""
    assert TERMS[license_id] == TERMS["apache-2.0"]
    decision = decide({"id": license_id}, "me/student", weights_derive_from_teacher=True)
    assert decision.needs_license_copy and not needs_license_file(decision)
    assert user_license_copy(decision, {}, [str(tmp_path)]) == {}  # nothing to add, nothing refused


@pytest.mark.parametrize("license_id", ["llama3.1", "gemma", "qwen", "cc-by-nc-4.0"])
def test_a_license_that_must_travel_as_text_needs_a_file(license_id, tmp_path):
    decision = decide({"id": license_id}, "me/Llama-student", acknowledge_teacher_license=True)
    assert needs_license_file(decision)
    with pytest.raises(PushRefusedError, match="LICENSE in the output folder"):
        user_license_copy(decision, {}, [str(tmp_path)])
    assert user_license_copy(decision, {"LICENSE": b"text"}, [str(tmp_path)]) == {}  # the teacher's own copy travels
    (tmp_path / "LICENSE").write_text("the teacher's license\n")
    assert user_license_copy(decision, {}, [str(tmp_path)]) == {}  # already in the pushed folder
    assert decision.duties[-1] == "the teacher's license text, provided by the uploader as LICENSE"


def test_the_teachers_license_files_are_read_at_the_pinned_commit(hub, caplog):
    first = hub.add_commit("acme/teacher", {"LICENSE": "v1\n", "USE_POLICY.md": "policy\n", "config.json": "{}"})
    hub.add_commit("acme/teacher", {"LICENSE": "v2\n", "NOTICE": "notice\n"})
    files = teacher_license_files({"source": "hub", "name": "acme/teacher", "revision": first}, None)
    assert files == {"LICENSE": b"v1\n", "USE_POLICY.md": b"policy\n"}
    assert not hub.calls("GET", "config.json")  # only the license files are downloaded
    caplog.set_level("WARNING")
    assert teacher_license_files({"source": "hub", "name": "acme/missing", "revision": "f" * 40}, None) == {}
    assert "Could not read the teacher's license files from the Hub" in caplog.text
