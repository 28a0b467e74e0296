"""Reading lineage is bounded: the walk up the teachers is iterative and capped, a malformed teacher id ends it with a
note, card YAML aliases are refused, oversize files are refused before download, the CLI never prints raw control
characters, and a teacher cache manifest can only name files inside its own folder."""

import copy
import json

import pytest
import yaml
from test_model_card import RECORD

from hf_distill import LineageError, read_lineage
from hf_distill.cli.main import main
from hf_distill.hub.lineage import LINEAGE_FILE, Lineage
from hf_distill.hub.pull import MAX_LINEAGE_BYTES
from hf_distill.offline.cache import CACHE_INFO_FILE, check_shard_name, load_teacher_cache


def _record(teacher_name, teacher_revision, source="hub"):
    record = copy.deepcopy(RECORD)
    record["teacher"].update(name=teacher_name, revision=teacher_revision, source=source)
    return record


def _card(record):
    return f"---\n{yaml.safe_dump({'license': 'mit', 'distillation': record})}---\n\n# a student\n"


def _chain(hub, length, prefix="me/gen"):
    """`prefix-0` distilled from `prefix-1` ... from `prefix-{length-1}`, whose teacher is local; returns the repos."""
    repos = [f"{prefix}-{i}" for i in range(length)]
    below = _record("base", None, source="local")
    for repo in reversed(repos):
        sha = hub.add_commit(repo, {"README.md": _card(below)})
        below = _record(repo, sha)
    return repos


def test_the_walk_stops_at_max_depth_with_a_note(hub):
    repos = _chain(hub, 5)
    full = read_lineage(repos[0]).chain()
    assert [n.repo for n in full] == repos and full[-1].teacher_note == "local teacher: not on the Hub"
    capped = read_lineage(repos[0], max_depth=3).chain()
    assert [n.repo for n in capped] == repos[:3]
    assert capped[-1].teacher_note == "not followed: read_lineage stops after max_depth=3 models"
    assert [n.teacher_note for n in capped[:-1]] == [None, None]
    with pytest.raises(ValueError, match="max_depth=0; use an integer >= 1"):
        read_lineage(repos[0], max_depth=0)


@pytest.mark.slow
def test_the_default_depth_cap_is_64_and_a_long_chain_never_recurses(hub, capsys):
    repos = _chain(hub, 70, prefix="me/long")
    chain = read_lineage(repos[0]).chain()
    assert len(chain) == 64 and chain[-1].repo == repos[63]
    assert chain[-1].teacher_note == "not followed: read_lineage stops after max_depth=64 models"
    assert main(["lineage", repos[0], "--max-depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "me/long-1" in out and "me/long-2 @" in out and "max_depth=2" in out and "me/long-3" not in out


@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "a/b/c", "me/x\x1b[2J"])
def test_a_malformed_teacher_id_becomes_a_note_keeping_the_readable_rest(hub, bad):
    sha = hub.add_commit("me/odd-teacher", {"README.md": _card(_record(bad, "a" * 40))})
    hub.add_commit("me/student", {"README.md": _card(_record("me/odd-teacher", sha))})
    chain = read_lineage("me/student").chain()
    assert [n.repo for n in chain] == ["me/student", "me/odd-teacher"]
    assert chain[-1].teacher_note == f"teacher name {bad!r} is not a Hub repo id; not followed"
    assert not [p for _, p in hub.requests if "etc" in p or "a/b/c" in p]  # nothing was asked for it


BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def test_a_billion_laughs_card_is_refused_not_expanded(tmp_path, capsys):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "README.md").write_text(f"---\n{BILLION_LAUGHS}distillation: *i\n---\n")
    with pytest.raises(LineageError, match="YAML aliases \\(\\*name\\) are not accepted in card metadata at line 3"):
        read_lineage(str(folder))
    assert main(["lineage", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "YAML aliases" in err


def test_oversize_local_card_and_lineage_file_are_refused(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / LINEAGE_FILE).write_text(json.dumps({**RECORD, "padding": "x" * MAX_LINEAGE_BYTES}))
    with pytest.raises(LineageError, match=f"over the {MAX_LINEAGE_BYTES}-byte limit"):
        read_lineage(str(folder))
    header = "---\nlicense: mit\n---\n"
    (folder / "README.md").write_text(header + "x" * MAX_LINEAGE_BYTES)
    with pytest.raises(LineageError, match=f"README.md`: {MAX_LINEAGE_BYTES + len(header)} bytes, over the"):
        read_lineage(str(folder))


def test_an_oversize_lineage_file_on_the_hub_is_refused_before_download(hub):
    hub.add_commit("me/huge", {LINEAGE_FILE: json.dumps({**RECORD, "padding": "x" * MAX_LINEAGE_BYTES})})
    with pytest.raises(LineageError, match=f"me/huge@[0-9a-f]{{40}} {LINEAGE_FILE}`: .* over the"):
        read_lineage("me/huge")
    assert hub.calls("GET", LINEAGE_FILE) == []  # sized by paths-info, never fetched


def test_the_cli_escapes_control_characters_in_everything_it_prints(tmp_path, capsys):
    folder = tmp_path / "student"
    folder.mkdir()
    record = _record("evil\x1b]0;owned\x07\x1b[2J", None, source="local")
    record["objective"]["kd_loss"] = "kl\r\u202eevil"
    (folder / LINEAGE_FILE).write_text(json.dumps(record))
    for argv in (["lineage", str(folder)], ["lineage", str(folder), "--json"]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not any(c in out for c in "\x1b\x07\r\u202e"), argv
    assert main(["lineage", str(folder)]) == 0
    assert "evil\\x1b]0;owned\\x07\\x1b[2J" in capsys.readouterr().out
    record["schema"] = "\x1b[31m"  # malformed: the error names the value, escaped
    (folder / LINEAGE_FILE).write_text(json.dumps(record))
    assert main(["lineage", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out and "'\\x1b[31m'" in captured.err


DEEP_JSON = "[" * 200_000 + "]" * 200_000  # 400 kB, under the size cap, deeper than any decoder's stack


def test_deeply_nested_json_is_a_lineage_error_locally_and_a_note_up_a_hub_chain(hub, tmp_path, capsys):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / LINEAGE_FILE).write_text(DEEP_JSON)
    with pytest.raises(LineageError, match="JSON nested too deeply to be a lineage record"):
        read_lineage(str(folder))
    assert main(["lineage", str(folder)]) == 1
    assert "nested too deeply" in capsys.readouterr().err
    (folder / "README.md").write_text(f"---\ndistillation: {DEEP_JSON}\n---\n")  # the card's YAML too
    with pytest.raises(LineageError, match="README.md front matter`: nested too deeply"):
        read_lineage(str(folder))
    sha = hub.add_commit("me/deep-teacher", {LINEAGE_FILE: DEEP_JSON})
    hub.add_commit("me/student", {"README.md": _card(_record("me/deep-teacher", sha))})
    chain = read_lineage("me/student").chain()
    assert [n.repo for n in chain] == ["me/student"] and "nested too deeply" in chain[0].teacher_note


@pytest.mark.parametrize(
    ("license_value", "field"), [("not-a-dict", "teacher.license"), ({"id": 5}, "teacher.license.id")]
)
def test_a_license_of_the_wrong_type_is_refused_naming_the_field(tmp_path, capsys, license_value, field):
    record = copy.deepcopy(RECORD)
    record["teacher"]["license"] = license_value
    with pytest.raises(LineageError, match=f"`{field}`: .* is not a") as caught:
        Lineage.from_dict(record)
    assert caught.value.field == field
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / LINEAGE_FILE).write_text(json.dumps(record))
    assert main(["lineage", str(folder)]) == 1
    captured = capsys.readouterr()
    assert f"`{field}`" in captured.err and json.loads(captured.out)["objective"] == record["objective"]


def test_the_readable_rest_of_a_record_keeps_its_own_schema(tmp_path, capsys):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / LINEAGE_FILE).write_text(json.dumps({**RECORD, "schema": 2}))
    assert main(["lineage", str(folder)]) == 1
    captured = capsys.readouterr()
    assert "`schema`: 2 is not a schema" in captured.err and json.loads(captured.out)["schema"] == 2


def _one_line_error(capsys, argv):
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_the_cli_reports_unreadable_models_in_one_line(hub, tmp_path, capsys):
    hub.add_commit("me/plain", {"config.json": "{}"})
    err = _one_line_error(capsys, ["lineage", "me/missing"])
    assert err.startswith("hf-distill: me/missing: no such model repository on the Hub")
    err = _one_line_error(capsys, ["lineage", "me/plain", "--revision", "nope-branch"])
    assert err.startswith("hf-distill: me/plain: no revision 'nope-branch'")
    err = _one_line_error(capsys, ["lineage", str(tmp_path / "nope")])
    assert "nope: no such folder" in err and "has no distillation lineage" not in err
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_lineage(str(tmp_path / "nope"))


def test_the_cli_reports_offline_and_not_cached_in_one_line(capsys):  # no `hub` fixture: HF_HUB_OFFLINE=1
    err = _one_line_error(capsys, ["lineage", "me/never-downloaded"])
    assert err.startswith("hf-distill: me/never-downloaded: cannot be read offline")


# ---- teacher cache manifests ----


@pytest.mark.parametrize("name", ["../x.parquet", "/etc/x.parquet", "a/../../x.parquet", "", ".", "..\\x.parquet"])
def test_a_manifest_shard_outside_the_cache_folder_is_refused(name):
    with pytest.raises(ValueError, match="is not a path inside the cache folder"):
        check_shard_name(name, "teacher_cache.json")


def test_a_cache_whose_manifest_points_outside_is_refused_on_load(tmp_path):
    (tmp_path / "secret.parquet").write_bytes(b"not yours")
    folder = tmp_path / "cache"
    folder.mkdir()
    manifest = {
        "fingerprint": {
            "teacher": {"name": "t", "source": "local"},
            "tokenizer_sha256": None,
            "temperature": 1.0,
            "k": 2,
            "vocab_size": 8,
            "dataset_fingerprint": "x",
            "logprob_dtype": "float16",
        },
        "shards": [{"file": "../secret.parquet", "rows": 1, "sha256": "0" * 64}],
        "total_rows": 1,
        "format_version": 1,
    }
    (folder / CACHE_INFO_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="shard file '../secret.parquet' is not a path inside the cache folder"):
        load_teacher_cache(str(folder))
    manifest["shards"][0]["file"] = str(tmp_path / "secret.parquet")
    (folder / CACHE_INFO_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="secret.parquet' is not a path inside the cache folder"):
        load_teacher_cache(str(folder))


@pytest.mark.parametrize("name", ["*", "s*.parquet", "shard-0000?.parquet", "shard-[0-9].parquet", "sub/"])
def test_a_manifest_shard_name_with_pattern_characters_is_refused(name):
    with pytest.raises(ValueError, match="contains a pattern character"):
        check_shard_name(name, "teacher_cache.json")


def test_a_hub_cache_with_a_glob_shard_name_is_refused_before_any_shard_is_downloaded(hub, tmp_path):
    manifest = {
        "fingerprint": {
            "teacher": {"name": "t", "source": "local"},
            "tokenizer_sha256": None,
            "temperature": 1.0,
            "k": 2,
            "vocab_size": 8,
            "dataset_fingerprint": "x",
            "logprob_dtype": "float16",
        },
        "shards": [{"file": "*", "rows": 1, "sha256": "0" * 64}],
        "total_rows": 1,
        "format_version": 1,
    }
    files = {CACHE_INFO_FILE: json.dumps(manifest), "shard.parquet": b"x", "huge_other.bin": b"\0" * 4096}
    hub.add_commit("me/globcache", files, repo_type="dataset")
    with pytest.raises(ValueError, match="shard file '\\*' contains a pattern character"):
        load_teacher_cache("me/globcache")
    assert hub.calls("GET", "huge_other.bin") == [] and hub.calls("GET", "shard.parquet") == []


def test_a_hub_cache_downloads_only_the_files_its_manifest_names(hub, tmp_path):
    from datasets import Dataset
    from tiny_models import llama

    from hf_distill.offline.writer import cache_teacher

    data = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4, "attention_mask": [[1] * 4] * 4})
    cache_teacher(llama(32, 1), data, str(tmp_path / "cache"), k=4, progress=False)
    files = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    hub.add_commit("me/cache", {**files, "unrelated.bin": b"\0" * 4096, "notes/readme.txt": "x"}, repo_type="dataset")
    cache = load_teacher_cache("me/cache")
    assert len(cache.dataset) == 4
    assert hub.calls("GET", "unrelated.bin") == [] and hub.calls("GET", "notes") == []
