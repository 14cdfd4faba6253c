"""UnitHiFiGAN: config, parity with the reference math of the release, batching, weight norm, persistence."""

import json

import pytest
import torch

from speechgpt.convert.fairseq_hifigan import convert_state_dict
from speechgpt.units.base import HOP_LENGTH
from speechgpt.vocoder import UnitHiFiGAN, VocoderConfig
from speechgpt.vocoder._fast_ops import onednn_available
from speechgpt.vocoder.hifigan import CONFIG_NAME, VOCODER_FORMAT, WEIGHTS_NAME
from tests.hifigan_reference import (
    RELEASED_FAIRSEQ_CONFIG,
    TINY_FAIRSEQ_CONFIG,
    duration_rounding_margin,
    random_released_state_dict,
    reference_durations,
    reference_generator,
    reference_synthesize,
)

TOLERANCE = 1e-5  # max abs difference allowed against the reference (fp32, CPU)
NUM_UNITS = TINY_FAIRSEQ_CONFIG["num_embeddings"]


def random_units(count: int, seed: int) -> list[int]:
    return torch.randint(0, NUM_UNITS, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def units_off_boundary(sd: dict, count: int, seed: int) -> list[int]:
    """Random units whose predicted durations sit at least 1e-3 from a rounding boundary (k + 0.5), so that float
    noise cannot flip a duration; the first such draw from ``seed`` on (deterministic)."""
    for attempt in range(seed, seed + 50):
        units = random_units(count, attempt)
        if duration_rounding_margin(sd, TINY_FAIRSEQ_CONFIG, units) > 1e-3:
            return units
    raise AssertionError("no draw of units away from rounding boundaries")


@pytest.fixture(scope="module")
def released_sd():
    return random_released_state_dict(TINY_FAIRSEQ_CONFIG, seed=0)


@pytest.fixture(scope="module")
def model(released_sd):
    vocoder = UnitHiFiGAN(VocoderConfig.from_fairseq_json(TINY_FAIRSEQ_CONFIG))
    return vocoder.load_weights(convert_state_dict(released_sd)).eval()


# --- config -----------------------------------------------------------------------------------------------------


def test_default_config_is_the_release():
    config = VocoderConfig()
    assert VocoderConfig.from_fairseq_json(RELEASED_FAIRSEQ_CONFIG) == config == VocoderConfig.from_name("released")
    assert config.upsample_rates == (5, 4, 4, 2, 2) and config.upsample_kernel_sizes == (11, 8, 8, 4, 4)
    assert config.resblock_dilation_sizes == ((1, 3, 5),) * 3 and config.resblock_kernel_sizes == (3, 7, 11)
    assert (config.num_units, config.embedding_dim, config.upsample_initial_channel) == (1000, 128, 512)
    assert (config.duration_channels, config.duration_kernel_size, config.duration_dropout) == (128, 3, 0.5)
    assert (config.hop_length, config.sample_rate, config.frame_rate, config.num_speakers) == (320, 16000, 50.0, 0)
    assert [config.stage_channels(i) for i in range(5)] == [256, 128, 64, 32, 16]


def test_config_round_trips_through_json():
    for config in (VocoderConfig(), VocoderConfig.tiny(num_speakers=3)):
        data = json.loads(json.dumps(config.to_dict()))
        assert VocoderConfig.from_dict(data) == config
        assert VocoderConfig.from_fairseq_json(VocoderConfig.tiny().to_fairseq_json()) == VocoderConfig.tiny()


def test_tiny_preset_keeps_the_released_framing():
    tiny = VocoderConfig.tiny()
    assert tiny.upsample_rates == VocoderConfig().upsample_rates and tiny.hop_length == HOP_LENGTH
    assert (tiny.num_units, tiny.embedding_dim, tiny.upsample_initial_channel) == (50, 16, 32)
    assert sum(p.numel() for p in UnitHiFiGAN(tiny).parameters()) < 100_000


def test_full_size_parameter_count_matches_the_release():
    # FAIRSEQ_COMPAT.md: 13,485,443 parameters with weight norm; folding removes one g per output channel.
    g_scalars = 512 + (512 + 256 + 128 + 64 + 32) + 18 * (256 + 128 + 64 + 32 + 16) + 1
    model = UnitHiFiGAN(device="meta")
    assert sum(p.numel() for p in model.parameters()) == 13_485_443 - g_scalars


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"upsample_rates": (5, 4, 4, 2, 4), "upsample_kernel_sizes": (11, 8, 8, 4, 8)}, "product of upsample_rates"),
        ({"upsample_kernel_sizes": (10, 8, 8, 4, 4)}, "stage 0: upsample kernel 10 and rate 5"),
        ({"upsample_kernel_sizes": (11, 8, 8, 4)}, "same length"),
        ({"resblock": "2"}, "resblock type '2' is not supported"),
        ({"resblock_kernel_sizes": (3, 8, 11)}, "odd"),
        ({"resblock_dilation_sizes": ((1, 3, 5),) * 2}, "one dilation list per residual block"),
        ({"num_units": 0}, "num_units must be a positive int"),
        ({"num_speakers": -1}, "num_speakers"),
        ({"duration_kernel_size": 4}, "duration_kernel_size must be odd"),
        ({"upsample_initial_channel": 48}, "divisible by 2**5"),
        ({"duration_dropout": 1.0}, "duration_dropout"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        VocoderConfig.tiny(**changes)


def test_config_from_dict_lists_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown vocoder config keys \['channels'\]"):
        VocoderConfig.from_dict({**VocoderConfig().to_dict(), "channels": 3})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"f0": True}, r"unsupported fairseq vocoder options \['f0'\]"),
        ({"multispkr": "from_input"}, r"\['multispkr'\]"),
        ({"embedder_params": {"embedding_dim": 256}}, r"\['embedder_params'\]"),
        ({"f0_quant_num_bin": 64}, r"\['f0_quant_num_bin'\]"),
        ({"dur_predictor_params": None}, "without a duration predictor is not supported"),
        ({"num_embeddings": None}, r"lacks required keys \['num_embeddings'\]"),
        ({"model_in_dim": 80}, r"model_in_dim \(80\) must equal embedding_dim \(128\)"),
        ({"resblock": "2"}, "resblock type '2'"),
        ({"code_hop_size": 256}, r"code_hop_size \(256\) disagrees"),
        ({"resblock_dilation_sizes": [[1, 3, 5, 7]] * 3}, "exactly 3 dilations"),
        (
            {"dur_predictor_params": {**RELEASED_FAIRSEQ_CONFIG["dur_predictor_params"], "var_pred_kernel_size": 5}},
            "var_pred_kernel_size is 5",
        ),
        (
            {"dur_predictor_params": {**RELEASED_FAIRSEQ_CONFIG["dur_predictor_params"], "encoder_embed_dim": 64}},
            "encoder_embed_dim",
        ),
    ],
)
def test_fairseq_json_rejects_unsupported_options(changes, message):
    with pytest.raises(ValueError, match=message):
        VocoderConfig.from_fairseq_json({**RELEASED_FAIRSEQ_CONFIG, **changes})


def test_fairseq_json_without_model_in_dim_uses_fairseqs_default():
    data = {k: v for k, v in RELEASED_FAIRSEQ_CONFIG.items() if k != "model_in_dim"}
    with pytest.raises(ValueError, match=r"absent, fairseq default 80"):
        VocoderConfig.from_fairseq_json(data)


# --- parity with the reference ------------------------------------------------------------------------------------


def test_random_weights_give_meaningful_durations_and_audio(released_sd):
    """The parity fixture must exercise clamping, rounding and a wide spread of durations (not all ones)."""
    units = random_units(400, seed=11)
    durations = reference_durations(released_sd, TINY_FAIRSEQ_CONFIG, units)
    assert durations.min() == 1 and 0.05 < (durations == 1).float().mean() < 0.5
    assert 12 <= durations.max() <= 30 and len(set(durations.tolist())) >= 10
    wave, _ = reference_synthesize(released_sd, TINY_FAIRSEQ_CONFIG, units[:40])
    assert 0.1 < wave.std() < 0.8 and (wave.abs() > 0.99).float().mean() < 0.05


@pytest.mark.parametrize("dur_prediction", [True, False], ids=["dur", "no-dur"])
@pytest.mark.parametrize(("count", "seed"), [(1, 1), (4, 2), (37, 3), (150, 4)])
def test_parity_with_the_reference(model, released_sd, dur_prediction, count, seed):
    units = units_off_boundary(released_sd, count, seed)
    expected, durations = reference_synthesize(released_sd, TINY_FAIRSEQ_CONFIG, units, dur_prediction)
    wave = model.synthesize(units, dur_prediction=dur_prediction)
    assert wave.shape == (HOP_LENGTH * int(durations.sum()),)
    assert (wave - expected).abs().max() <= TOLERANCE
    if dur_prediction:
        assert torch.equal(model.predict_durations(units), durations)


def test_the_parity_tolerance_catches_plausible_mistakes(model, released_sd):
    units = random_units(37, 3)
    ours = model.synthesize(units)
    hifigan_slope, _ = reference_synthesize(released_sd, TINY_FAIRSEQ_CONFIG, units, final_slope=0.1)
    wrong_fold, _ = reference_synthesize(released_sd, TINY_FAIRSEQ_CONFIG, units, fold_dim=1)
    assert (ours - hifigan_slope).abs().max() > 1000 * TOLERANCE
    assert (ours - wrong_fold).abs().max() > 1000 * TOLERANCE


def test_given_durations_are_used_and_negative_ids_dropped(model, released_sd):
    units, durations = [3, -1, 7, 7, 12], [2, 5, 1, 3, 4]
    wave = model.synthesize(units, durations=durations)
    expected = reference_generator(released_sd, TINY_FAIRSEQ_CONFIG, [3, 3, 7, 7, 7, 7, 12, 12, 12, 12])
    assert wave.shape == (10 * HOP_LENGTH,) and (wave - expected).abs().max() <= TOLERANCE
    assert torch.equal(model.synthesize([-5, 3, -1, 7]), model.synthesize([3, 7]))
    assert torch.equal(model.synthesize(torch.tensor([[3, 7]])), model.synthesize([3, 7]))


@pytest.mark.parametrize(
    ("units", "kwargs", "message"),
    [
        ([], {}, "units is empty"),
        ([-1, -2], {}, "units is empty"),
        ([1, 50, 2], {}, r"unit id 50 \(position 1\) is out of range; this vocoder knows units 0..49"),
        (torch.tensor([1.0, 2.0]), {}, "integer unit ids"),
        (torch.zeros(2, 3, dtype=torch.long), {}, r"one sequence \[T\]"),
        ([1, "2"], {}, "integer unit ids, got '2'"),
        ([1, 2], {"durations": [1]}, "durations has 1 entries but there are 2 units"),
        ([1, 2], {"durations": [1, 0]}, "durations must be >= 1"),
        ([1, 2], {"speaker": 0}, "single-speaker"),
    ],
)
def test_bad_input_is_rejected_clearly(model, units, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.synthesize(units, **kwargs)


# --- batching -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dur", "no-dur", "given"])
def test_batch_equals_one_by_one(model, mode):
    seqs = [random_units(n, seed) for seed, n in enumerate([1, 7, 40, 3, 25])]
    durations = [torch.randint(1, 6, (len(s),), generator=torch.Generator().manual_seed(9)) for s in seqs]
    if mode == "given":
        batch = model.synthesize_batch(seqs, durations=durations)
        single = [model.synthesize(s, durations=d) for s, d in zip(seqs, durations, strict=True)]
    else:
        batch = model.synthesize_batch(seqs, dur_prediction=mode == "dur")
        single = [model.synthesize(s, dur_prediction=mode == "dur") for s in seqs]
    assert [b.shape for b in batch] == [s.shape for s in single]
    assert max((b - s).abs().max().item() for b, s in zip(batch, single, strict=True)) <= TOLERANCE


def test_batch_errors_name_the_item(model):
    with pytest.raises(ValueError, match=r"unit_seqs\[1\]: unit id 99"):
        model.synthesize_batch([[1, 2], [99]])
    with pytest.raises(ValueError, match="unit_seqs is empty"):
        model.synthesize_batch([])
    with pytest.raises(ValueError, match="durations has 1 entries for 2 unit sequences"):
        model.synthesize_batch([[1], [2]], durations=[[1]])


# --- fused oneDNN inference path ---------------------------------------------------------------------------------


def plain_synthesize(model, *args, **kwargs):
    """Synthesis through the nn modules, with the fused path switched off."""
    model.generator.fast_inference = False
    try:
        return model.synthesize(*args, **kwargs)
    finally:
        model.generator.fast_inference = True


def test_fast_path_runs_and_equals_the_plain_modules(model, released_sd):
    assert onednn_available() == torch.backends.mkldnn.is_available()  # this build ships the fused ops
    model.generator.__dict__.pop("_fast_generator", None)
    units = units_off_boundary(released_sd, 60, 7)
    fast = model.synthesize(units)
    assert ("_fast_generator" in model.generator.__dict__) == onednn_available()
    plain = plain_synthesize(model, units)
    expected, _ = reference_synthesize(released_sd, TINY_FAIRSEQ_CONFIG, units)
    assert (fast - plain).abs().max() <= TOLERANCE and (fast - expected).abs().max() <= TOLERANCE
    # equal lengths: the batch has no padding, so it takes the fused path too
    seqs = [random_units(20, seed) for seed in range(3)]
    batch = model.synthesize_batch(seqs, dur_prediction=False)
    plain = [plain_synthesize(model, s, dur_prediction=False) for s in seqs]
    assert max((b - p).abs().max() for b, p in zip(batch, plain, strict=True)) <= TOLERANCE


def test_fast_path_repacks_when_weights_change(model):
    units = random_units(12, 4)
    before = model.synthesize(units)
    weight = model.generator.blocks[4].convs2[1].weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.5)  # in-place update, as an optimizer step does
        changed = model.synthesize(units)
        assert (changed - before).abs().max() > 1e-3
        assert (changed - plain_synthesize(model, units)).abs().max() <= TOLERANCE
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert (model.synthesize(units) - before).abs().max() <= TOLERANCE


def test_without_onednn_the_plain_modules_run(model, monkeypatch):
    units = random_units(15, 6)
    expected = plain_synthesize(model, units)
    onednn_available.cache_clear()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model.generator.__dict__.pop("_fast_generator", None)
    try:
        assert not onednn_available()
        assert torch.equal(model.synthesize(units), expected)
        assert "_fast_generator" not in model.generator.__dict__
    finally:
        onednn_available.cache_clear()


# --- training path ------------------------------------------------------------------------------------------------


def test_training_forward_matches_inference_and_backpropagates(model):
    seqs = [random_units(n, seed) for seed, n in enumerate([6, 11, 3])]
    durations = [torch.randint(1, 5, (len(s),), generator=torch.Generator().manual_seed(n)) for n, s in enumerate(seqs)]
    units = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True)
    padded = torch.nn.utils.rnn.pad_sequence(durations, batch_first=True, padding_value=7)  # padding is ignored
    lengths = torch.tensor([len(s) for s in seqs])
    model.train()
    try:
        out = model(units, padded, unit_lengths=lengths)
        target = torch.log1p(padded.float())
        loss = out.wave.abs().mean() + ((out.log_durations - target) ** 2).mean()
        loss.backward()
    finally:
        model.eval()
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert out.log_durations.shape == units.shape
    assert out.frame_lengths.tolist() == [int(d.sum()) for d in durations]
    assert grads["embed.weight"].abs().sum() > 0 and grads["generator.conv_post.weight"].abs().sum() > 0
    assert grads["duration.proj.weight"].abs().sum() > 0
    for b, (seq, dur) in enumerate(zip(seqs, durations, strict=True)):
        n = int(dur.sum()) * HOP_LENGTH
        assert (out.wave[b, :n].detach() - model.synthesize(seq, durations=dur)).abs().max() <= TOLERANCE


def test_weight_norm_round_trip_keeps_the_output(model):
    units = random_units(9, 5)
    before = model.synthesize(units)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    model.apply_weight_norm()
    try:
        keys = set(model.state_dict())
        assert "generator.ups.0.parametrizations.weight.original0" in keys
        assert model.generator.ups[0].parametrizations.weight.original0.shape == (32, 1, 1)  # per input channel
        assert set(model.inference_state_dict()) == set(plain)
        assert (model.synthesize(units) - before).abs().max() <= TOLERANCE
    finally:
        model.remove_weight_norm()
    assert set(model.state_dict()) == set(plain)
    assert max((model.state_dict()[k] - v).abs().max().item() for k, v in plain.items()) <= 1e-6
    model.load_state_dict(plain)


# --- persistence --------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "vocoder")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format"] == VOCODER_FORMAT and config["num_units"] == NUM_UNITS
    assert (folder / WEIGHTS_NAME).is_file()
    loaded = UnitHiFiGAN.from_pretrained(folder, device="cpu")
    assert loaded.config == model.config and not loaded.training
    units = random_units(12, 8)
    assert torch.equal(loaded.synthesize(units), model.synthesize(units))
    assert torch.equal(UnitHiFiGAN.load(folder).synthesize(units), model.synthesize(units))
    with pytest.raises(ValueError, match="a separate config is only for a fairseq checkpoint file"):
        UnitHiFiGAN.load(folder, folder / CONFIG_NAME)


def test_from_pretrained_reports_what_is_wrong(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="no such vocoder folder"):
        UnitHiFiGAN.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a vocoder folder"):
        UnitHiFiGAN.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps(RELEASED_FAIRSEQ_CONFIG))
    with pytest.raises(ValueError, match=r"looks like a fairseq config\.json"):
        UnitHiFiGAN.from_pretrained(tmp_path)
    folder = model.save_pretrained(tmp_path / "ours")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors are missing"):
        UnitHiFiGAN.from_pretrained(folder)
    other = UnitHiFiGAN(VocoderConfig.tiny(num_units=60)).save_pretrained(tmp_path / "other")
    (other / CONFIG_NAME).write_text((folder / CONFIG_NAME).read_text())
    with pytest.raises(ValueError, match=r"embed.weight has shape \(60, 16\), the model expects \(50, 16\)"):
        UnitHiFiGAN.from_pretrained(other)
    with pytest.raises(FileNotFoundError, match="no such vocoder checkpoint file or folder"):
        UnitHiFiGAN.load(tmp_path / "nothing")


# --- multi-speaker ------------------------------------------------------------------------------------------------


def test_speaker_embedding_is_added_after_durations():
    torch.manual_seed(0)
    model = UnitHiFiGAN(VocoderConfig.tiny(num_speakers=3)).eval()
    assert model.speaker_embed.weight.shape == (3, 16)
    assert model.generator.conv_pre.weight.shape[1] == 16  # added, not concatenated: conv_pre keeps its shape
    units = random_units(10, 3)
    a, b = model.synthesize(units, speaker=0), model.synthesize(units, speaker=2)
    assert a.shape == b.shape and (a - b).abs().max() > 1e-3
    batch = model.synthesize_batch([units, units[:4]], speakers=[2, 1])
    assert (batch[0] - b).abs().max() <= TOLERANCE
    assert (batch[1] - model.synthesize(units[:4], speaker=1)).abs().max() <= TOLERANCE
    with pytest.raises(ValueError, match=r"pass speaker=0..2"):
        model.synthesize(units)
    with pytest.raises(ValueError, match=r"speaker 3 is out of range"):
        model.synthesize(units, speaker=3)
