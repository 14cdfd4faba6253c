"""SpeechGPT.chat_stream: text deltas and audio chunks as they are generated, equal to chat's reply."""

import re

import numpy as np
import pytest
import torch

from speechgpt.infer import AudioChunk, Done, GenerationOptions, SpeechGPT, TextDelta, Transcript
from speechgpt.prompt_format import CONTROL_STRINGS
from speechgpt.vocoder import StreamingSynthesizer
from tests.infer import ScriptedLM, build_tiny_bundle, small_hifigan, speech_like
from tests.infer.test_pipeline import garbage_model, spelled

LEAK = re.compile("|".join(re.escape(s) for s in CONTROL_STRINGS) + r"|<\d+>", flags=re.IGNORECASE)
STREAM_TOLERANCE = 5e-5
"""Streamed vs one-shot samples: float rounding of different windows (measured 1.3e-5 with the bundle's vocoder)."""
GREEDY = GenerationOptions(temperature=0, max_new_tokens=400)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sg(tmp_path_factory):
    return SpeechGPT.from_pretrained(build_tiny_bundle(tmp_path_factory.mktemp("bundle")).path, device="cpu")


def long_answer_units(count: int = 100, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    units = [int(rng.integers(50))]
    while len(units) < count:  # deduplicated, as the tokenizer writes them
        unit = int(rng.integers(50))
        if unit != units[-1]:
            units.append(unit)
    return units


def scripted(sg, ids):
    lm = ScriptedLM(ids, len(sg.tokenizer), fallback=sg.vocab.eos_id)
    return SpeechGPT(lm, sg.tokenizer, speech_tokenizer=sg.speech_tokenizer, vocoder=sg.vocoder), lm


def collect(model, messages, options, lm=None):
    """All events, each with the LM's step count when it came out."""
    return [(event, lm.steps if lm is not None else None) for event in model.chat_stream(messages, options)]


def joined_text(events):
    return "".join(e.text for e, _ in events if isinstance(e, TextDelta))


def joined_audio(events):
    return np.concatenate([e.samples for e, _ in events if isinstance(e, AudioChunk)])


def spoken(sg) -> list[dict]:
    return [{"role": "user", "content": speech_like(1.0)}]


def test_stream_matches_chat_and_audio_starts_early(sg):
    units = long_answer_units()
    layout = "hello there; [ta] Hi friend, how are you; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>"
    ids = sg.encoder.encode_trusted(layout)
    model, lm = scripted(sg, ids)
    events = collect(model, spoken(sg), GREEDY, lm)
    reply = model.chat(spoken(sg), GREEDY)

    kinds = [type(e).__name__ for e, _ in events]
    assert kinds[-1] == "Done" and kinds.count("Done") == 1
    done = events[-1][0].reply
    assert (done.transcript, done.text, done.units) == (reply.transcript, reply.text, reply.units)
    assert (done.text, done.units) == ("Hi friend, how are you", units)
    assert done.raw == reply.raw and done.completion_tokens == reply.completion_tokens == len(ids)

    # Text: the transcript first, then deltas that add up to the answer, all before the first unit is written.
    assert [e.text for e, _ in events if isinstance(e, Transcript)] == ["hello there"]
    assert kinds.index("Transcript") < kinds.index("TextDelta")
    assert joined_text(events) == reply.text
    sosp_step = ids.index(sg.vocab.sosp_id) + 1
    text_steps = [step for e, step in events if isinstance(e, TextDelta)]
    assert len(text_steps) >= 3 and text_steps[0] < sosp_step
    assert text_steps[-1] <= sosp_step  # the whole answer text was out before any unit

    # Audio: several chunks, the first while most units are still to come; together equal to chat's waveform.
    audio_steps = [step for e, step in events if isinstance(e, AudioChunk)]
    assert len(audio_steps) >= 3  # 16, 32, 64 units, then the rest
    assert audio_steps[0] < sosp_step + 60 < len(ids)
    stream = joined_audio(events)
    assert stream.dtype == np.float32 and stream.shape == reply.waveform.shape
    assert np.abs(stream - reply.waveform).max() <= STREAM_TOLERANCE
    np.testing.assert_array_equal(done.waveform, stream)
    assert all(e.sample_rate == 16_000 for e, _ in events if isinstance(e, AudioChunk))
    timings = done.timings
    assert 0 < timings["first_text"] < timings["first_audio"] < timings["total"]
    assert timings["vocoder"] > 0 and timings["decode"] > 0


@pytest.mark.parametrize("chunk", [1, 25])
def test_chunk_size_changes_when_audio_comes_not_what_it_is(sg, chunk):
    units = long_answer_units(50, seed=1)
    ids = sg.encoder.encode_trusted("[ta] ok; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>")
    model, lm = scripted(sg, ids)
    options = GenerationOptions(temperature=0, audio_chunk_units=chunk, max_audio_chunk_units=chunk)
    events = collect(model, [{"role": "user", "content": "hi"}], options, lm)
    one_shot = sg.vocoder.synthesize(units).numpy()
    assert np.abs(joined_audio(events) - one_shot).max() <= STREAM_TOLERANCE
    chunks = sum(isinstance(e, AudioChunk) for e, _ in events)
    assert chunks >= (25 if chunk == 1 else 2)


def test_real_model_streams_the_same_tokens_as_chat(sg):
    for seed in range(3):
        options = GenerationOptions(seed=seed, temperature=1.0, max_new_tokens=80)
        messages = [{"role": "user", "content": speech_like(0.8, seed=seed)}]
        reply = sg.chat(messages, options)
        events = collect(sg, messages, options)
        done = events[-1][0].reply
        assert (done.raw, done.units, done.text) == (reply.raw, reply.units, reply.text)
        assert joined_text(events) == reply.text
        if reply.waveform is not None:
            assert np.abs(joined_audio(events) - reply.waveform).max() <= STREAM_TOLERANCE


def test_tags_split_across_tokens_never_show_in_deltas(sg):
    """Spelled one character at a time, every tag passes through an unfinished state; none may be sent."""
    text = "hello; [ta] Hi [tq] th<eoh>ere x<12>y, 5 € and <sosp> spelled [SpeechGPT] too"
    ids = [i for ch in text for i in spelled(sg, ch)] + sg.encoder.encode_trusted("; [ua] <sosp><1><2><eosp><eoa>")
    model, lm = scripted(sg, ids)
    events = collect(model, spoken(sg), GREEDY, lm)
    reply = events[-1][0].reply
    deltas = [e.text for e, _ in events if isinstance(e, TextDelta)]
    assert len(deltas) > 5
    assert "".join(deltas) == reply.text == "Hi th ere x y, 5 € and"  # a spelled <sosp> opens a (text) span
    for delta in deltas:
        assert not LEAK.search(delta) and "\ufffd" not in delta and "[" not in delta and "<" not in delta
    assert reply.units == [1, 2]


def test_garbage_streams_consistently(sg):
    for seed in range(6):
        options = GenerationOptions(seed=seed, max_new_tokens=100)
        messages = [{"role": "user", "content": speech_like(0.5) if seed % 2 else "hello"}]
        events = collect(garbage_model(sg, seed), messages, options)
        reply = events[-1][0].reply
        assert joined_text(events) == reply.text
        assert not any(LEAK.search(e.text) for e, _ in events if isinstance(e, TextDelta | Transcript))
        if reply.waveform is None:
            assert not any(isinstance(e, AudioChunk) for e, _ in events)
        else:
            np.testing.assert_array_equal(joined_audio(events), reply.waveform)


def test_text_only_answers_and_text_output(sg):
    model, _ = scripted(sg, sg.encoder.encode_trusted("[ta] Just text.<eoa>"))
    events = collect(model, [{"role": "user", "content": "hi"}], GREEDY)
    assert {type(e) for e, _ in events[:-1]} == {TextDelta} and isinstance(events[-1][0], Done)
    assert joined_text(events) == "Just text"
    assert events[-1][0].reply.text == "Just text" and events[-1][0].reply.waveform is None
    # With text output asked for, the model's units are not voiced.
    model, _ = scripted(sg, sg.encoder.encode_trusted("[ta] Hi; [ua] <sosp><1><2><3><eosp><eoa>"))
    events = collect(model, spoken(sg), GenerationOptions(temperature=0, output_modality="text"))
    assert not any(isinstance(e, AudioChunk) for e, _ in events)
    assert events[-1][0].reply.units == [1, 2, 3] and events[-1][0].reply.waveform is None


def test_the_answer_without_a_text_tag_comes_at_the_end(sg):
    model, lm = scripted(sg, sg.encoder.encode_trusted("words but no tag<eoa>"))
    events = collect(model, [{"role": "user", "content": "hi"}], GREEDY, lm)
    deltas = [(e.text, step) for e, step in events if isinstance(e, TextDelta)]
    assert deltas == [("words but no tag", lm.steps)]  # unknown until the end whether it is a transcript


def test_a_vocoder_without_streaming_gives_one_chunk_at_the_end(sg):
    class OneShot:
        sample_rate, num_units = 16_000, 50

        def synthesize(self, units):
            return sg.vocoder.synthesize(units)

    units = long_answer_units(30)
    lm = ScriptedLM(
        sg.encoder.encode_trusted("[ta] ok; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>"),
        len(sg.tokenizer),
        sg.vocab.eos_id,
    )
    model = SpeechGPT(lm, sg.tokenizer, vocoder=OneShot())
    events = collect(model, [{"role": "user", "content": "hi"}], GREEDY)
    chunks = [e for e, _ in events if isinstance(e, AudioChunk)]
    assert len(chunks) == 1
    np.testing.assert_array_equal(chunks[0].samples, sg.vocoder.synthesize(units).numpy())


def test_streaming_through_a_unit_hifigan(sg):
    vocoder = small_hifigan()
    units = long_answer_units(40, seed=2)
    ids = sg.encoder.encode_trusted("[ta] ok; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>")
    lm = ScriptedLM(ids, len(sg.tokenizer), sg.vocab.eos_id)
    model = SpeechGPT(lm, sg.tokenizer, vocoder=vocoder)
    events = collect(
        model, [{"role": "user", "content": "hi"}], GenerationOptions(temperature=0, audio_chunk_units=8), lm
    )
    audio_steps = [step for e, step in events if isinstance(e, AudioChunk)]
    assert len(audio_steps) >= 3 and audio_steps[0] < len(ids) - 20
    assert np.abs(joined_audio(events) - vocoder.synthesize(units).numpy()).max() <= STREAM_TOLERANCE


def test_chunks_grow_from_the_first_size_to_the_largest(sg):
    units = long_answer_units(100, seed=3)
    ids = sg.encoder.encode_trusted("[ta] ok; [ua] <sosp>" + "".join(f"<{u}>" for u in units) + "<eosp><eoa>")
    model, lm = scripted(sg, ids)
    pushed = []
    original = StreamingSynthesizer.push

    def recording(self, chunk):
        pushed.append(len(chunk))
        return original(self, chunk)

    StreamingSynthesizer.push = recording
    try:
        options = GenerationOptions(temperature=0, audio_chunk_units=4, max_audio_chunk_units=32)
        events = collect(model, [{"role": "user", "content": "hi"}], options, lm)
    finally:
        StreamingSynthesizer.push = original
    assert pushed == [4, 8, 16, 32, 32, 8]  # the rest (100 - 92) at the end
    assert np.abs(joined_audio(events) - sg.vocoder.synthesize(units).numpy()).max() <= STREAM_TOLERANCE
