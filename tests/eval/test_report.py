"""write_report: the Markdown, the JSON numbers scripts compare, valid PNG plots, and the results-folder round trip."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from speechgpt.eval.asr import AsrResult, AsrRow
from speechgpt.eval.metrics import error_rates
from speechgpt.eval.report import (
    HEADLINE_KEYS,
    PLOT_FILES,
    RESULT_FILES,
    load_results,
    save_result,
    write_report,
)
from speechgpt.eval.tts import ResynthesisResult, ResynthesisRow, TtsResult, TtsRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def asr_result() -> AsrResult:
    refs, hyps, voices = ["the cat sat", "a dog | ran"], ["the cat sad", "a dog ran"], ["en-us", "en+f2"]
    rows = [
        AsrRow(f"u{i}", v, r, h, error_rates([r], [h]).wer, 0.0)
        for i, (r, h, v) in enumerate(zip(refs, hyps, voices, strict=True))
    ]
    return AsrResult(error_rates(refs, hyps, groups=voices), rows, seconds=2.0, audio_seconds=4.0)


def tts_result() -> TtsResult:
    report = error_rates(["one two three four"], ["one two three"])
    return TtsResult(report, [TtsRow("t0", "", "one two three four", "one two three", 0.25, 0.1, 12, 1.5)], spoken=1)


def resynthesis_result() -> ResynthesisResult:
    refs, voices = ["red blue", "green tree"], ["h1", "h2"]
    report = error_rates(refs, ["red glue", "green tree"], groups=voices)
    ceiling = error_rates(refs, refs, groups=voices)
    rows = [ResynthesisRow("r0", "h1", refs[0], "red glue", refs[0], 0.5, 0.0)]
    return ResynthesisResult(report, ceiling, rows, vocoder_seconds=0.2, audio_seconds=2.0)


def qa_dict() -> dict:
    def combo(name, text, speech, parse):
        return {
            "combo": name,
            "questions": 4,
            "text_exact": {"accuracy": text / 2, "correct": 1, "total": 4, "mode": "exact"},
            "text_contains": {"accuracy": text, "correct": 2, "total": 4, "mode": "contains"},
            "speech_exact": None if speech is None else {"accuracy": speech / 2},
            "speech_contains": None if speech is None else {"accuracy": speech},
            "parse_rate": parse,
            "transcript": {"wer": 0.1} if name.startswith("speech") else None,
            "failures": [],
            "rows": [
                {
                    "id": "q1",
                    "combo": name,
                    "question": "what is | red",
                    "gold": "red",
                    "text": "blue",
                    "text_contains": False,
                }
            ],
        }

    return {
        "kind": "qa",
        "text_accuracy": 0.75,
        "speech_accuracy": 0.5,
        "families": {"colour": {"text": 1.0, "speech": 0.5}, "capital": {"text": 0.5, "speech": None}},
        "combos": {
            "speech-speech": combo("speech-speech", 0.75, 0.5, 1.0),
            "speech-text": combo("speech-text", 0.75, None, 0.75),
            "text-speech": combo("text-speech", 1.0, 0.25, 1.0),
            "text-text": combo("text-text", 1.0, None, 1.0),
        },
    }


def latency_dict() -> dict:
    return {
        "kind": "latency",
        "question_seconds": 2.0,
        "repeats": 3,
        "speech_to_units_s": 0.05,
        "prefill_s": 0.02,
        "decode_s": 0.8,
        "vocoder_s": 0.1,
        "full_reply_s": 0.98,
        "first_text_s": 0.2,
        "first_audio_s": 0.3,
        "decode_tokens_per_s": float("nan"),
    }


def loss_file(folder, losses):
    folder.mkdir(parents=True, exist_ok=True)
    log = [{"step": 10 * (i + 1), "loss": loss, "learning_rate": 1e-3} for i, loss in enumerate(losses)]
    (folder / "loss.json").write_text(json.dumps({"log": log, "summary": {"train_runtime": 3.0}}))
    return folder


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something was drawn


def test_full_report(tmp_path):
    curves = {"stage1": loss_file(tmp_path / "runs" / "stage1", [5.0, 3.0, 2.0]), "stage2": tmp_path / "s2.json"}
    loss_file(tmp_path / "s2", [2.5, 1.5])
    (tmp_path / "s2" / "loss.json").rename(tmp_path / "s2.json")
    out = tmp_path / "report"
    path = write_report(
        out,
        asr=asr_result(),
        tts=tts_result(),
        resynthesis=resynthesis_result(),
        qa=qa_dict(),
        latency=latency_dict(),
        training_curves=curves,
        extra={"seconds_total": 812.5, "bundle": "runs/demo/bundle"},
    )
    assert path == out / "report.md"
    data = json.loads((out / "report.json").read_text())
    assert set(HEADLINE_KEYS) <= set(data)
    assert data["asr_wer"] == pytest.approx(1 / 6) and data["tts_judge_wer"] == 0.25
    assert data["vocoder_judge_wer"] == 0.25 and data["vocoder_ceiling_wer"] == 0.0
    assert data["qa_text_accuracy"] == 0.75 and data["qa_speech_accuracy"] == 0.5
    assert data["latency_first_audio_s"] == 0.3 and data["latency_full_reply_s"] == 0.98
    assert data["seconds_total"] == 812.5 and data["bundle"] == "runs/demo/bundle"
    assert data["sections"]["latency"]["decode_tokens_per_s"] is None  # NaN is not JSON
    assert data["sections"]["asr"]["groups"]["en-us"]["wer"] == pytest.approx(1 / 3)
    assert data["plots"] == {name: PLOT_FILES[name] for name in PLOT_FILES}
    for name in PLOT_FILES.values():
        assert_png(out / name)

    md = path.read_text()
    for heading in ("## Summary", "## How to read this", "## Speech recognition", "## Text-to-speech",
                    "## Vocoder intelligibility", "## Spoken question answering", "## Latency", "## Training curves",
                    "## Run information"):  # fmt: skip
        assert heading in md, heading
    for name in PLOT_FILES.values():
        assert f"]({name})" in md
    assert "| ASR word error rate (model, speech → text) | 16.7% | ≤ 10% (not met) |" in md
    assert "| spoken questions: text answer accuracy | 75.0% | ≥ 80% (not met) |" in md
    assert "| en-us | 1 | 33.3% |" in md  # per-voice table
    assert "what is \\| red" in md  # table cells keep their pipes escaped
    assert "| stage1 | 30 | 5.0000 | 2.0000 |" in md and "| stage2 | 20 | 2.5000 | 1.5000 |" in md
    assert "Not run" not in md
    assert "Judge decoding" not in md and data["vocoder_judge_wer_greedy"] is None  # no judge description given


def test_a_lexicon_judge_is_named_and_its_greedy_numbers_shown(tmp_path):
    resynthesis = resynthesis_result()
    resynthesis.judge = "lexicon beam search (484 words, unigram weight 0.6, beam 50)"
    resynthesis.greedy = {"wer": 0.5, "ceiling_wer": 0.25}
    write_report(tmp_path, resynthesis=resynthesis)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["vocoder_judge_wer"] == 0.25
    assert data["vocoder_judge_wer_greedy"] == 0.5 and data["vocoder_ceiling_wer_greedy"] == 0.25
    md = (tmp_path / "report.md").read_text()
    assert "| the same two, the judge decoding greedily (no lexicon) | 50.0% / 25.0% |" in md
    assert (
        "Judge decoding: lexicon beam search (484 words, unigram weight 0.6, beam 50). Decoding greedily instead "
        "(character by character, no word list), the judge's WER is 50.0% on the resynthesis and 25.0% on the "
        "originals." in md
    )


def test_parts_not_run_are_null_and_absent(tmp_path):
    write_report(tmp_path, asr=asr_result())
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["asr_wer"] == pytest.approx(1 / 6)
    for key in set(HEADLINE_KEYS) - {"asr_wer", "asr_cer"}:
        assert data[key] is None, key
    assert data["plots"] == {"wer_per_voice": "wer_per_voice.png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "wer_per_voice.png"]
    md = (tmp_path / "report.md").read_text()
    assert "Not run: tts, resynthesis, qa, latency." in md and "## Latency" not in md


def test_results_folder_round_trip_gives_the_same_report(tmp_path):
    results = {"asr": asr_result(), "resynthesis": resynthesis_result(), "qa": qa_dict(), "latency": latency_dict()}
    for name, result in results.items():
        assert save_result(tmp_path / "results", name, result) == tmp_path / "results" / RESULT_FILES[name]
    loaded = load_results(tmp_path / "results")
    assert set(loaded) == set(results) and loaded["asr"]["wer"] == pytest.approx(1 / 6)
    assert loaded["latency"]["decode_tokens_per_s"] is None
    write_report(tmp_path / "a", **results)
    write_report(tmp_path / "b", **loaded)
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a == b
    assert (tmp_path / "a" / "report.md").read_text() == (tmp_path / "b" / "report.md").read_text()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="would replace a measured number"):
        write_report(tmp_path, asr=asr_result(), extra={"asr_wer": 0.0})
    with pytest.raises(FileNotFoundError, match="no such loss file"):
        write_report(tmp_path, training_curves={"stage1": tmp_path / "nowhere"})
    (tmp_path / "bad.json").write_text('{"steps": []}')
    with pytest.raises(ValueError, match="as training writes it"):
        write_report(tmp_path, training_curves={"x": tmp_path / "bad.json"})
    with pytest.raises(TypeError, match="asr must be a result"):
        write_report(tmp_path, asr=42)
    with pytest.raises(ValueError, match="unknown result 'wer'"):
        save_result(tmp_path, "wer", {})
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "qa.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_results(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no such results folder"):
        load_results(tmp_path / "nope")
