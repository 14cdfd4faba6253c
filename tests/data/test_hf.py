"""Stage 1/2/3 files load as a ``datasets.Dataset`` with one call, row for row."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechgpt.data.hf import load_instruct_dataset
from speechgpt.data.records import make_asr_record, make_com_record, make_tts_record
from speechgpt.jsonl import dumps_record, read_jsonl
from speechgpt.prompt_format import Modality

UNITS = "<sosp><4><8><15><eosp>"


def _records(prefix: str, n: int) -> list[dict[str, str]]:
    records = []
    for i in range(n):
        records.append(
            make_asr_record(id=f"{prefix}{i}-asr", units=UNITS, transcript=f"item {i}", template="Write it.")
        )
        records.append(make_tts_record(id=f"{prefix}{i}-tts", units=UNITS, text=f"item {i} ‹ünï›", template="Say it."))
    return records


def test_stage2_and_stage3_jsonl_rows_equal_the_file(tmp_path: Path) -> None:
    path = tmp_path / "stage2.jsonl"
    path.write_text("".join(dumps_record(r) + "\n" for r in _records("a", 3)), encoding="utf-8")
    dataset = load_instruct_dataset(path, cache_dir=tmp_path / "cache")
    assert dataset.split == "train"
    assert dataset.column_names == ["id", "task", "prefix", "plain_text"]
    assert [dict(row) for row in dataset] == list(read_jsonl(path))

    shards = tmp_path / "stage3"
    shards.mkdir()
    com = [
        make_com_record(
            id=f"q{k}-{i.value}2{o.value}",
            input_modality=i,
            output_modality=o,
            question_text=f"Question {k}?\nDetails.",
            answer_text="Yes.",
            question_units=UNITS,
            answer_units=UNITS,
        )
        for k in range(2)
        for i in Modality
        for o in Modality
    ]
    # Written out of name order on purpose: a folder loads in sorted name order, as the unsharded build is ordered.
    (shards / "out.00001-of-00002.jsonl").write_text("".join(dumps_record(r) + "\n" for r in com[4:]), "utf-8")
    (shards / "out.00000-of-00002.jsonl").write_text("".join(dumps_record(r) + "\n" for r in com[:4]), "utf-8")
    (shards / "out.jsonl.partial").write_text("{torn", "utf-8")  # an unfinished build is not data
    dataset = load_instruct_dataset(shards, split="validation", cache_dir=tmp_path / "cache")
    assert dataset.split == "validation"
    assert [dict(row) for row in dataset] == com


def test_stage1_text_loads_as_a_text_column(tmp_path: Path) -> None:
    lines = ["<sosp><1><2><eosp>", "<sosp><999><eosp>", "<sosp><0><eosp>"]
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    second.write_text(lines[2] + "\n", encoding="utf-8")
    dataset = load_instruct_dataset([first, str(second)], cache_dir=tmp_path / "cache")
    assert dataset.column_names == ["text"]
    assert dataset["text"] == lines


def test_bad_paths_are_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file or folder"):
        load_instruct_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "a.txt").write_text("<sosp><1><eosp>\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("{}\n", encoding="utf-8")
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="cannot load stage-1 text"):
        load_instruct_dataset([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    with pytest.raises(ValueError, match=r"c\.parquet: expected stage-2/3 JSONL"):
        load_instruct_dataset(tmp_path / "c.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.jsonl, \.json or \.txt files in this folder"):
        load_instruct_dataset(empty)
    with pytest.raises(ValueError, match="no files given"):
        load_instruct_dataset([])
