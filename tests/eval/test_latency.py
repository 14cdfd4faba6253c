"""measure_latency on a scripted model, and the medians and rates of summarize_runs against hand-made runs."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from speechgpt.eval.latency import LatencyRun, measure_latency, summarize_runs
from speechgpt.infer import GenerationOptions, SpeechGPT
from speechgpt.units import units_to_string
from tests.eval.test_asr import scripted
from tests.infer import build_tiny_bundle
from tests.synth import SAMPLE_RATE


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def base(tiny):
    return SpeechGPT.from_pretrained(tiny.path, device="cpu")


def run(streaming, *, s2u=0.0, prefill=0.0, decode=0.0, vocoder=0.0, total=0.0, first_text=None, first_audio=None,
        prompt=100, completion=11, audio=2.0):  # fmt: skip
    timings = {"speech_to_units": s2u, "prefill": prefill, "decode": decode, "vocoder": vocoder, "total": total}
    if first_text is not None:
        timings["first_text"] = first_text
    if first_audio is not None:
        timings["first_audio"] = first_audio
    return LatencyRun(streaming, timings, prompt, completion, audio)


def test_summary_is_the_median_of_per_run_numbers():
    runs = [
        run(False, s2u=0.1, prefill=0.2, decode=1.0, vocoder=0.5, total=1.9, completion=11, audio=2.0),
        run(False, s2u=0.3, prefill=0.4, decode=2.0, vocoder=1.0, total=3.9, completion=21, audio=2.0),
        run(False, s2u=0.2, prefill=0.1, decode=0.5, vocoder=0.2, total=1.1, completion=6, audio=1.0),
        run(True, total=2.5, first_text=0.6, first_audio=0.9, vocoder=0.8, audio=2.0),
        run(True, total=2.0, first_text=0.4, first_audio=0.7, vocoder=0.6, audio=2.0),
    ]
    s = summarize_runs(runs, question_seconds=2.0)
    assert s["speech_to_units_s"] == pytest.approx(0.2) and s["prefill_s"] == pytest.approx(0.2)
    assert s["decode_s"] == pytest.approx(1.0) and s["vocoder_s"] == pytest.approx(0.5)
    assert s["speech_to_units_rtf"] == pytest.approx(0.1)  # median s2u 0.2 s for a 2 s question
    assert s["first_token_s"] == pytest.approx(0.3)  # medians of 0.3, 0.7, 0.3
    # decode tokens/s per run: 10/1.0, 20/2.0, 5/0.5 -> all 10
    assert s["decode_tokens_per_s"] == pytest.approx(10.0)
    assert s["prefill_tokens_per_s"] == pytest.approx(500.0)  # 100/0.2, 100/0.4, 100/0.1 -> median 500
    assert s["vocoder_rtf"] == pytest.approx(0.25)  # 0.5/2, 1.0/2, 0.2/1
    assert s["full_reply_s"] == pytest.approx(1.9) and s["reply_rtf"] == pytest.approx(1.1)  # 0.95, 1.95, 1.1
    assert s["first_text_s"] == pytest.approx(0.5) and s["first_audio_s"] == pytest.approx(0.8)
    assert s["stream_total_s"] == pytest.approx(2.25) and s["stream_vocoder_rtf"] == pytest.approx(0.35)
    assert s["completion_tokens"] == 11 and s["answer_audio_s"] == 2.0


def test_rates_without_audio_are_none():
    s = summarize_runs([run(False, decode=0.0, total=1.0, audio=0.0)], question_seconds=1.0)
    assert s["vocoder_rtf"] is None and s["reply_rtf"] is None and s["decode_tokens_per_s"] is None
    assert s["first_audio_s"] is None and s["first_text_s"] is None


UNITS = list(range(3, 23))


def test_measured_turns_of_a_scripted_model(base, tiny):
    response = f"hello there; [ta] the answer; [ua] {units_to_string(UNITS)}"
    pipeline, lm = scripted(base, [response] * 8)
    pipeline.units_cache_size = 7
    calls = []
    options = GenerationOptions(temperature=0, max_new_tokens=200, output_modality="speech", audio_chunk_units=4)
    result = measure_latency(pipeline, tiny.question_wav, repeats=3, warmup=1, options=options,
                             progress=lambda d, t: calls.append((d, t)))  # fmt: skip
    assert calls[-1] == (7, 7) and len(lm.prompts) == 7 and pipeline.units_cache_size == 7
    assert [r.streaming for r in result.runs] == [False, True] * 3 and result.repeats == 3
    wave, rate = sf.read(tiny.question_wav)
    assert result.question_seconds == pytest.approx(len(wave) / rate)
    script_tokens = len(base.encoder.encode_trusted(response))
    answer_seconds = len(base.vocoder.synthesize(UNITS)) / SAMPLE_RATE
    for measured in result.runs:
        assert measured.completion_tokens == script_tokens + 1  # then the stop token
        assert measured.answer_seconds == pytest.approx(answer_seconds)
        assert measured.timings["speech_to_units"] > 0  # encoded every time: the units cache was off
        assert measured.timings["decode"] > 0 and measured.timings["vocoder"] > 0
        if measured.streaming:
            assert 0 < measured.timings["first_audio"] < measured.timings["total"]
    s = result.summary
    assert s["completion_tokens"] == script_tokens + 1 and s["answer_audio_s"] == pytest.approx(answer_seconds)
    assert s["decode_tokens_per_s"] > 0 and s["first_audio_s"] < s["stream_total_s"]
    data = result.to_dict()
    assert data["kind"] == "latency" and data["repeats"] == 3 and len(data["runs"]) == 6
    assert data["options"]["output_modality"] == "speech"


def test_bad_arguments(base, tiny):
    pipeline, _ = scripted(base, [])
    with pytest.raises(ValueError, match="repeats must be"):
        measure_latency(pipeline, tiny.question_wav, repeats=0)
    with pytest.raises(ValueError, match="warmup must be"):
        measure_latency(pipeline, tiny.question_wav, warmup=-1)
