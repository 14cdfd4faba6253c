"""Streaming synthesis equals one-shot synthesis; contexts are the exact receptive fields."""

import pytest
import torch

from speechgpt.convert.fairseq_hifigan import convert_state_dict
from speechgpt.units.base import HOP_LENGTH
from speechgpt.vocoder import StreamingSynthesizer, UnitHiFiGAN, VocoderConfig, generator_context, synthesize_stream
from tests.hifigan_reference import TINY_FAIRSEQ_CONFIG, duration_rounding_margin, random_released_state_dict

STREAM_TOLERANCE = 1e-5  # measured: ~2e-6 (float rounding of different window lengths)
NUM_UNITS = TINY_FAIRSEQ_CONFIG["num_embeddings"]


@pytest.fixture(scope="module")
def released_sd():
    return random_released_state_dict(TINY_FAIRSEQ_CONFIG, seed=4)


@pytest.fixture(scope="module")
def model(released_sd):
    vocoder = UnitHiFiGAN(VocoderConfig.from_fairseq_json(TINY_FAIRSEQ_CONFIG))
    return vocoder.load_weights(convert_state_dict(released_sd)).eval()


@pytest.fixture(scope="module")
def units(released_sd):
    for seed in range(50):  # first draw with no predicted duration within 1e-3 of a rounding boundary
        ids = torch.randint(0, NUM_UNITS, (60,), generator=torch.Generator().manual_seed(seed)).tolist()
        if duration_rounding_margin(released_sd, TINY_FAIRSEQ_CONFIG, ids) > 1e-3:
            return ids
    raise AssertionError("no units away from rounding boundaries")


def chunked(items: list[int], sizes: list[int]) -> list[list[int]]:
    out, start = [], 0
    while start < len(items):
        for size in sizes:
            out.append(items[start : start + size])
            start += size
    return out


def test_context_of_the_released_vocoder():
    assert generator_context(VocoderConfig()) == (21, 21)
    assert generator_context(VocoderConfig.tiny()) == (21, 21)  # same kernels, rates and dilations
    smaller = VocoderConfig.tiny(resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    assert generator_context(smaller) < (21, 21)


def test_context_is_exactly_the_receptive_field():
    """With all-positive weights nothing cancels, so the samples that an input frame reaches are exactly its
    structural receptive field; it must span generator_context frames on each side, no more, no less."""
    model = UnitHiFiGAN(VocoderConfig.tiny(), dtype=torch.float64).eval()
    with torch.no_grad():
        for name, param in model.generator.named_parameters():
            param.copy_(torch.full_like(param, 0.0 if name.endswith("bias") else 0.05))
    left, right = generator_context(model.config)
    frames, probe = 101, 50
    x = torch.zeros(1, model.config.embedding_dim, frames, dtype=torch.float64)
    x[0, :, probe] = 1.0
    with torch.inference_mode():
        wave = model.generator(x)[0]
    reached = (wave.view(frames, HOP_LENGTH).abs().amax(dim=1) > 0).nonzero().flatten()
    assert reached.min() == probe - right and reached.max() == probe + left


@pytest.mark.parametrize("dur_prediction", [True, False], ids=["dur", "no-dur"])
@pytest.mark.parametrize("sizes", [[1], [5], [17], [3, 1, 8, 2, 13]], ids=["1", "5", "17", "uneven"])
def test_stream_equals_one_shot(model, units, dur_prediction, sizes):
    one_shot = model.synthesize(units, dur_prediction=dur_prediction)
    pieces = list(model.synthesize_stream(chunked(units, sizes), dur_prediction=dur_prediction))
    stream = torch.cat(pieces)
    assert stream.shape == one_shot.shape
    assert (stream - one_shot).abs().max() <= STREAM_TOLERANCE
    assert len(pieces) > 1 and all(p.numel() % HOP_LENGTH == 0 for p in pieces)


def test_audio_comes_out_while_units_arrive_and_latency_is_bounded(model, units):
    _, right = generator_context(model.config)
    stream = StreamingSynthesizer(model)
    emitted = []
    for chunk in chunked(units, [5]):
        emitted.append(stream.push(chunk).numel())
        # Everything but the last `right` frames of the units with known durations is out...
        assert stream.frames_emitted == max(0, stream.frames_ready - right)
        # ...and only the last two units wait for their durations, so at most 2 + right (+1 partly out) units wait.
        assert 2 <= stream.units_pending <= 2 + right + 1
    assert sum(n > 0 for n in emitted) >= len(emitted) - 3  # audio flows from the first few chunks on
    tail = stream.finish()
    assert stream.units_pending == 0 and stream.frames_emitted == stream.frames_ready
    total = sum(emitted) + tail.numel()
    assert total == model.synthesize(units).numel()


def test_smaller_contexts_trade_exactness_for_latency(model, units):
    one_shot = model.synthesize(units)
    errors = {}
    for context in (0, 10, 21):
        stream = torch.cat(
            list(model.synthesize_stream(chunked(units, [5]), left_context=context, right_context=context))
        )
        errors[context] = float((stream - one_shot).abs().max())
    assert errors[0] > 0.1 and errors[10] > 1e-3 and errors[21] <= STREAM_TOLERANCE


def test_empty_chunks_and_negative_ids(model):
    chunks = [[], [3, -1], [], torch.tensor([4, 5]), [-7]]
    assert torch.equal(torch.cat(list(synthesize_stream(model, chunks))), model.synthesize([3, 4, 5]))


def test_stream_errors(model):
    with pytest.raises(ValueError, match="the unit stream held no units"):
        list(model.synthesize_stream([[], [-1]]))
    with pytest.raises(ValueError, match=r"unit chunk 1: unit id 50 \(position 0\) is out of range"):
        list(model.synthesize_stream([[1, 2], [50]]))
    with pytest.raises(ValueError, match="right_context must be an int >= 0"):
        StreamingSynthesizer(model, right_context=-1)
    stream = StreamingSynthesizer(model)
    stream.push([1, 2, 3])
    stream.finish()
    with pytest.raises(ValueError, match="the stream is finished"):
        stream.push([4])


def test_multi_speaker_stream_equals_one_shot(units):
    torch.manual_seed(0)
    model = UnitHiFiGAN(VocoderConfig.tiny(num_speakers=2)).eval()
    ids = units[:30]
    one_shot = model.synthesize(ids, speaker=1)
    stream = torch.cat(list(model.synthesize_stream(chunked(ids, [4]), speaker=1)))
    assert stream.shape == one_shot.shape and (stream - one_shot).abs().max() <= STREAM_TOLERANCE
