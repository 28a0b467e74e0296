"""Which provider a served teacher's URL belongs to, so that the provider's terms on its outputs apply.

A provider's API (as opposed to a server you run yourself) comes with terms of service, and some forbid using its
outputs to train competing models. The terms themselves are in `hf_distill.hub.licenses.TERMS` under the key
`provider:<name>`, where the push policy reads them: the teacher's lineage records the provider as its license
(`{"id": "other", "name": "provider:<name>"}`), so a push needs the same explicit acknowledgement as any license
term hf_distill cannot check. A server on your own machine or network has no provider: the served model's own
license applies (`teacher_license`), and an unknown one needs acknowledging like any unknown license.
"""

from __future__ import annotations

# Host (or host suffix) -> provider key. Only providers whose terms hf_distill quotes are listed.
PROVIDER_HOSTS: dict[str, str] = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "google-gemini-api",
}
SELF_HOSTED = "self-hosted"


def provider_for(host: str, declared: str | None = None) -> str | None:
    """The provider key of a served teacher: `declared` (`teacher_provider`, e.g. for a proxy in front of a
    provider), else the one whose host `host` is or ends with, else `None` (a server of your own)."""
    if declared:
        return declared.strip().lower()
    host = host.lower()
    for known, key in PROVIDER_HOSTS.items():
        if host == known or host.endswith("." + known):
            return key
    return None


def served_license_record(provider: str | None, license_id: str | None) -> dict[str, str] | None:
    """The lineage's `teacher.license` of a served teacher: the provider's terms when it has a provider (they bind
    what you do with its outputs, whatever the model's own license), else the declared `teacher_license`, else
    `None` (unknown: a push then needs `acknowledge_teacher_license=True`)."""
    if provider and provider != SELF_HOSTED:
        return {"id": "other", "name": f"provider:{provider}"}
    if license_id:
        return {"id": license_id}
    return None
