import json

import pytest

from speechgpt.jsonl import JsonlError, ResumableJsonlWriter, read_jsonl


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(JsonlError, match=r"x\.jsonl:4: not valid JSON"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match=r"x\.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(path))


def _write(path, keys, **kwargs):
    with ResumableJsonlWriter(path, key="id", **kwargs) as writer:
        for key in keys:
            if key not in writer.done:
                writer.write({"id": key, "text": "é" * len(key)})
        return writer


def test_writer_resumes_after_a_torn_line_and_matches_an_uninterrupted_run(tmp_path):
    keys = [f"k{i}" for i in range(6)]
    full = tmp_path / "full.jsonl"
    _write(full, keys).finish()
    expected = full.read_bytes()

    resumed = tmp_path / "resumed.jsonl"
    lines = expected.split(b"\n")
    # A kill while writing the fourth line leaves three full lines and a torn one.
    (tmp_path / "resumed.jsonl.partial").write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:7])
    with ResumableJsonlWriter(resumed, key="id") as writer:
        assert writer.resumed == 3
        for key in keys:
            if key not in writer.done:
                writer.write({"id": key, "text": "é" * len(key)})
        writer.finish()
    assert resumed.read_bytes() == expected
    assert not (tmp_path / "resumed.jsonl.partial").exists()
    assert [r["id"] for r in read_jsonl(resumed)] == keys


def test_unfinished_job_keeps_partial_and_finished_output_is_extended(tmp_path):
    out = tmp_path / "o.jsonl"
    writer = _write(out, ["a", "b"])
    assert not out.exists() and (tmp_path / "o.jsonl.partial").exists()
    writer.finish()
    with ResumableJsonlWriter(out, key="id") as again:
        assert again.done == {"a", "b"}
        again.write({"id": "c"})
        again.finish()
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b", "c"]
    with ResumableJsonlWriter(out, key="id", overwrite=True) as fresh:
        assert fresh.resumed == 0 and not out.exists()
