"""The stage builders: content, validation, bad input, determinism, sharding, and killed-then-resumed builds."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechgpt.audio import change_speed, load_audio
from speechgpt.constants import SAMPLE_RATE
from speechgpt.data.builders import (
    ALL_COMBOS,
    BuildFailure,
    build_stage1,
    build_stage2,
    build_stage3,
    combo_name,
    merge_shards,
    shard_path,
    shard_paths,
)
from speechgpt.data.records import make_asr_record, make_com_record, make_tts_record
from speechgpt.data.templates import Direction, load_templates, pick_template, stable_index
from speechgpt.data.tts import EspeakEngine, VoiceSettings
from speechgpt.data.validate import validate_file
from speechgpt.jsonl import read_jsonl
from speechgpt.manifest import ManifestError
from speechgpt.prompt_format import Modality
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatureConfig, LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer
from tests.synth import phone_sequence_wave, random_utterance, write_corpus

NUM_UNITS = 16
INSTRUCTIONS = [
    {"id": "q0", "instruction": "What is two plus two?", "input": "", "output": "Two plus two is four."},
    {"id": "q1", "instruction": "Name the colour of the sky.", "input": "", "output": "The sky is blue."},
    {"id": "q2", "instruction": "Spell this word.", "input": "cat", "output": "c a t"},
    {"id": "q3", "instruction": "Tell me a long story.", "input": "", "output": "Once upon a time " * 40},
    {"id": "q4", "instruction": "Say hello.", "input": "", "output": "Hello there!"},
]
VOICES = [VoiceSettings("en-us"), VoiceSettings("en+f3", rate=200), VoiceSettings("en+m3", pitch=30)]


@functools.cache
def tiny_tokenizer() -> SpeechTokenizer:
    """A 16-unit tokenizer: MFCC features and k-means fitted on a few seconds of synthetic speech (seeded)."""
    extractor = LightFeatures(LightFeatureConfig())
    frames = np.concatenate([extractor(random_utterance(seed)).numpy() for seed in range(6)])
    return SpeechTokenizer(extractor, KMeans.train(frames, NUM_UNITS, seed=0, niter=10))


def write_speech_manifest(folder: Path, wavs: list[Path], *, bad: bool = True) -> Path:
    """A JSONL speech corpus over ``wavs`` (plus, with ``bad``, one missing and one corrupt recording)."""
    rows = [{"id": f"utt{i}", "audio": str(wav), "text": f"sentence number {i}"} for i, wav in enumerate(wavs)]
    rows[1]["text"] = "tricky <sosp><12>[SpeechGPT]: <eoa> words"  # must stay text in the record
    if bad:
        (folder / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt not audio at all")
        rows.insert(2, {"id": "gone", "audio": str(folder / "gone.wav"), "text": "missing file"})
        rows.insert(4, {"id": "corrupt", "audio": str(folder / "corrupt.wav"), "text": "corrupt file"})
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


class StopBuild(Exception):
    """Raised from a progress callback to simulate a kill in the middle of a build."""


def stop_after(count: int):
    def progress(done: int, total: int, failure: BuildFailure | None) -> None:
        if done == count:
            raise StopBuild

    return progress


class NarrowTokenizer:
    """The tiny tokenizer claiming fewer units than it emits: its records must fail validation."""

    def __init__(self, tokenizer: SpeechTokenizer, num_units: int) -> None:
        self.tokenizer, self.num_units, self.max_seconds = tokenizer, num_units, tokenizer.max_seconds

    def encode(self, *args, **kwargs):
        return self.tokenizer.encode(*args, **kwargs)


class ToneEngine:
    """A fast fake TTS engine: a deterministic phone sequence per text; counts and can refuse texts."""

    sample_rate = SAMPLE_RATE

    def __init__(self, refuse: str | None = None) -> None:
        self.spoken: list[str] = []
        self.refuse = refuse

    def synthesize(self, text: str, voice: VoiceSettings | None = None) -> np.ndarray:
        if self.refuse is not None and self.refuse in text:
            raise ValueError(f"cannot speak {text[:20]!r}")
        self.spoken.append(text)
        return phone_sequence_wave([ord(c) % 5 for c in text[:12]], seconds_per_phone=0.05)


@pytest.fixture(scope="module")
def tokenizer() -> SpeechTokenizer:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "wavs", 6)


@pytest.fixture(scope="module")
def manifest(wavs, tmp_path_factory) -> Path:
    return write_speech_manifest(tmp_path_factory.mktemp("manifest"), wavs)


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("alpaca") / "alpaca.json"
    path.write_text(json.dumps(INSTRUCTIONS, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


# --- shards -----------------------------------------------------------------------------------------------------


def test_shard_names():
    assert shard_path("data/out.jsonl", 1, 4) == Path("data/out.00001-of-00004.jsonl")
    assert shard_path("out.txt", 0, 12) == Path("out.00000-of-00012.txt")
    assert shard_path("out.jsonl", 0, 1) == Path("out.jsonl")
    assert shard_paths("o.jsonl", 2) == [Path("o.00000-of-00002.jsonl"), Path("o.00001-of-00002.jsonl")]
    with pytest.raises(ValueError, match=r"--shard must be in 0\.\.3"):
        shard_path("out.jsonl", 4, 4)


def test_merge_needs_every_finished_shard(tmp_path):
    out = tmp_path / "m.jsonl"
    with pytest.raises(FileNotFoundError, match="no shard files"):
        merge_shards(out)
    first, second, third = shard_paths(out, 3)
    first.write_text('{"id": "a"}\n')
    third.write_text('{"id": "c"}')  # no final newline: merge adds it
    second.with_name(second.name + ".partial").write_text('{"id": "b"}\n')
    with pytest.raises(FileNotFoundError, match=r"m\.00001-of-00003\.jsonl: shard 1 of 3 is not finished"):
        merge_shards(out)
    second.with_name(second.name + ".partial").rename(second)
    assert merge_shards(out) == [first, second, third]
    assert out.read_text() == '{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'
    shard_path(out, 0, 2).write_text("")
    with pytest.raises(ValueError, match=r"different shard counts \[2, 3\]"):
        merge_shards(out)
    assert merge_shards(out, num_shards=3) == [first, second, third]
    with pytest.raises(FileNotFoundError, match="shard 1 of 2 is missing"):
        merge_shards(out, num_shards=2)


# --- stage 1 ----------------------------------------------------------------------------------------------------


def test_stage1_one_valid_unit_line_per_recording_and_bad_audio_reported(tokenizer, wavs, tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_text("not audio")
    tiny = tmp_path / "tiny.wav"
    import soundfile as sf

    sf.write(tiny, np.zeros(100, np.float32), SAMPLE_RATE)  # shorter than one 25 ms window
    out = tmp_path / "stage1.txt"
    sources = [wavs[0], corrupt, wavs[0].parent, tiny, tmp_path / "gone.wav"]
    result = build_stage1(sources, tokenizer, out)
    assert result.output == out
    expected = [tokenizer.encode(wav).to_string() for wav in wavs]  # the folder repeats wavs[0]: kept once
    assert out.read_text().splitlines() == expected
    assert [f.item for f in result.failures] == [str(corrupt), str(tiny), str(tmp_path / "gone.wav")]
    assert str(result.failures[0]) == f"{corrupt}: unreadable or not audio (Format not recognised.)"
    assert "too short" in result.failures[1].message and "file not found" in result.failures[2].message
    assert not result.ok and result.skipped == []
    report = validate_file(out, num_units=NUM_UNITS)
    assert report.ok and report.records == len(wavs)
    stats = result.stats
    assert (stats.stage, stats.items, stats.records, stats.failed, stats.resumed) == (1, 9, 6, 3, 0)
    assert stats.audio_seconds == pytest.approx(sum(len(load_audio(w)) for w in wavs) / SAMPLE_RATE)
    assert stats.units == sum(line.count("<") - 2 for line in expected)
    assert stats.tasks == {"units": 6} and stats.unit_lengths.count == 6


def test_stage1_missing_input_is_a_clear_error(tokenizer, tmp_path):
    with pytest.raises(ManifestError, match="no such file or folder"):
        build_stage1([tmp_path / "nowhere"], tokenizer, tmp_path / "o.txt")


def test_stage1_killed_and_resumed_equals_uninterrupted(tokenizer, wavs, tmp_path):
    whole = build_stage1(wavs, tokenizer, tmp_path / "whole.txt")
    out = tmp_path / "resumed.txt"
    with pytest.raises(StopBuild):
        build_stage1(wavs, tokenizer, out, progress=stop_after(4))
    assert not out.exists()  # only a finished build publishes the text file
    assert len(Path(str(out) + ".units.jsonl.partial").read_text().splitlines()) == 4
    seen = []
    resumed = build_stage1(wavs, tokenizer, out, progress=lambda done, total, failure: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert resumed.stats.resumed == 4 and resumed.stats.records == 2
    assert out.read_bytes() == (tmp_path / "whole.txt").read_bytes()
    assert whole.stats.records == 6
    again = build_stage1(wavs, tokenizer, out)  # a finished build run again is a no-op
    assert again.stats.records == 0 and again.stats.resumed == 6
    assert out.read_bytes() == (tmp_path / "whole.txt").read_bytes()


def test_stage1_shards_together_are_the_whole_build(tokenizer, wavs, tmp_path):
    build_stage1(wavs, tokenizer, tmp_path / "whole.txt")
    whole = (tmp_path / "whole.txt").read_text().splitlines()
    for shard in range(4):
        build_stage1(wavs, tokenizer, shard_path(tmp_path / "s.txt", shard, 4), shard=shard, num_shards=4)
        assert shard_path(tmp_path / "s.txt", shard, 4).read_text().splitlines() == whole[shard::4]
    merge_shards(tmp_path / "s.txt")
    merged = (tmp_path / "s.txt").read_text().splitlines()
    assert merged == [line for shard in range(4) for line in whole[shard::4]]
    assert sorted(merged) == sorted(whole)


def test_stage1_refuses_to_resume_with_another_tokenizer(tokenizer, wavs, tmp_path):
    out = tmp_path / "o.txt"
    build_stage1(wavs[:2], tokenizer, out)
    extractor = LightFeatures(LightFeatureConfig())
    other = SpeechTokenizer(extractor, KMeans.train(extractor(random_utterance(7)).numpy(), 8, seed=1, niter=3))
    with pytest.raises(ValueError, match=r"an earlier build used other settings \(tokenizer\)"):
        build_stage1(wavs, other, out)
    result = build_stage1(wavs, other, out, overwrite=True)
    assert result.stats.records == 6 and result.stats.resumed == 0
    assert out.read_text().splitlines() == [other.encode(w).to_string() for w in wavs]


def test_stage1_invalid_unit_lines_are_reported_and_never_written(tokenizer, wavs, tmp_path):
    out = tmp_path / "o.txt"
    result = build_stage1(wavs[:3], NarrowTokenizer(tokenizer, 4), out)
    assert out.read_text() == ""
    assert len(result.failures) == 3 and result.stats.records == 0
    for failure, wav in zip(result.failures, wavs[:3], strict=True):
        assert failure.message.startswith(f"{wav}: ") and "(ids must be below 4)" in failure.message


# --- stage 2 ----------------------------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_stage2_writes_asr_and_tts_records_with_stable_templates(tokenizer, manifest, wavs, tmp_path):
    out = tmp_path / "stage2.jsonl"
    result = build_stage2(manifest, tokenizer, out, seed=3)
    records = list(read_jsonl(out))
    assert [r["id"] for r in records] == [f"utt{i}-{d}" for i in range(6) for d in ("asr", "tts")]
    asr_templates, tts_templates = load_templates(Direction.SPEECH_TO_TEXT), load_templates(Direction.TEXT_TO_SPEECH)
    rows = [json.loads(line) for line in _lines(manifest)]
    texts = {row["id"]: row["text"] for row in rows}
    for i, wav in enumerate(wavs):
        units = tokenizer.encode(wav).to_string()
        asr, tts = records[2 * i], records[2 * i + 1]
        assert asr == make_asr_record(
            id=f"utt{i}-asr",
            units=units,
            transcript=texts[f"utt{i}"],
            template=pick_template(asr_templates, key=f"utt{i}-asr", seed=3),
            num_units=NUM_UNITS,
        )
        assert tts == make_tts_record(
            id=f"utt{i}-tts",
            units=units,
            text=texts[f"utt{i}"],
            template=pick_template(tts_templates, key=f"utt{i}-tts", seed=3),
            num_units=NUM_UNITS,
        )
    assert "[SpeechGPT]: <eoa>" not in records[2]["plain_text"] and "‹sosp›" in records[2]["plain_text"]
    assert [f.item for f in result.failures] == ["gone", "corrupt"]
    assert str(result.failures[0]).startswith(str(manifest.parent / "gone.wav")) and "not found" in str(
        result.failures[0]
    )
    report = validate_file(out, stage=2, num_units=NUM_UNITS)
    assert report.ok, report.summary()
    assert report.counts == {"asr": 6, "tts": 6}
    stats = result.stats
    assert (stats.items, stats.records, stats.failed) == (8, 12, 2)
    assert stats.tasks == {"asr": 6, "tts": 6}
    assert stats.audio_seconds == pytest.approx(sum(len(load_audio(w)) for w in wavs) / SAMPLE_RATE)


def test_stage2_seed_and_directions(tokenizer, manifest, tmp_path):
    build_stage2(manifest, tokenizer, tmp_path / "a.jsonl", seed=0)
    build_stage2(manifest, tokenizer, tmp_path / "b.jsonl", seed=0)
    build_stage2(manifest, tokenizer, tmp_path / "c.jsonl", seed=1)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    only = build_stage2(manifest, tokenizer, tmp_path / "tts.jsonl", directions=("tts",))
    assert only.stats.tasks == {"tts": 6}
    assert _lines(tmp_path / "tts.jsonl") == [line for line in _lines(tmp_path / "a.jsonl") if '"tts"' in line]
    for bad in ((), ("asr", "asr"), ("asr", "translate")):
        with pytest.raises(ValueError, match="directions must be distinct values among"):
            build_stage2(manifest, tokenizer, tmp_path / "x.jsonl", directions=bad)


def test_stage2_speed_perturbed_asr_records(tokenizer, manifest, wavs, tmp_path):
    out = tmp_path / "speed.jsonl"
    result = build_stage2(manifest, tokenizer, out, speed_perturbation=(0.9, 1.1), seed=3)
    records = list(read_jsonl(out))
    names = ("asr", "tts", "asr-speed0.9", "asr-speed1.1")
    assert [r["id"] for r in records] == [f"utt{i}-{name}" for i in range(6) for name in names]
    # The original records are those of a build without copies; a copy is the ASR record of the faster/slower audio.
    plain = build_stage2(manifest, tokenizer, tmp_path / "plain.jsonl", seed=3)
    assert [r for r in records if "speed" not in r["id"]] == list(read_jsonl(plain.output))
    templates = load_templates(Direction.SPEECH_TO_TEXT)
    texts = {row["id"]: row["text"] for row in map(json.loads, _lines(manifest))}
    for i, wav in enumerate(wavs):
        for factor, record in zip((0.9, 1.1), records[4 * i + 2 : 4 * i + 4], strict=True):
            units = tokenizer.encode(change_speed(load_audio(wav), factor), sample_rate=SAMPLE_RATE)
            record_id = f"utt{i}-asr-speed{factor:g}"
            assert record == make_asr_record(
                id=record_id,
                units=units.to_string(),
                transcript=texts[f"utt{i}"],
                template=pick_template(templates, key=record_id, seed=3),
                num_units=NUM_UNITS,
            )
    # Faster speech has fewer frames; the deduplicated units of the same words differ from the original's.
    faster = tokenizer.encode(change_speed(load_audio(wavs[0]), 1.1), sample_rate=SAMPLE_RATE)
    own = tokenizer.encode(wavs[0])
    assert faster.ids.tolist() != own.ids.tolist() and faster.durations.sum() < own.durations.sum()
    assert result.stats.tasks == {"asr": 18, "tts": 6} and result.stats.failed == 2
    assert validate_file(out, stage=2, num_units=NUM_UNITS).ok
    with pytest.raises(ValueError, match=r"other settings \(speed_perturbation\)"):
        build_stage2(manifest, tokenizer, out, speed_perturbation=(0.9,), seed=3)
    for bad in ((1.0,), (0.9, 0.9), (2.5,), (0.3,)):
        with pytest.raises(ValueError, match="distinct factors in"):
            build_stage2(manifest, tokenizer, tmp_path / "x.jsonl", speed_perturbation=bad)
    with pytest.raises(ValueError, match="needs 'asr'"):
        build_stage2(manifest, tokenizer, tmp_path / "x.jsonl", directions=("tts",), speed_perturbation=(1.1,))


def test_stage2_user_templates(tokenizer, manifest, tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "speech_to_text.txt").write_text("# mine\nWrite down the words.\n")
    (folder / "text_to_speech.txt").write_text("Speak up.\n")
    build_stage2(manifest, tokenizer, tmp_path / "o.jsonl", templates_dir=folder)
    for record in read_jsonl(tmp_path / "o.jsonl"):
        expected = "Write down the words. This is input: " if record["task"] == "asr" else "Speak up. This is input: "
        assert record["plain_text"].startswith("[Human]: " + expected)
    with pytest.raises(FileNotFoundError, match="no such template file"):
        build_stage2(manifest, tokenizer, tmp_path / "p.jsonl", templates_dir=tmp_path / "none")


def test_stage2_killed_and_resumed_equals_uninterrupted(tokenizer, manifest, tmp_path):
    build_stage2(manifest, tokenizer, tmp_path / "whole.jsonl", seed=5)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(StopBuild):
        build_stage2(manifest, tokenizer, out, seed=5, progress=stop_after(4))
    partial = Path(str(out) + ".partial")
    # Items in order: utt0, utt1, gone (fails), utt2: two records each for the three good ones.
    assert not out.exists() and [json.loads(line)["id"] for line in _lines(partial)] == [
        f"utt{i}-{d}" for i in range(3) for d in ("asr", "tts")
    ]
    # A kill between an item's two records, and a torn last line: drop utt2-tts and cut into utt2-asr.
    lines = _lines(partial)
    partial.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25], encoding="utf-8")
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        build_stage2(manifest, tokenizer, out, seed=6)
    resumed = build_stage2(manifest, tokenizer, out, seed=5)
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert resumed.stats.resumed == 4 and resumed.stats.records == 8 and resumed.stats.failed == 2


def test_stage2_shards_together_are_the_whole_build(tokenizer, manifest, tmp_path):
    build_stage2(manifest, tokenizer, tmp_path / "whole.jsonl")
    whole = _lines(tmp_path / "whole.jsonl")
    by_item: dict[str, list[str]] = {}
    for line in whole:
        by_item.setdefault(json.loads(line)["id"].rsplit("-", 1)[0], []).append(line)
    item_ids = [json.loads(line)["id"] for line in _lines(manifest)]
    for shard in range(3):
        path = shard_path(tmp_path / "s.jsonl", shard, 3)
        build_stage2(manifest, tokenizer, path, shard=shard, num_shards=3)
        assert _lines(path) == [line for item in item_ids[shard::3] for line in by_item.get(item, [])]
    merge_shards(tmp_path / "s.jsonl")
    assert sorted(_lines(tmp_path / "s.jsonl")) == sorted(whole)
    assert validate_file(tmp_path / "s.jsonl", num_units=NUM_UNITS).ok


def test_stage2_invalid_records_are_reported_and_never_written(tokenizer, manifest, tmp_path):
    out = tmp_path / "o.jsonl"
    result = build_stage2(manifest, NarrowTokenizer(tokenizer, 3), out)
    assert out.read_text() == ""
    failed_records = [f.item for f in result.failures if f.item not in ("gone", "corrupt")]
    assert failed_records == [f"utt{i}-{d}" for i in range(6) for d in ("asr", "tts")]
    assert result.failures[0].message.startswith("utt0-asr: units: ") and "(ids must be below 3)" in str(
        result.failures[0]
    )


def test_stage2_duplicate_ids_are_refused(tokenizer, wavs, tmp_path):
    first = write_speech_manifest(tmp_path, wavs[:2], bad=False)
    copy = tmp_path / "copy.jsonl"
    copy.write_text(first.read_text())
    with pytest.raises(ValueError, match="item id 'utt0' appears more than once"):
        build_stage2([first, copy], tokenizer, tmp_path / "o.jsonl")


# --- stage 3 ----------------------------------------------------------------------------------------------------


def test_stage3_speaks_encodes_and_writes_the_four_layouts(tokenizer, instructions, engine, tmp_path):
    out = tmp_path / "stage3.jsonl"
    result = build_stage3(instructions, tokenizer, out, engine, VOICES, seed=2, max_chars=200)
    records = list(read_jsonl(out))
    kept = [item for item in INSTRUCTIONS if item["id"] != "q3"]
    names = [combo_name(i, o) for i, o in ALL_COMBOS]
    assert names == ["speech2speech", "speech2text", "text2speech", "text2text"]
    assert [r["id"] for r in records] == [f"{item['id']}-{name}" for item in kept for name in names]
    for item, group in zip(kept, [records[i : i + 4] for i in range(0, len(records), 4)], strict=True):
        voice = VOICES[stable_index(item["id"], len(VOICES), 2)]
        question = item["instruction"] + ("\n" + item["input"] if item["input"] else "")
        q_units = tokenizer.encode(engine.synthesize(question, voice), sample_rate=SAMPLE_RATE).to_string()
        a_units = tokenizer.encode(engine.synthesize(item["output"], voice), sample_rate=SAMPLE_RATE).to_string()
        for record, (modality_in, modality_out) in zip(group, ALL_COMBOS, strict=True):
            assert record == make_com_record(
                id=record["id"],
                input_modality=modality_in,
                output_modality=modality_out,
                question_text=question,
                answer_text=item["output"],
                question_units=q_units,
                answer_units=a_units,
                num_units=NUM_UNITS,
            )
    assert len({stable_index(item["id"], len(VOICES), 2) for item in kept}) > 1  # items get different voices
    assert result.failures == [] and [f.item for f in result.skipped] == ["q3"]
    assert result.skipped[0].kind == "skipped" and "more than the 200" in str(result.skipped[0])
    report = validate_file(out, stage=3, num_units=NUM_UNITS)
    assert report.ok, report.summary()
    assert result.stats.tasks == {f"com-{name}": 4 for name in names}
    assert (result.stats.items, result.stats.skipped, result.stats.records) == (5, 1, 16)
    assert 2.0 < result.stats.audio_seconds < 30.0


def test_stage3_resume_workers_and_determinism(tokenizer, instructions, engine, tmp_path):
    whole = tmp_path / "whole.jsonl"
    build_stage3(instructions, tokenizer, whole, engine, VOICES, batch_size=2)
    out = tmp_path / "resumed.jsonl"
    with pytest.raises(StopBuild):
        build_stage3(instructions, tokenizer, out, engine, VOICES, batch_size=2, progress=stop_after(3))
    resumed = build_stage3(instructions, tokenizer, out, engine, VOICES, batch_size=2)
    assert out.read_bytes() == whole.read_bytes()
    assert resumed.stats.resumed == 12 and resumed.stats.records == 4  # q3 was skipped, q4 remained
    parallel = tmp_path / "parallel.jsonl"
    build_stage3(instructions, tokenizer, parallel, engine, VOICES, num_workers=2, batch_size=3)
    assert parallel.read_bytes() == whole.read_bytes()


def test_stage3_speaks_only_what_the_combinations_need(tokenizer, instructions, tmp_path):
    fake = ToneEngine()
    text_only = build_stage3(
        instructions, tokenizer, tmp_path / "t.jsonl", fake, VOICES, combos=[(Modality.TEXT, Modality.TEXT)]
    )
    assert fake.spoken == [] and text_only.stats.records == 5 and text_only.skipped == []
    build_stage3(instructions, tokenizer, tmp_path / "s.jsonl", fake, VOICES, combos=[("speech", "text")])
    questions = [i["instruction"] + ("\n" + i["input"] if i["input"] else "") for i in INSTRUCTIONS]
    assert fake.spoken == questions  # the long answer of q3 is not spoken, so q3 is not skipped here
    with pytest.raises(ValueError, match="combos must be distinct and non-empty"):
        build_stage3(instructions, tokenizer, tmp_path / "x.jsonl", fake, VOICES, combos=[])
    with pytest.raises(ValueError, match="voices must be a non-empty sequence"):
        build_stage3(instructions, tokenizer, tmp_path / "x.jsonl", fake, [])


def test_stage3_an_unspeakable_item_fails_alone(tokenizer, instructions, tmp_path):
    result = build_stage3(instructions, tokenizer, tmp_path / "o.jsonl", ToneEngine(refuse="colour"), VOICES)
    assert [f.item for f in result.failures] == ["q1"]
    assert "q1: cannot speak the question" in str(result.failures[0])
    ids = {r["id"].rsplit("-", 1)[0] for r in read_jsonl(tmp_path / "o.jsonl")}
    assert ids == {"q0", "q2", "q4"}  # q3 skipped as too long, q1 failed, the rest written


def test_stage3_answer_voice_is_used_for_every_answer(tokenizer, instructions, engine, tmp_path):
    assistant = VoiceSettings("en+f4", rate=180)
    out = tmp_path / "o.jsonl"
    build_stage3(
        instructions, tokenizer, out, engine, VOICES, combos=[(Modality.TEXT, Modality.SPEECH)], answer_voice=assistant
    )
    first = next(read_jsonl(out))
    expected = tokenizer.encode(engine.synthesize(INSTRUCTIONS[0]["output"], assistant), sample_rate=SAMPLE_RATE)
    assert first["plain_text"].endswith(f"[ua] {expected.to_string()}<eoa>")


def test_stage3_resamples_an_engine_with_another_rate(tokenizer, instructions, tmp_path):
    class SlowRateEngine(ToneEngine):
        sample_rate = 8_000  # ToneEngine's 16 kHz samples read as 8 kHz: twice as long, an octave lower

    engine = SlowRateEngine()
    out = tmp_path / "o.jsonl"
    result = build_stage3(instructions, tokenizer, out, engine, VOICES, combos=[(Modality.TEXT, Modality.SPEECH)])
    wave = ToneEngine().synthesize(INSTRUCTIONS[0]["output"])
    expected = tokenizer.encode(wave, sample_rate=8_000).to_string()
    assert next(read_jsonl(out))["plain_text"].endswith(f"[ua] {expected}<eoa>")
    spoken = [ToneEngine().synthesize(item["output"]) for item in INSTRUCTIONS if item["id"] != "q3"]  # q3: too long
    assert result.stats.audio_seconds == pytest.approx(sum(len(w) for w in spoken) / 8_000)


def test_stage2_a_copy_too_short_to_encode_fails_alone(tokenizer, tmp_path):
    # 450 samples hold one 25 ms window; played 1.9 times as fast they hold none.
    wave = np.random.default_rng(0).normal(0, 0.3, 450).astype(np.float32)
    sf.write(tmp_path / "short.wav", wave, SAMPLE_RATE)
    manifest = tmp_path / "short.jsonl"
    manifest.write_text(json.dumps({"id": "s", "audio": str(tmp_path / "short.wav"), "text": "hi"}) + "\n")
    result = build_stage2(manifest, tokenizer, tmp_path / "out.jsonl", speed_perturbation=(0.9, 1.9))
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["s-asr", "s-tts", "s-asr-speed0.9"]
    assert [f.item for f in result.failures] == ["s-asr-speed1.9"] and "too short" in str(result.failures[0])
