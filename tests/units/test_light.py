import numpy as np
import pytest
import torch

from speechgpt.units.base import num_frames
from speechgpt.units.light import LightFeatureConfig, LightFeatures, _dct_matrix, deltas
from tests.synth import phone_sequence_wave


def test_shape_follows_hubert_framing():
    extractor = LightFeatures()
    for length in (400, 719, 720, 16000, 16321):
        feats = extractor(np.zeros(length, dtype=np.float32) + np.sin(np.arange(length) * 0.3).astype(np.float32))
        assert feats.shape == (num_frames(length), 39)
        assert feats.dtype == torch.float32
    assert num_frames(16000) == 49


def test_logmel_dimension_and_no_cmvn_values():
    config = LightFeatureConfig(kind="logmel", n_mels=24, deltas=1, cmvn=False)
    assert config.dim == 48
    feats = LightFeatures(config)(phone_sequence_wave([0, 1]))
    assert feats.shape[1] == 48
    assert torch.isfinite(feats).all()


def test_cmvn_normalises_each_dimension():
    feats = LightFeatures()(phone_sequence_wave([0, 1, 2, 3, 4, 0, 2]))
    torch.testing.assert_close(feats.mean(0), torch.zeros(39), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(0, unbiased=False), torch.ones(39), atol=1e-3, rtol=0)


def test_distinct_sounds_give_distinct_features_and_same_sound_the_same():
    feats = LightFeatures(LightFeatureConfig(cmvn=False, deltas=0))(phone_sequence_wave([0, 0, 1, 1], 0.2))
    # frames well inside each phone (each phone lasts 10 frames of 20 ms)
    a1, a2, b1 = feats[5], feats[12], feats[28]
    assert torch.dist(a1, a2) < 0.5 * torch.dist(a1, b1)


def test_deterministic_and_silence_is_finite():
    wave = phone_sequence_wave([1, 2, 3])
    extractor = LightFeatures()
    assert torch.equal(extractor(wave), extractor(torch.from_numpy(wave)))
    assert torch.isfinite(LightFeatures(LightFeatureConfig(cmvn=False))(np.zeros(8000, np.float32))).all()


def test_deltas_of_a_ramp_are_its_slope():
    ramp = torch.arange(20, dtype=torch.float32)[:, None] * torch.tensor([[1.0, -2.0]])
    d = deltas(ramp)
    torch.testing.assert_close(d[2:-2], torch.tensor([[1.0, -2.0]]).expand(16, 2))


def test_dct_is_orthonormal():
    basis = _dct_matrix(16, 16)
    torch.testing.assert_close(basis.T @ basis, torch.eye(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs", [{"kind": "spectrum"}, {"deltas": 3}, {"n_mfcc": 0}, {"fmax": 9000.0}, {"n_fft": 256}]
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        LightFeatureConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    config = LightFeatureConfig(kind="logmel", n_mels=30)
    assert LightFeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="n_mel"):
        LightFeatureConfig.from_dict({"n_mel": 3})


def test_too_short_or_not_1d_is_rejected():
    extractor = LightFeatures()
    with pytest.raises(ValueError, match="shorter than one"):
        extractor(np.zeros(399, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        extractor(np.zeros((2, 1000), np.float32))
