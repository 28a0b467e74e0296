"""The duties a distilled student inherits from its teacher's license, and the decision recorded in its card.

Facts from the license texts (see the README's "Licenses" section); none of this is legal advice. hf_distill applies
what it can check (a model-name prefix, the license of the student, NOTICE and LICENSE files, "Built with" lines)
and refuses to push what the user has not acknowledged: an unknown license, or terms it cannot check.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LicenseTerms:
    """What one license asks of a model trained on its model's outputs.

    Attributes:
        title (`str`): the license's name, for messages and the card.
        name_prefix (`str`, *optional*): the distributed model's name must begin with this.
        built_with (`str`, *optional*): a line to display with the model.
        notice (`str`, *optional*): text of the NOTICE file to distribute with the model.
        propagates (`bool`): the student is distributed under the same license.
        needs_copy (`bool`): a copy of the license must travel with the model.
        non_commercial (`bool`): commercial use is not allowed.
        needs_acknowledgement (`str`, *optional*): a term hf_distill cannot check, quoted; pushing needs the user's
            explicit acknowledgement.
        quote (`str`, *optional*): the term behind `name_prefix` / `built_with`, quoted in messages.
    """

    title: str
    name_prefix: str | None = None
    built_with: str | None = None
    notice: str | None = None
    propagates: bool = False
    needs_copy: bool = False
    non_commercial: bool = False
    needs_acknowledgement: str | None = None
    quote: str | None = None


def _llama(version: str, prefix: str) -> LicenseTerms:
    return LicenseTerms(
        title=f"Llama {version} Community License",
        name_prefix=prefix,
        built_with="Built with Llama",
        notice=(
            f"Llama {version} is licensed under the Llama {version} Community License, Copyright © Meta Platforms, "
            "Inc. All Rights Reserved."
        ),
        propagates=True,
        needs_copy=True,
        quote=(
            f"If you use the Llama Materials or any outputs or results of the Llama Materials to create, train, fine "
            f"tune, or otherwise improve an AI model, which is distributed or made available, you shall also include "
            f"“{prefix}” at the beginning of any such AI model name."
        ),
    )


# Permissive licenses: they ask nothing of a model trained on their model's outputs. When the student's weights derive
# from the teacher's, a copy of the license travels with them; the Hub knows each of these by its id and links its
# standard text, so the id in the card stands for the text when the teacher has no LICENSE file to copy (see
# `needs_license_file`). The one list of permissive ids: `hf_distill.hub.push` reads it through that function.
PERMISSIVE = (
    "apache-2.0",
    "mit",
    "bsd-2-clause",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc0-1.0",
    "unlicense",
    "bsl-1.0",
    "afl-3.0",
    "ecl-2.0",
    "artistic-2.0",
    "wtfpl",
)
_PERMISSIVE = LicenseTerms(title="permissive")
_GEMMA = LicenseTerms(
    title="Gemma Terms of Use",
    notice=("Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"),
    propagates=True,
    needs_copy=True,
    quote="Distillation creates a Model Derivative, which must be distributed with the Gemma use restrictions.",
)

# A provider's terms of service on its API's outputs (a served teacher: see `hf_distill.served.providers`), keyed
# `provider:<name>`. They bind the person who trained on the outputs rather than the model, so they are acknowledged
# (the card says so) and nothing carries over to the student's license.
PROVIDER_TERMS: dict[str, LicenseTerms] = {
    "provider:openai": LicenseTerms(
        title="OpenAI Terms of Use",
        needs_acknowledgement="[You may not] Use Output to develop models that compete with OpenAI.",
    ),
    "provider:anthropic": LicenseTerms(
        title="Anthropic Commercial Terms of Service",
        needs_acknowledgement=(
            "Customer may not and must not attempt to (a) access the Services to build a competing product or "
            "service, including to train competing AI models [...]"
        ),
    ),
    "provider:google-gemini-api": LicenseTerms(
        title="Gemini API Additional Terms of Service",
        needs_acknowledgement=(
            "You may not use the Services to develop models that compete with the Services (e.g., Gemini API or "
            "Google AI Studio)."
        ),
    ),
}

# By the card's `license` id (or, for `license: other`, by `license_name`).
TERMS: dict[str, LicenseTerms] = {
    **PROVIDER_TERMS,
    "llama3": _llama("3", "Llama 3"),
    "llama3.1": _llama("3.1", "Llama"),
    "llama3.2": _llama("3.2", "Llama"),
    "llama3.3": _llama("3.3", "Llama"),
    "llama4": _llama("4", "Llama"),
    "llama2": LicenseTerms(
        title="Llama 2 Community License",
        notice="Llama 2 is licensed under the LLAMA 2 Community License, Copyright © Meta Platforms, Inc.",
        propagates=True,
        needs_copy=True,
        needs_acknowledgement=(
            "You will not use the Llama Materials or any output or results of the Llama Materials to improve any "
            "other large language model (excluding Llama 2 or derivative works thereof)."
        ),
    ),
    "gemma": _GEMMA,
    "qwen": LicenseTerms(
        title="Qwen License",
        built_with="Built with Qwen",
        notice="Qwen is licensed under the Qwen LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved.",
        propagates=True,
        needs_copy=True,
    ),
    "qwen-research": LicenseTerms(
        title="Qwen Research License",
        built_with="Built with Qwen",
        notice="Qwen is licensed under the Qwen RESEARCH LICENSE AGREEMENT, Copyright (c) Alibaba Cloud.",
        propagates=True,
        needs_copy=True,
        non_commercial=True,
    ),
    **dict.fromkeys(PERMISSIVE, _PERMISSIVE),
    **{
        key: LicenseTerms(title=key.upper(), propagates=True, needs_copy=True, non_commercial=True)
        for key in ("cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0")
    },
}


class LicensePolicyError(ValueError):
    """A push that the teacher's license terms forbid until the user acts (renames, acknowledges, overrides)."""


@dataclass
class LicenseDecision:
    """What the teacher's license asks, what was applied, and what the user acknowledged. Recorded in the card.

    Attributes:
        teacher_license (`dict`, *optional*): `{"id", "name"?, "link"?}` from the teacher's card; `None` if unknown.
        terms (`str`): the recognised terms' key in `TERMS`, or `"unknown"`.
        student_license (`dict`, *optional*): the license the student's card declares.
        built_with (`str`, *optional*), notice (`str`, *optional*): lines shown in the card / the NOTICE file.
        needs_license_copy (`bool`): the teacher's license files travel with the push.
        non_commercial (`bool`): the student may not be used commercially.
        duties (`list[str]`): every duty applied, in words.
        acknowledged (`list[str]`), overridden (`list[str]`): what the user explicitly accepted or overrode.
        pending (`list[str]`): what a push would refuse, when the decision was taken without refusing (for a card
            written locally by `create_model_card`); empty for every decision a push acts on.
    """

    teacher_license: dict[str, Any] | None
    terms: str
    student_license: dict[str, Any] | None
    built_with: str | None = None
    notice: str | None = None
    needs_license_copy: bool = False
    non_commercial: bool = False
    duties: list[str] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not data["pending"]:  # only a local card has any: pushed records keep their layout
            del data["pending"]
        return data


def terms_key(license_record: dict[str, Any] | None) -> str:
    """The `TERMS` key of a `{"id", "name", "link"}` license record, or `"unknown"`."""
    if not license_record:
        return "unknown"
    key = str(license_record.get("id", "")).lower()
    if key == "other":
        key = str(license_record.get("name") or "").lower()
    return key if key in TERMS else "unknown"


def _starts_with(repo_name: str, prefix: str) -> bool:
    # Repository names cannot hold spaces: "Llama 3" is met by Llama-3-…, Llama_3… or Llama3….
    def squash(text: str) -> str:
        return "".join(c for c in text.lower() if c.isalnum() or c == ".")

    return squash(repo_name).startswith(squash(prefix))


def decide(
    teacher_license: dict[str, Any] | None,
    repo_id: str,
    student_license: str | None = None,
    weights_derive_from_teacher: bool = False,
    acknowledge_teacher_license: bool = False,
    override_name_prefix: bool = False,
    strict: bool = True,
) -> LicenseDecision:
    """Apply the teacher's license terms to a push of the student to `repo_id`.

    Args:
        teacher_license (`dict`, *optional*): the teacher's `{"id", "name"?, "link"?}`; `None` when unknown.
        repo_id (`str`): the repository the student goes to (its name is checked against a required prefix).
        student_license (`str`, *optional*): the license the user asks for; defaults to the teacher's when its terms
            propagate or the weights derive from the teacher.
        weights_derive_from_teacher (`bool`): the student was initialised from the teacher's weights.
        acknowledge_teacher_license (`bool`): the user has read the teacher's terms and accepts them for this
            student: needed for an unknown license, for terms hf_distill cannot check, and for a student license
            that differs from one the teacher's terms carry over.
        override_name_prefix (`bool`): push under a name without the prefix the terms require.
        strict (`bool`, defaults to `True`): raise on what the terms refuse. With `False` (a card written locally,
            which publishes nothing), every refusal is recorded in `LicenseDecision.pending` instead.

    Raises:
        `LicensePolicyError`: naming the term and the option that lifts it (only when `strict`).
    """
    key = terms_key(teacher_license)
    decision = LicenseDecision(teacher_license, key, None)
    shown = (teacher_license or {}).get("name") or (teacher_license or {}).get("id")

    def refuse(message: str) -> None:
        if strict:
            raise LicensePolicyError(message)
        decision.pending.append(message)

    if key == "unknown":
        if acknowledge_teacher_license:
            decision.acknowledged.append(f"unknown teacher license ({shown or 'none given'})")
        else:
            refuse(
                f"The teacher's license is unknown (license={shown!r}), so hf_distill cannot tell which duties a model "
                "trained on its outputs carries. Read the teacher's terms, then pass "
                "acknowledge_teacher_license=True (push_to_hub argument or DistillationConfig field) to push."
            )
        decision.student_license = {"id": student_license} if student_license else None
        return decision

    terms = TERMS[key]
    if terms.needs_acknowledgement:
        if acknowledge_teacher_license:
            decision.acknowledged.append(terms.needs_acknowledgement)
        else:
            refuse(
                f"The teacher's {terms.title} says: “{terms.needs_acknowledgement}” hf_distill cannot check this for "
                "your student; if your use is allowed, pass acknowledge_teacher_license=True."
            )

    repo_name = repo_id.split("/")[-1]
    if terms.name_prefix and not _starts_with(repo_name, terms.name_prefix):
        if override_name_prefix:
            decision.overridden.append(f"model name without the required prefix “{terms.name_prefix}”")
        else:
            refuse(
                f"repo_id={repo_id!r}: the teacher's {terms.title} requires the name to begin with "
                f"“{terms.name_prefix}”: “{terms.quote}” Rename the repository (e.g. "
                f"'{terms.name_prefix.replace(' ', '-')}-{repo_name}') or pass override_name_prefix=True."
            )
    elif terms.name_prefix:
        decision.duties.append(f"model name begins with “{terms.name_prefix}”")

    carries_over = terms.propagates or weights_derive_from_teacher
    if carries_over and student_license and student_license != teacher_license["id"]:
        if acknowledge_teacher_license:
            decision.acknowledged.append(f"student license {student_license!r} differs from the teacher's")
        else:
            refuse(
                f"license={student_license!r}, but the student carries the teacher's {terms.title} "
                f"(license={teacher_license['id']!r}) because "
                f"{'its terms cover models trained on its outputs' if terms.propagates else 'its weights derive from the teacher'}. "
                "Use the teacher's license, or pass acknowledge_teacher_license=True if you have the right to "
                "relicense."
            )
    if student_license and not (carries_over and student_license == teacher_license["id"]):
        decision.student_license = {"id": student_license}
    elif carries_over:  # also when the student's license is stated as the teacher's: its name, link and duty
        decision.student_license = dict(teacher_license)
        decision.duties.append(f"student distributed under the teacher's license ({teacher_license['id']})")

    decision.built_with = terms.built_with
    if terms.built_with:
        decision.duties.append(f"“{terms.built_with}” shown in the model card")
    decision.notice = terms.notice
    if terms.notice:
        decision.duties.append("NOTICE file with the teacher's attribution notice")
    decision.needs_license_copy = terms.needs_copy or weights_derive_from_teacher
    if decision.needs_license_copy:
        decision.duties.append("a copy of the teacher's license distributed with the student")
    decision.non_commercial = terms.non_commercial
    if terms.non_commercial:
        decision.duties.append("non-commercial use only")
    return decision


def needs_license_file(decision: LicenseDecision) -> bool:
    """Whether a push needs the teacher's license text as a file (the teacher's LICENSE, else the uploader's): the
    terms need a copy of the license and it is not one of the `PERMISSIVE` ids, whose id in the card is enough."""
    return decision.needs_license_copy and decision.terms not in PERMISSIVE
