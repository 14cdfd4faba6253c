"""Corpus readers on tiny fixture corpora written here: LibriSpeech, Common Voice, manifests, instructions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechgpt.audio import SAMPLE_RATE, load_audio
from speechgpt.data.readers import (
    InstructionItem,
    MalformedJsonError,
    ReaderError,
    SpeechItem,
    read_common_voice,
    read_instructions,
    read_librispeech,
    read_speech_corpus,
    read_speech_manifest,
)
from speechgpt.jsonl import JsonlError


def _tone(path: Path, seconds: float = 0.1, fmt: str = "FLAC") -> None:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SAMPLE_RATE, format=fmt)


def _librispeech(root: Path) -> Path:
    """``root/train-clean-mini`` with speakers 19 and 103 (sorted as text: 103 first)."""
    subset = root / "train-clean-mini"
    chapters = {
        ("19", "198"): ["19-198-0000 NORTHANGER ABBEY", "19-198-0001  THIS LITTLE WORK  "],
        ("103", "1240"): ["103-1240-0000 CHAPTER ONE"],
    }
    for (speaker, chapter), lines in chapters.items():
        folder = subset / speaker / chapter
        folder.mkdir(parents=True)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for line in lines:
            _tone(folder / f"{line.split()[0]}.flac")
    return subset


def test_librispeech_tree(tmp_path: Path) -> None:
    subset = _librispeech(tmp_path)
    items = list(read_librispeech(subset))
    folder19 = subset / "19" / "198"
    assert items == [
        SpeechItem("103-1240-0000", str(subset / "103" / "1240" / "103-1240-0000.flac"), "CHAPTER ONE", "103"),
        SpeechItem("19-198-0000", str(folder19 / "19-198-0000.flac"), "NORTHANGER ABBEY", "19"),
        SpeechItem("19-198-0001", str(folder19 / "19-198-0001.flac"), "THIS LITTLE WORK", "19"),
    ]
    assert load_audio(items[0].audio).shape == (int(0.1 * SAMPLE_RATE),)
    assert list(read_librispeech(tmp_path)) == items  # any folder above the speakers works
    assert list(read_speech_corpus(subset)) == items


def test_librispeech_converted_audio_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "ls" / "7" / "8"
    folder.mkdir(parents=True)
    (folder / "7-8.trans.txt").write_text("7-8-0000 HELLO\n7-8-0001 THERE\n7-8-0002\n", encoding="utf-8")
    _tone(folder / "7-8-0000.wav", fmt="WAV")
    items = read_librispeech(tmp_path / "ls")
    assert next(items).audio == str(folder / "7-8-0000.wav")
    assert next(items).audio == str(folder / "7-8-0001.flac")  # missing: the builder reports it for this item
    with pytest.raises(ReaderError, match=r"7-8\.trans\.txt:3: no transcript after the utterance id '7-8-0002'"):
        next(items)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReaderError, match=r"empty: no LibriSpeech transcripts \(\*\.trans\.txt\) found below it"):
        read_librispeech(empty)
    with pytest.raises(FileNotFoundError, match="no such LibriSpeech folder"):
        read_librispeech(tmp_path / "missing")


CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def _common_voice(root: Path, rows: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tsv = root / "validated.tsv"
    tsv.write_text("\n".join([CV_HEADER, *rows]) + "\n", encoding="utf-8")
    return tsv


def test_common_voice_tsv(tmp_path: Path) -> None:
    tsv = _common_voice(
        tmp_path / "cv",
        [
            'abc\tcommon_voice_en_1.mp3\t"Hello," she said.\t2\t0\t\t\t\ten\t',
            "def\tcommon_voice_en_2.mp3\t It's  fine. \t3\t1\ttwenties\tfemale\t\ten\t",
        ],
    )
    items = list(read_common_voice(tsv))
    clips = tmp_path / "cv" / "clips"
    assert items == [
        SpeechItem("common_voice_en_1", str(clips / "common_voice_en_1.mp3"), '"Hello," she said.', "abc"),
        SpeechItem("common_voice_en_2", str(clips / "common_voice_en_2.mp3"), "It's  fine.", "def"),
    ]
    other = tmp_path / "elsewhere"
    assert [i.audio for i in read_common_voice(tsv, clips_dir=other)] == [
        str(other / "common_voice_en_1.mp3"),
        str(other / "common_voice_en_2.mp3"),
    ]
    assert list(read_speech_corpus(tsv)) == items


def test_common_voice_errors_name_the_row(tmp_path: Path) -> None:
    tsv = tmp_path / "bad" / "train.tsv"
    tsv.parent.mkdir()
    tsv.write_text("client_id\tpath\ttext\nabc\ta.mp3\thi\n", encoding="utf-8")
    with pytest.raises(ReaderError, match=r"train\.tsv:1: missing column\(s\) sentence in the header"):
        read_common_voice(tsv)
    rows = _common_voice(
        tmp_path / "cv",
        ["a\tone.mp3\tOne.\t0\t0\t\t\t\ten\t", "b\ttwo.mp3\t\t0\t0\t\t\t\ten\t", "c\tthree.mp3\tThree.\t0"],
    )
    items = read_common_voice(rows)
    assert next(items).text == "One."
    with pytest.raises(ReaderError, match=r"validated\.tsv:3: field 'sentence' is empty"):
        next(items)
    short = _common_voice(tmp_path / "cv2", ["c\tthree.mp3\tThree.\t0"])
    with pytest.raises(ReaderError, match=r"validated\.tsv:2: fewer cells than the header has columns"):
        list(read_common_voice(short))
    repeated = _common_voice(tmp_path / "cv3", ["a\tx.mp3\tOne.\t0\t0\t\t\t\ten\t", "b\tx.mp3\tTwo.\t0\t0\t\t\t\ten\t"])
    with pytest.raises(ReaderError, match=r"validated\.tsv:3: duplicate id 'x' \(first at .*validated\.tsv:2\)"):
        list(read_common_voice(repeated))
    with pytest.raises(FileNotFoundError, match="no such Common Voice TSV"):
        read_common_voice(tmp_path / "none.tsv")


def test_jsonl_manifest_resolves_audio_and_falls_back_to_voice_and_stem(tmp_path: Path) -> None:
    manifest = tmp_path / "world" / "speech_train.jsonl"
    manifest.parent.mkdir()
    absolute = tmp_path / "abs" / "z.wav"
    lines = [
        {"id": "q1-v0", "audio": "audio/train/q1-v0.wav", "text": "What is red?", "voice": "en-us", "kind": "question"},
        {"audio": str(absolute), "text": "  Red is a colour. ", "speaker": "spk7"},
        {"path": "audio/other.flac", "text": "From path."},
    ]
    manifest.write_text("".join(json.dumps(x) + "\n\n" for x in lines), encoding="utf-8")
    items = list(read_speech_manifest(manifest))
    assert items == [
        SpeechItem("q1-v0", str(manifest.parent / "audio/train/q1-v0.wav"), "What is red?", "en-us"),
        SpeechItem("z", str(absolute), "Red is a colour.", "spk7"),
        SpeechItem("other", str(manifest.parent / "audio/other.flac"), "From path.", ""),
    ]
    assert list(read_speech_corpus(manifest)) == items


def test_jsonl_manifest_errors_carry_line_numbers(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "ok"}\n\n{"audio": "b.wav"}\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"m\.jsonl:3: missing field 'text'"):
        list(read_speech_manifest(manifest))
    manifest.write_text('{"audio": "a.wav", "text": "ok"}\n{"audio": "b.wav", "text": \n', encoding="utf-8")
    with pytest.raises(MalformedJsonError, match=r"m\.jsonl:2: not valid JSON") as caught:
        list(read_speech_manifest(manifest))
    assert isinstance(caught.value, JsonlError) and isinstance(caught.value, ReaderError)
    manifest.write_text('{"audio": 3.5, "text": ["x"]}\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"m\.jsonl:1: field 'text' must be a string, got list"):
        list(read_speech_manifest(manifest))
    manifest.write_text('["a.wav", "hi"]\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"m\.jsonl:1: expected a JSON object, got list"):
        list(read_speech_manifest(manifest))
    manifest.write_text('{"audio": "a/x.wav", "text": "1"}\n{"audio": "b/x.wav", "text": "2"}\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"m\.jsonl:2: duplicate id 'x'"):
        list(read_speech_manifest(manifest))
    tsv = tmp_path / "m.tsv"
    tsv.write_text("audio\ttext\n", encoding="utf-8")
    with pytest.raises(ReaderError, match=r"m\.tsv: a speech manifest is \.jsonl or \.csv, not '\.tsv'"):
        read_speech_manifest(tsv)


def test_csv_manifest_with_custom_fields(tmp_path: Path) -> None:
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        'wav,transcript,speaker\nclips/a.wav,"Hello, world",s1\nclips/b.wav,"Two\nlines",s2\nclips/c.wav,Last,\n',
        encoding="utf-8",
    )
    items = list(read_speech_manifest(manifest, audio_field="wav", text_field="transcript"))
    assert items == [
        SpeechItem("a", str(tmp_path / "clips/a.wav"), "Hello, world", "s1"),
        SpeechItem("b", str(tmp_path / "clips/b.wav"), "Two\nlines", "s2"),
        SpeechItem("c", str(tmp_path / "clips/c.wav"), "Last", ""),
    ]
    with pytest.raises(ReaderError, match=r"data\.csv:1: missing column\(s\) audio in the header \(found: wav, "):
        read_speech_manifest(manifest)
    with pytest.raises(ReaderError, match=r"data\.csv:1: missing column\(s\) text in the header"):
        read_speech_manifest(manifest, audio_field="wav")
    # Rows are numbered by file line, so a quoted newline moves the next row to line 4.
    manifest.write_text('audio,text\na.wav,one\nb.wav,"two\nthree"\nc.wav\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"data\.csv:5: fewer cells than the header has columns"):
        list(read_speech_manifest(manifest))
    manifest.write_text("audio,text\na.wav,one,extra\n", encoding="utf-8")
    with pytest.raises(ReaderError, match=r"data\.csv:2: more cells than the header has columns"):
        list(read_speech_manifest(manifest))


def test_corpus_kind_dispatch_and_errors(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("audio,text\na.wav,hi\n", encoding="utf-8")
    assert list(read_speech_corpus(manifest, kind="manifest")) == [SpeechItem("a", str(tmp_path / "a.wav"), "hi")]
    odd = tmp_path / "list.dat"
    odd.write_text("x\n", encoding="utf-8")
    with pytest.raises(ReaderError, match=r"list\.dat: cannot tell the corpus kind"):
        read_speech_corpus(odd)
    with pytest.raises(ValueError, match="unknown corpus kind 'kaldi'; expected one of: auto, librispeech"):
        read_speech_corpus(manifest, kind="kaldi")
    with pytest.raises(FileNotFoundError, match="no such corpus file or folder"):
        read_speech_corpus(tmp_path / "missing")


def test_reading_twice_gives_the_same_items(tmp_path: Path) -> None:
    subset = _librispeech(tmp_path)
    assert list(read_speech_corpus(subset)) == list(read_speech_corpus(subset))


# --- instructions -----------------------------------------------------------------------------------------------


def test_alpaca_json_list(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_data.json"
    data = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": " Add the numbers. ", "output": " 5 ", "id": 77},
    ]
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    items = list(read_instructions(path))
    assert items == [
        InstructionItem("alpaca_data-0", "Give three tips for staying healthy.", "", "1. Eat well."),
        InstructionItem("alpaca_data-1", "Translate to French.", "Good morning", "Bonjour"),
        InstructionItem("77", "Add the numbers.", "", "5"),
    ]
    assert items[0].question == "Give three tips for staying healthy."
    assert items[1].question == "Translate to French.\nGood morning"


def test_instruction_jsonl_with_ids_and_families(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rows = [
        {
            "id": "cap-3",
            "instruction": "What is the capital of France?",
            "input": "",
            "output": "Paris.",
            "family": "capitals",
            "split": "train",
        },
        {"instruction": "Spell cat.", "input": "", "output": "c a t"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert list(read_instructions(path)) == [
        InstructionItem("cap-3", "What is the capital of France?", "", "Paris.", "capitals"),
        InstructionItem("train-1", "Spell cat.", "", "c a t", ""),
    ]


def test_instruction_errors(tmp_path: Path) -> None:
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"q\.jsonl:2: missing field 'output'"):
        list(read_instructions(jsonl))
    jsonl.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", \n', encoding="utf-8")
    with pytest.raises(MalformedJsonError, match=r"q\.jsonl:3: not valid JSON"):
        list(read_instructions(jsonl))
    jsonl.write_text('{"instruction": "  ", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(ReaderError, match=r"q\.jsonl:1: field 'instruction' is empty"):
        list(read_instructions(jsonl))
    jsonl.write_text(
        '{"id": "x", "instruction": "a", "output": "b"}\n{"id": "x", "instruction": "c", "output": "d"}\n',
        encoding="utf-8",
    )
    with pytest.raises(ReaderError, match=r"q\.jsonl:2: duplicate id 'x'"):
        list(read_instructions(jsonl))
    listed = tmp_path / "alpaca.json"
    listed.write_text(
        '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": 4, "output": null}]', encoding="utf-8"
    )
    with pytest.raises(ReaderError, match=r"alpaca\.json: item 1: missing field 'output'"):
        list(read_instructions(listed))
    listed.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]', encoding="utf-8")
    with pytest.raises(MalformedJsonError, match=r"alpaca\.json:3: not valid JSON"):
        list(read_instructions(listed))
    with pytest.raises(FileNotFoundError, match="no such instruction file"):
        read_instructions(tmp_path / "none.json")
