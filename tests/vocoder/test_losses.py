"""Vocoder training losses and discriminators, on inputs whose results can be worked out by hand."""

import copy
import math

import pytest
import torch
from torch.nn.utils import parametrize

from speechgpt.vocoder.discriminators import (
    DiscriminatorConfig,
    DiscriminatorOutput,
    Discriminators,
    PeriodDiscriminator,
)
from speechgpt.vocoder.losses import (
    MelConfig,
    MelSpectrogram,
    discriminator_loss,
    duration_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_l1_loss,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions spend more time in thread hand-offs than in arithmetic (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mel():
    return MelSpectrogram()


def noise(batch: int, samples: int, seed: int = 0, scale: float = 0.5) -> torch.Tensor:
    return scale * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def constant_output(scores: list[float], features: list[list[float]], shape=(2, 3)) -> DiscriminatorOutput:
    return DiscriminatorOutput(
        scores=[torch.full(shape, s) for s in scores],
        features=[[torch.full((2, 4, 5), f) for f in maps] for maps in features],
    )


# --- mel ------------------------------------------------------------------------------------------------------------


def test_mel_defaults_are_hifigans_16k_settings():
    config = MelConfig()
    assert (config.n_mels, config.n_fft, config.hop_length, config.win_length) == (80, 1024, 256, 1024)
    assert (config.fmin, config.fmax, config.sample_rate) == (0.0, 8000.0, 16000)


def test_mel_shape_is_one_frame_per_hop(mel):
    assert mel(noise(3, 2560)).shape == (3, 80, 10)
    assert mel(noise(1, 8960)[0]).shape == (1, 80, 35)  # 1-D input gets a batch axis
    assert mel.filters.shape == (80, 513) and not mel.state_dict()  # buffers never enter a checkpoint


def test_mel_l1_of_identical_signals_is_zero(mel):
    wave = noise(2, 4096)
    assert mel_l1_loss(wave, wave.clone(), mel).item() == 0.0


def test_doubling_a_loud_signal_moves_every_log_mel_by_log_2(mel):
    wave = noise(2, 4096, scale=0.3)
    assert mel_l1_loss(2 * wave, wave, mel).item() == pytest.approx(math.log(2), abs=1e-3)


def test_silence_sits_at_the_log_floor(mel):
    assert torch.allclose(mel(torch.zeros(1, 2048)), torch.full((1, 80, 8), math.log(1e-5)))


def test_a_1khz_tone_peaks_in_the_band_of_the_1khz_bin(mel):
    t = torch.arange(8192) / 16000
    spec = mel(0.5 * torch.sin(2 * math.pi * 1000.0 * t))
    bin_1khz = round(1000.0 * 1024 / 16000)  # 64: exactly 1 kHz
    expected_band = int(mel.filters[:, bin_1khz].argmax())
    assert (spec[0, :, 2:-2].argmax(dim=0) == expected_band).all()


def test_mel_loss_has_gradients_and_rejects_mismatched_shapes(mel):
    fake = noise(1, 2048, seed=1).requires_grad_()
    mel_l1_loss(fake, noise(1, 2048), mel).backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="equal shapes"):
        mel_l1_loss(noise(1, 2048), noise(1, 2304), mel)


def test_mel_config_rejects_bad_values():
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="win_length"):
        MelConfig(win_length=2048)


# --- GAN losses -----------------------------------------------------------------------------------------------------


def test_least_squares_losses_on_constant_scores():
    real = constant_output([0.5, 0.5], [[1.0], [1.0]])
    fake = constant_output([0.25, 0.25], [[1.0], [1.0]])
    # per discriminator: (1 - 0.5)^2 + 0.25^2 = 0.3125; two of them
    assert discriminator_loss(real, fake).item() == pytest.approx(0.625)
    # per discriminator: (1 - 0.25)^2 = 0.5625
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.125)


def test_a_perfect_discriminator_has_zero_loss_and_a_fooled_one_zero_generator_loss():
    assert discriminator_loss(constant_output([1.0] * 3, [[0.0]] * 3), constant_output([0.0] * 3, [[0.0]] * 3)) == 0
    assert generator_adversarial_loss(constant_output([1.0] * 3, [[0.0]] * 3)) == 0


def test_feature_matching_sums_mean_absolute_differences_over_layers():
    real = constant_output([0.0, 0.0], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    fake = constant_output([0.0, 0.0], [[0.5, 0.5, 0.5], [1.0, 3.0, 1.0]])
    assert feature_matching_loss(real, fake).item() == pytest.approx(3 * 0.5 + 2.0)
    assert feature_matching_loss(real, real).item() == 0.0


def test_feature_matching_treats_real_features_as_constants():
    real = DiscriminatorOutput(scores=[torch.zeros(1, 2)], features=[[torch.ones(1, 3, requires_grad=True)]])
    fake = DiscriminatorOutput(scores=[torch.zeros(1, 2)], features=[[torch.zeros(1, 3, requires_grad=True)]])
    feature_matching_loss(real, fake).backward()
    assert real.features[0][0].grad is None
    assert torch.allclose(fake.features[0][0].grad, torch.full((1, 3), -1 / 3))


# --- durations ------------------------------------------------------------------------------------------------------


def test_duration_loss_is_mse_on_log_one_plus_frames():
    durations = torch.tensor([[1, 3]])
    assert duration_loss(torch.log1p(durations.float()), durations).item() == pytest.approx(0.0, abs=1e-7)
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert duration_loss(torch.zeros(1, 2), durations).item() == pytest.approx(expected)


def test_duration_loss_ignores_padding():
    durations = torch.tensor([[1, 3, 0], [2, 0, 0]])
    predicted = torch.tensor([[0.0, 0.0, 99.0], [0.0, -50.0, 7.0]])  # garbage in the padding
    expected = (math.log(2) ** 2 + math.log(4) ** 2 + math.log(3) ** 2) / 3
    assert duration_loss(predicted, durations, torch.tensor([2, 1])).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="no real units"):
        duration_loss(predicted, durations, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="one shape"):
        duration_loss(predicted[:, :2], durations)


# --- discriminators -------------------------------------------------------------------------------------------------


def conv_lengths_msd(length: int, num_scales: int) -> list[int]:
    """Expected MSD score lengths: each conv with odd kernel k, padding k//2, stride s gives ceil(L / s)."""
    result = []
    for scale in range(num_scales):
        if scale:
            length = length // 2 + 1  # AvgPool1d(4, 2, padding=2)
        n = length
        for stride in (1, 2, 2, 4, 4, 1, 1):
            n = math.ceil(n / stride)
        result.append(n)
    return result


def mpd_score_length(length: int, period: int) -> int:
    rows = math.ceil(length / period)
    for _ in range(4):  # four stride-3 convolutions (kernel 5, padding 2): ceil(L / 3)
        rows = math.ceil(rows / 3)
    return rows * period


@pytest.fixture(scope="module")
def tiny_discriminators():
    torch.manual_seed(0)
    return Discriminators(DiscriminatorConfig.tiny())


def test_tiny_discriminators_output_shapes(tiny_discriminators):
    config = tiny_discriminators.config
    out = tiny_discriminators(noise(2, 2560))
    assert len(out.scores) == len(out.features) == 5 + 3
    expected = [mpd_score_length(2560, p) for p in (2, 3, 5, 7, 11)] + conv_lengths_msd(2560, 3)
    assert [tuple(s.shape) for s in out.scores] == [(2, n) for n in expected]
    assert [len(f) for f in out.features] == [6] * 5 + [8] * 3
    assert [f.shape[1] for f in out.features[0]] == [*config.period_channels, 1]
    assert [f.shape[1] for f in out.features[5]] == [*config.scale_channels, 1]
    assert out.features[0][0].shape[-1] == 2 and out.features[4][0].shape[-1] == 11  # one column per period phase


def test_period_discriminator_completes_the_last_column_of_an_odd_length(tiny_discriminators):
    period = tiny_discriminators.mpd.discriminators[1]  # period 3
    scores, features = period(noise(1, 1000))  # 1000 = 333 * 3 + 1: padded to 334 rows
    assert features[0].shape[-2:] == (math.ceil(334 / 3), 3)
    assert scores.shape == (1, mpd_score_length(1000, 3))


def test_discriminators_use_weight_norm_and_spectral_norm_on_the_raw_scale(tiny_discriminators):
    discriminators = tiny_discriminators
    raw, pooled = discriminators.msd.discriminators[0], discriminators.msd.discriminators[1]
    assert hasattr(raw.convs[0].parametrizations.weight[0], "_u")  # spectral norm keeps power-iteration vectors
    assert not hasattr(pooled.convs[0].parametrizations.weight[0], "_u")
    assert all(parametrize.is_parametrized(c, "weight") for c in discriminators.mpd.discriminators[0].convs)


def test_concatenated_batch_splits_into_the_separate_results(tiny_discriminators):
    discriminators = copy.deepcopy(tiny_discriminators).eval()  # eval: spectral norm's power iteration is frozen
    real, fake = noise(1, 2560, seed=1), noise(1, 2560, seed=2)
    joint_real, joint_fake = discriminators(torch.cat([real, fake])).split([1, 1])
    for joint, alone in ((joint_real, discriminators(real)), (joint_fake, discriminators(fake))):
        for a, b in zip(joint.scores, alone.scores, strict=True):
            torch.testing.assert_close(a, b)
        for maps_a, maps_b in zip(joint.features, alone.features, strict=True):
            for a, b in zip(maps_a, maps_b, strict=True):
                torch.testing.assert_close(a, b)


def test_released_discriminator_layout():
    config = DiscriminatorConfig.released()
    assert config.periods == (2, 3, 5, 7, 11) and config.num_scales == 3
    assert config.period_channels == (32, 128, 512, 1024, 1024)
    assert config.scale_channels == (128, 128, 256, 512, 1024, 1024, 1024)
    assert config.scale_groups == (1, 4, 16, 16, 16, 16, 1)
    # layer-by-layer parameter count of one period discriminator (weight-norm g has one value per output channel)
    period_params = 0
    for c_in, c_out in zip((1, 32, 128, 512, 1024), (32, 128, 512, 1024, 1024), strict=True):
        period_params += c_in * c_out * 5 + 2 * c_out
    period_params += 1024 * 3 + 2
    assert sum(p.numel() for p in PeriodDiscriminator(2, config.period_channels).parameters()) == period_params


def test_discriminator_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="groups 4 must divide"):
        DiscriminatorConfig(scale_channels=(8, 6, 16, 16, 16, 16, 16), scale_groups=(1, 4, 4, 4, 4, 4, 1))
    with pytest.raises(ValueError, match="periods"):
        DiscriminatorConfig(periods=(1, 2))
    with pytest.raises(ValueError, match="unknown discriminator preset"):
        DiscriminatorConfig.from_name("huge")
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        Discriminators(DiscriminatorConfig.tiny())(torch.zeros(1, 1, 100))


def test_discriminator_gradients_reach_every_parameter(tiny_discriminators):
    discriminators = copy.deepcopy(tiny_discriminators)
    out = discriminators(noise(2, 2560))
    generator_adversarial_loss(out).backward()
    missing = [n for n, p in discriminators.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
