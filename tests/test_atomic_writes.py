"""Every file hf_distill writes appears whole or not at all (temporary file in the same folder + `os.replace`)."""

import json
import os
import re

import pytest
from test_model_card import RECORD

from hf_distill import Lineage
from hf_distill.hub.lineage import LINEAGE_FILE
from hf_distill.utils.atomic import atomic_open, atomic_path, write_json, write_text

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf_distill")


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "data.json"
    write_json(path, {"version": 1})
    with pytest.raises(TypeError):
        write_json(path, {"version": 2, "bad": object()})  # json.dump fails half-way through
    assert json.loads(path.read_text()) == {"version": 1} and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write('{"version": 3')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"version": 1} and _leftovers(tmp_path) == []


def test_a_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "card.md"
    write_text(path, "old")

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_text(path, "new")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_the_temporary_is_in_the_target_folder_and_permissions_follow_the_umask(tmp_path):
    path = tmp_path / "sub" / "x.bin"
    path.parent.mkdir()
    with atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(path.parent) and not os.path.exists(path)
        with open(tmp, "wb") as f:
            f.write(b"\0" * 10)
    assert path.read_bytes() == b"\0" * 10
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="mode='a'"), atomic_open(path, "a"):
        pass


def test_the_lineage_record_is_never_half_written(tmp_path, monkeypatch):
    record = Lineage.from_dict(RECORD)
    record.save(str(tmp_path))
    before = (tmp_path / LINEAGE_FILE).read_text()
    monkeypatch.setattr(Lineage, "to_dict", lambda self: {**RECORD, "evaluation": {"x": object()}})
    with pytest.raises(TypeError):
        record.save(str(tmp_path))
    assert (tmp_path / LINEAGE_FILE).read_text() == before and _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert Lineage.load(str(tmp_path)).to_dict() == record.to_dict()


def test_a_cache_shard_that_fails_mid_write_is_not_left_under_its_name(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from datasets import Features, Sequence, Value

    from hf_distill.offline.writer import write_shard

    real = pq.write_table

    def dies_half_way(table, where, **kwargs):
        real(table, where, **kwargs)
        data = open(where, "rb").read()
        with open(where, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("killed")

    features = Features({"input_ids": Sequence(Value("int64"))})
    entry = write_shard(str(tmp_path), "shard-00000.parquet", {"input_ids": [[1, 2]]}, features)
    assert entry["rows"] == 1 and pq.ParquetFile(tmp_path / "shard-00000.parquet").metadata.num_rows == 1
    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="killed"):
        write_shard(str(tmp_path), "shard-00001.parquet", {"input_ids": [[1, 2]]}, features)
    assert sorted(os.listdir(tmp_path)) == ["shard-00000.parquet"]


WRITE = re.compile(r"""open\([^)]*["'](w|wb|a|ab|x|xb|w\+)["']|\.write_text\(|\.write_bytes\(|write_table\(""")


def test_no_module_writes_a_file_in_place():
    offenders = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py") or name == "atomic.py":
                continue
            path = os.path.join(root, name)
            previous: list[str] = []
            for number, line in enumerate(open(path, encoding="utf-8"), 1):
                code = line.split("#")[0]  # a comment mentioning atomic writes excuses nothing
                # A write is atomic when it goes through hf_distill.utils.atomic on that line, or into the temporary path
                # an `atomic_path(...)` / `atomic_open(...)` block opened just above.
                through = "atomic" in code or any(("atomic_path(" in p or "atomic_open(" in p) for p in previous)
                if WRITE.search(code) and not through:
                    offenders.append(f"{os.path.relpath(path, PACKAGE)}:{number}: {line.strip()}")
                previous = [*previous[-2:], code]
    assert offenders == [], "write through hf_distill.utils.atomic instead:\n" + "\n".join(offenders)
