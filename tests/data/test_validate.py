"""Validation of SpeechInstruct files: every rule fails on a bad line (with its line number) and passes a good one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from speechgpt.data.records import make_asr_record, make_com_record, make_tts_record
from speechgpt.data.validate import (
    InvalidRecordError,
    RecordProblem,
    check_record,
    check_unit_line,
    ensure_valid,
    validate_file,
)
from speechgpt.jsonl import dumps_record
from speechgpt.prompt_format import META_INSTRUCTION, Modality

UNITS = "<sosp><1><2><3><eosp>"


def _asr(i: int = 0) -> dict[str, Any]:
    return make_asr_record(id=f"u{i}-asr", units=UNITS, transcript="a cat sat", template="Transcribe it.")


def _raw(plain_text: str, **extra: Any) -> dict[str, Any]:
    return {"prefix": META_INSTRUCTION, "plain_text": plain_text, **extra}


def _matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _only_problem_at_line_2(tmp_path: Path, bad_line: str, **kwargs: Any) -> list[RecordProblem]:
    """Validate good / bad / good and check that line 2, and only line 2, has problems."""
    path = _write(tmp_path / "data.jsonl", [dumps_record(_asr(1)), bad_line, dumps_record(_asr(3))])
    report = validate_file(path, **kwargs)
    assert report.records == 3
    assert not report.ok
    assert report.invalid_records == 1
    assert {p.line for p in report.problems} == {2}, report.summary()
    return report.problems


# (bad line, field, fragment of the message); each is also a passing case once fixed, see test_good_file_passes.
BAD_LINES = [
    ('{"prefix": "x", "plain_text": ', "json", r"not valid JSON \(Expecting value at column 31\)"),
    ("[1, 2]", "record", "expected a JSON object, got list"),
    (json.dumps({"plain_text": _asr()["plain_text"]}), "prefix", "missing"),
    (json.dumps({"prefix": 3, "plain_text": _asr()["plain_text"]}), "prefix", "must be a string, got int"),
    (json.dumps({"prefix": META_INSTRUCTION}), "plain_text", "missing"),
    (json.dumps({**_asr(), "id": 7}), "id", "must be a non-empty string, got 7"),
    (json.dumps({**_asr(), "task": "asr2"}), "task", "unknown task 'asr2'; expected one of: asr, tts, com-"),
    (json.dumps(_raw("Human: hi<eoh>. [SpeechGPT]: yo<eoa>")), "plain_text", r"must start with '\[Human\]: '"),
    (
        json.dumps(_raw("[Human]: hi [Human]: again<eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        r"'\[Human\]' must appear exactly once, found 2",
    ),
    (json.dumps(_raw("[Human]: hi. [SpeechGPT]: yo<eoa>")), "plain_text", "'<eoh>' must appear exactly once, found 0"),
    (
        json.dumps(_raw("[Human]: hi<eoh> [SpeechGPT]: yo<eoa>")),
        "plain_text",
        r"'<eoh>' must be followed by '. \[SpeechGPT\]: '",
    ),
    (json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: yo")), "plain_text", "must end with '<eoa>'"),
    (
        json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: yo<eoa> more<eoa>")),
        "plain_text",
        "'<eoa>' must appear exactly once, found 2",
    ),
    (
        json.dumps(_raw("[Human]: Say it. This is input: <sosp><1><2><eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        "<sosp> at char 32 is never closed by <eosp>",
    ),
    (
        json.dumps(_raw("[Human]: Say it. <1><2><eosp><eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        "<eosp> at char 23 closes no <sosp>",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><sosp><2><eosp><eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        r"nested <sosp> at char 18 \(the <sosp> at char 9 is still open\)",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1>hello<2><eosp><eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        "speech span at char 9 holds something other than unit tokens <N>: 'hello'",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><eosp><eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        "speech span at char 9 holds no unit",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><1000><2000><eosp><eoh>. [SpeechGPT]: yo<eoa>")),
        "plain_text",
        r"2 unit id\(s\) out of range, up to <2000> \(ids must be below 1000\)",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><eosp><eoh>. [SpeechGPT]: it is <12> now<eoa>")),
        "plain_text",
        r"1 unit token\(s\) outside a speech span, first <12>",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><eosp><eoh>. [SpeechGPT]: it is <eos> now<eoa>")),
        "plain_text",
        "the answer holds a control string at '<eos> now'",
    ),
    (
        json.dumps(_raw("[Human]: [tq] hi<eoh>. [SpeechGPT]: [ta] yo<eoa>")),
        "plain_text",
        r"the question holds a control string at '\[tq\] hi'",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><eosp><eoh>. [SpeechGPT]: hi; [ta] yo <EOH><eoa>")),
        "plain_text",
        "the answer holds a control string at '<EOH>'",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><eosp><eoh>. [SpeechGPT]: hi [ta] yo<eoa>")),
        "plain_text",
        r"'\[ta\]' must start the response or follow '; '",
    ),
    (
        json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: [ta] yo [ta] yo<eoa>")),
        "plain_text",
        r"'\[ta\]' appears 2 times in the response",
    ),
    (
        json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: [ua] <sosp><1><eosp>; [ta] yo<eoa>")),
        "plain_text",
        r"'\[ua\]' must end the response as '; \[ua\] <sosp>...<eosp>'",
    ),
    (
        json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: yo; [ua] <sosp><1><eosp><eoa>")),
        "plain_text",
        r"'\[ua\]' needs a text answer before it, tagged '\[ta\]'",
    ),
    (
        json.dumps(_raw("[Human]: <sosp><1><eosp><eoh>. [SpeechGPT]: yo <sosp><2><eosp><eoa>")),
        "plain_text",
        r"a speech span in the response must be all of it or follow '\[ua\]'",
    ),
    (json.dumps(_raw("[Human]:  <eoh>. [SpeechGPT]: yo<eoa>")), "plain_text", "the question is empty"),
    (json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: <eoa>")), "plain_text", "the response is empty"),
    (json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: [ta]  <eoa>")), "plain_text", r"the text answer after '\[ta\]'"),
    (
        json.dumps({**make_tts_record(id="t", units=UNITS, text="hi", template="Say it."), "task": "asr"}),
        "plain_text",
        "task 'asr' expects one speech span in the question and a plain text response",
    ),
    (
        json.dumps({**_asr(), "task": "tts"}),
        "plain_text",
        "task 'tts' expects a text question and a response that is one speech span",
    ),
    (
        json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: [ta] yo<eoa>", task="com-speech2text")),
        "plain_text",
        r"task 'com-speech2text' expects a spoken question \(one speech span\) and its transcript",
    ),
    (
        json.dumps(_raw("[Human]: hi<eoh>. [SpeechGPT]: [ta] yo<eoa>", task="com-text2speech")),
        "plain_text",
        r"task 'com-text2speech' expects a spoken answer after '\[ua\]'",
    ),
    (
        json.dumps({**_asr(), "prefix": "You are [SpeechGPT]."}),
        "prefix",
        r"the prefix holds a control string at '\[SpeechGPT\]",
    ),
    (json.dumps(_asr(1)), "id", r"duplicate id 'u1-asr' \(first on line 1\)"),
]


@pytest.mark.parametrize(("bad_line", "field", "message"), BAD_LINES, ids=[f"rule{i}" for i in range(len(BAD_LINES))])
def test_each_rule_reports_its_line(tmp_path: Path, bad_line: str, field: str, message: str) -> None:
    problems = _only_problem_at_line_2(tmp_path, bad_line)
    assert any(p.field == field and _matches(message, p.message) for p in problems), problems


def test_good_file_passes_and_counts_tasks(tmp_path: Path) -> None:
    units = "<sosp><0><999><eosp>"
    records = [
        _asr(0),
        make_tts_record(id="u0-tts", units=units, text="a cat sat", template="Say it."),
        *(
            make_com_record(
                id=f"q-{i.value}2{o.value}",
                input_modality=i,
                output_modality=o,
                question_text="Is ice cold?",
                answer_text="Yes.",
                question_units=units,
                answer_units=units,
            )
            for i in Modality
            for o in Modality
        ),
        _raw("[Human]: hi <eoh>. [SpeechGPT]: hello<eoa>"),  # released variant: a space before <eoh>, no id/task
    ]
    path = _write(
        tmp_path / "ok.jsonl", [dumps_record(r) for r in records[:3]] + [""] + [json.dumps(r) for r in records[3:]]
    )
    report = validate_file(path)
    assert report.ok, report.summary()
    assert report.records == 7
    assert report.counts == {
        "asr": 1,
        "tts": 1,
        "com-speech2speech": 1,
        "com-speech2text": 1,
        "com-text2speech": 1,
        "com-text2text": 1,
        "untagged": 1,
    }
    assert report.stage == 3
    assert report.summary().splitlines()[0] == f"{path}: 7 records (stage 3): OK"


def test_released_chain_of_modality_example_passes() -> None:
    record = {
        "prefix": META_INSTRUCTION,
        "plain_text": "[Human]: <sosp><661><588><604><157><596><499><eosp><eoh>. [SpeechGPT]: What is a bad "
        "term for poop?; [ta] A bad term for poop is excrement.; [ua] <sosp><497><63><264><eosp><eoa>",
    }
    assert check_record(record) == []
    assert check_record({**record, "task": "com-speech2speech"}) == []


def test_many_bad_lines_are_all_reported_and_the_list_is_capped(tmp_path: Path) -> None:
    lines = [dumps_record(_asr(0))] + ["{bad"] * 5 + [dumps_record(_asr(9))]
    path = _write(tmp_path / "bad.jsonl", lines)
    report = validate_file(path)
    assert [p.line for p in report.problems] == [2, 3, 4, 5, 6]
    assert report.invalid_records == 5 and report.num_problems == 5 and not report.truncated
    capped = validate_file(path, max_problems=2)
    assert [p.line for p in capped.problems] == [2, 3]
    assert capped.num_problems == 5 and capped.truncated
    summary = capped.summary().splitlines()
    assert summary[0] == f"{path}: 7 records (stage 2): 5 invalid, 5 problems"
    assert summary[2].startswith(f"{path}:2: json: not valid JSON")
    assert summary[-1] == "... and 3 more problems"


def test_invalid_utf8_line_is_reported_and_the_rest_checked(tmp_path: Path) -> None:
    path = tmp_path / "enc.jsonl"
    path.write_bytes(
        dumps_record(_asr(0)).encode() + b"\n" + b'{"prefix": "\xff"}\n' + dumps_record(_asr(2)).encode() + b"\n"
    )
    report = validate_file(path)
    assert [(p.line, p.field) for p in report.problems] == [(2, "encoding")]
    assert "not UTF-8 (invalid start byte at byte 12)" in report.problems[0].message
    assert report.records == 3


def test_stage_mismatch_and_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.jsonl", [dumps_record(_asr(0))])
    assert validate_file(path, stage=2).ok
    report = validate_file(path, stage=3)
    assert [(p.line, p.field, p.message) for p in report.problems] == [
        (1, "task", "task 'asr' does not belong in a stage-3 file")
    ]
    empty = _write(tmp_path / "empty.jsonl", [])
    report = validate_file(empty)
    assert [(p.line, p.field, p.message) for p in report.problems] == [(0, "file", "no records")]
    assert report.invalid_records == 0 and not report.ok


class _CharTokenizer:
    """One token per character, through ``encode`` like a Hugging Face tokenizer."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


class _Encoding:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids


def test_token_budget_with_encode_call_and_tokenizers_styles(tmp_path: Path) -> None:
    record = _asr(0)
    length = len(record["prefix"] + record["plain_text"])
    assert check_record(record, tokenizer=_CharTokenizer(), max_tokens=length) == []
    assert check_record(record, tokenizer=_CharTokenizer(), max_tokens=length - 1) == [
        f"tokens: prefix + plain_text is {length} tokens, more than max_tokens={length - 1}"
    ]
    words = lambda text: {"input_ids": text.split()}  # noqa: E731 - a callable returning a BatchEncoding-like dict
    n_words = len((record["prefix"] + record["plain_text"]).split())
    assert check_record(record, tokenizer=words, max_tokens=n_words) == []
    assert len(check_record(record, tokenizer=words, max_tokens=n_words - 1)) == 1

    class Fast:
        def encode(self, text: str) -> _Encoding:
            return _Encoding(list(range(len(text))))

    assert len(check_record(record, tokenizer=Fast(), max_tokens=length - 1)) == 1
    longer = make_asr_record(id="b", units=UNITS, transcript="a cat sat!", template="Transcribe it.")
    path = _write(tmp_path / "t.jsonl", [dumps_record(record), dumps_record(longer), dumps_record(_asr(5))])
    report = validate_file(path, tokenizer=_CharTokenizer(), max_tokens=length)
    assert [(p.line, p.field) for p in report.problems] == [(2, "tokens")]
    with pytest.raises(ValueError, match="max_tokens needs a tokenizer"):
        check_record(record, max_tokens=10)
    with pytest.raises(ValueError, match="has no encode"):
        check_record(record, tokenizer=object(), max_tokens=10)
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        check_record(record, tokenizer=_CharTokenizer(), max_tokens=0)


def test_num_units_limits_ids() -> None:
    record = make_asr_record(id="a", units="<sosp><5><12><eosp>", transcript="hi", template="Transcribe it.")
    assert check_record(record) == []
    start = record["plain_text"].index("<sosp>")
    assert check_record(record, num_units=10) == [
        f"plain_text: speech span at char {start} has 1 unit id(s) out of range, up to <12> (ids must be below 10)"
    ]
    with pytest.raises(ValueError, match="num_units must be a positive integer"):
        check_record(record, num_units=0)


def test_ensure_valid_raises_with_every_problem() -> None:
    ensure_valid(_asr(0))
    bad = {**_asr(0), "prefix": 1, "plain_text": "[Human]: hi<eoh>. [SpeechGPT]: <12><eoa>"}
    with pytest.raises(InvalidRecordError) as caught:
        ensure_valid(bad)
    assert caught.value.record_id == "u0-asr"
    assert caught.value.problems == [
        "prefix: must be a string, got int",
        "plain_text: 1 unit token(s) outside a speech span, first <12>",
    ]
    assert str(caught.value).startswith("record 'u0-asr' is invalid: prefix: must be a string")
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidRecordError, match="record is invalid: record: expected a JSON object, got str"):
        ensure_valid("not a record")


# --- stage 1 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("hello", "must be one <sosp>...<eosp> span and nothing else, got 'hello'"),
        ("", "empty line"),
        ("<sosp><eosp>", "speech span holds no unit"),
        ("<sosp><1><eosp> <sosp><2><eosp>", "must hold exactly one <sosp>...<eosp> span"),
        (" <sosp><1><eosp>", "must be one <sosp>...<eosp> span and nothing else"),
        ("<sosp><1><eosp>x", "must be one <sosp>...<eosp> span and nothing else"),
        ("<sosp><1><1000><eosp>", r"1 unit id\(s\) out of range, up to <1000>"),
        ("<sosp><1><-2><eosp>", "something other than unit tokens <N>: '<-2>'"),
    ],
)
def test_stage1_lines(tmp_path: Path, line: str, message: str) -> None:
    assert check_unit_line("<sosp><0><999><eosp>\n") == []
    assert check_unit_line("<sosp><0><999><eosp>\r\n") == []
    problems = check_unit_line(line)
    assert len(problems) == 1 and _matches(message, problems[0]), problems
    path = _write(tmp_path / "units.txt", ["<sosp><1><eosp>", line, "<sosp><2><3><eosp>"])
    report = validate_file(path)
    assert report.stage == 1
    assert report.counts == {"units": 3}
    assert [(p.line, p.field) for p in report.problems] == [(2, "units")]


def test_stage1_inferred_from_content_and_checked_as_records_when_told(tmp_path: Path) -> None:
    path = _write(tmp_path / "units.dat", ["", "<sosp><1><eosp>", "<sosp><2><eosp>"])
    report = validate_file(path)
    assert report.stage == 1
    assert [(p.line, p.message) for p in report.problems] == [
        (1, "empty line (stage-1 lines are one <sosp>...<eosp> each)")
    ]
    ok = _write(tmp_path / "units.txt", ["<sosp><1><eosp>", "<sosp><2><eosp>"])
    assert validate_file(ok).ok
    as_jsonl = validate_file(ok, stage=2)
    assert [(p.line, p.field) for p in as_jsonl.problems] == [(1, "json"), (2, "json")]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file"):
        validate_file(tmp_path / "missing.jsonl")
    path = _write(tmp_path / "a.jsonl", [dumps_record(_asr(0))])
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3, got 4"):
        validate_file(path, stage=4)
    with pytest.raises(ValueError, match="max_problems must be a non-negative integer"):
        validate_file(path, max_problems=-1)
    with pytest.raises(ValueError, match="max_tokens needs a tokenizer"):
        validate_file(path, max_tokens=5)
