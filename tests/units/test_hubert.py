"""HuBERT layer-11 features: parity with the fairseq reference math, HF hidden states, chunking, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertConfig, HubertModel

import speechgpt.units.hubert as hubert_module
from speechgpt.units.base import FRAME_RATE, FeatureExtractor, num_frames
from speechgpt.units.hubert import HubertFeatures
from tests.fairseq_reference import (
    numpy_assign,
    random_fairseq_hubert_state_dict,
    reference_hubert_layer,
    tiny_fairseq_hubert_cfg,
    write_fairseq_hubert_checkpoint,
)
from tests.synth import random_utterance

PARITY_ATOL = 1e-4  # max abs, fp32, CPU (the compat spec's bound)
NUM_CENTERS = 16


@pytest.fixture(scope="module")
def fairseq_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    """(cfg, fairseq state dict, checkpoint path) of a tiny 12-layer HuBERT in the released layout."""
    cfg = tiny_fairseq_hubert_cfg()
    state_dict = random_fairseq_hubert_state_dict(cfg, seed=0)
    path = tmp_path_factory.mktemp("fairseq") / "mhubert_tiny.pt"
    write_fairseq_hubert_checkpoint(path, cfg, state_dict)
    return cfg, state_dict, path


@pytest.fixture(scope="module")
def features(fairseq_model: tuple[dict, dict, Path]) -> HubertFeatures:
    return HubertFeatures.from_fairseq(fairseq_model[2])


@pytest.fixture(scope="module")
def centers(fairseq_model: tuple[dict, dict, Path]) -> np.ndarray:
    """k-means centres learned from the reference model's own layer-11 features (a few Lloyd steps)."""
    cfg, state_dict, _ = fairseq_model
    x = torch.cat([reference_hubert_layer(state_dict, cfg, random_utterance(100 + s, 10), 11) for s in range(4)])
    x = x.numpy()
    rng = np.random.default_rng(0)
    c = x[rng.choice(len(x), NUM_CENTERS, replace=False)].copy()
    for _ in range(15):
        ids = numpy_assign(x, c)
        for k in range(NUM_CENTERS):
            if (ids == k).any():
                c[k] = x[ids == k].mean(0)
    return c


def _clear_ids(features: torch.Tensor, centers: np.ndarray, rel_margin: float = 1e-3) -> np.ndarray:
    """Frames whose nearest centre wins by a clear margin (ids of near-ties may legitimately flip)."""
    d = ((features.numpy()[:, None, :] - centers[None]) ** 2).sum(-1)
    d.sort(1)
    return (d[:, 1] - d[:, 0]) > rel_margin * d[:, 1]


@pytest.mark.parametrize("num_samples", [16000, 16320, 48077], ids=["49-frames-odd", "50-frames-even", "149-frames"])
def test_layer11_parity_with_fairseq_reference(
    fairseq_model: tuple[dict, dict, Path], features: HubertFeatures, centers: np.ndarray, num_samples: int
) -> None:
    cfg, state_dict, _ = fairseq_model
    wave = random_utterance(7, num_phones=30)[:num_samples]
    ours = features(wave)
    reference = reference_hubert_layer(state_dict, cfg, wave, layer=11)
    assert ours.shape == reference.shape == (num_frames(num_samples), 32)
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert (ours - reference).abs().max().item() <= PARITY_ATOL
    clear = _clear_ids(reference, centers)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(numpy_assign(ours, centers)[clear], numpy_assign(reference, centers)[clear])


@pytest.mark.parametrize("kind", ["silence", "dc-offset", "loud-square"])
def test_parity_on_degenerate_inputs(
    fairseq_model: tuple[dict, dict, Path], features: HubertFeatures, kind: str
) -> None:
    """The GroupNorm fold (exact window statistics) matches GroupNorm on zero-variance and offset inputs."""
    cfg, state_dict, _ = fairseq_model
    t = np.arange(12_345) / 16_000
    wave = {
        "silence": np.zeros_like(t),
        "dc-offset": 0.5 + 1e-2 * np.sin(2 * np.pi * 440 * t),
        "loud-square": np.sign(np.sin(2 * np.pi * 97 * t)),
    }[kind].astype(np.float32)
    ours = features(wave)
    reference = reference_hubert_layer(state_dict, cfg, wave, layer=11)
    assert (ours - reference).abs().max().item() <= PARITY_ATOL


def test_group_norm_fold_is_more_accurate_than_fp32_group_norm(
    fairseq_model: tuple[dict, dict, Path], features: HubertFeatures
) -> None:
    """On an ill-conditioned input (large DC offset, tiny signal) fp32 GroupNorm loses digits; the fold, whose
    statistics are float64, stays closer to the exact (float64) answer than the fp32 reference does."""
    cfg, state_dict, _ = fairseq_model
    t = np.arange(12_345) / 16_000
    wave = (0.5 + 1e-3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    exact = reference_hubert_layer(state_dict, cfg, wave, layer=11, dtype=torch.float64)
    fp32_error = (reference_hubert_layer(state_dict, cfg, wave, layer=11) - exact).abs().max().item()
    our_error = (features(wave) - exact).abs().max().item()
    assert our_error < 0.5 * fp32_error


@pytest.mark.parametrize(
    ("variant", "kwargs"),
    [
        ("layer 10", {"layer": 10}),
        ("layer 12", {"layer": 12}),
        ("no final LayerNorm", {"final_layer_norm": False}),
        ("pre-LN", {"pre_ln": True}),
    ],
)
def test_wrong_reference_variants_change_the_ids(
    fairseq_model: tuple[dict, dict, Path], centers: np.ndarray, variant: str, kwargs: dict
) -> None:
    """The random model is 'meaningful': a parity test against a wrong computation would fail."""
    cfg, state_dict, _ = fairseq_model
    wave = random_utterance(8, num_phones=20)
    right = numpy_assign(reference_hubert_layer(state_dict, cfg, wave, layer=11), centers)
    wrong = numpy_assign(reference_hubert_layer(state_dict, cfg, wave, **{"layer": 11, **kwargs}), centers)
    assert (right != wrong).mean() > 0.3, variant


def test_equals_hf_hidden_states(features: HubertFeatures) -> None:
    wave = random_utterance(9, num_phones=12)
    with torch.no_grad():
        hidden = features.model(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
    for layer in (1, 6, 11, 12):
        extractor = HubertFeatures(features.model, layer=layer)
        torch.testing.assert_close(extractor(wave), hidden[layer][0], atol=2e-5, rtol=0)
    # and the layer-11 output is not the same as its neighbours
    assert (hidden[11] - hidden[10]).abs().max() > 0.5
    assert (hidden[11] - hidden[12]).abs().max() > 0.5


def test_save_pretrained_roundtrip_keeps_parity(
    fairseq_model: tuple[dict, dict, Path], features: HubertFeatures, tmp_path: Path
) -> None:
    cfg, state_dict, _ = fairseq_model
    folder = features.save_pretrained(tmp_path / "hubert")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    reloaded = HubertFeatures.from_pretrained(folder)
    assert reloaded.model.config.num_hidden_layers == 12  # the full model, not just the layers used
    assert HubertFeatures.load(folder).layer == 11
    for num_samples in (16000, 16320):
        wave = random_utterance(10, num_phones=30)[:num_samples]
        again = reloaded(wave)
        torch.testing.assert_close(again, features(wave), atol=1e-6, rtol=0)
        assert (again - reference_hubert_layer(state_dict, cfg, wave, 11)).abs().max().item() <= PARITY_ATOL


def test_plain_torch_ops_match_onednn(features: HubertFeatures) -> None:
    wave = random_utterance(11, num_phones=15)
    plain = HubertFeatures(features.model, use_onednn=False)
    assert not plain.uses_onednn
    torch.testing.assert_close(plain(wave), features(wave), atol=2e-5, rtol=0)


def test_protocol_and_attributes(features: HubertFeatures) -> None:
    assert isinstance(features, FeatureExtractor)
    assert features.layer == 11 and features.dim == 32 and features.frame_rate == FRAME_RATE
    assert features.min_samples == 400
    assert isinstance(features.model, HubertModel)
    assert features(np.zeros(400, dtype=np.float32)).shape == (1, 32)  # silence: GroupNorm of a constant
    assert features(torch.zeros(719)).shape == (1, 32)
    assert features(torch.zeros(720)).shape == (2, 32)


def test_long_audio_is_cut_into_chunks(features: HubertFeatures, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audio longer than MAX_CHUNK_SAMPLES runs in independent chunks, features concatenated (as the release)."""
    wave = random_utterance(12, num_phones=16)  # 1.92 s
    whole = features(wave)
    chunk = 8000
    monkeypatch.setattr(hubert_module, "MAX_CHUNK_SAMPLES", chunk)
    chunked = features(wave)
    pieces = [features(wave[s : s + chunk]) for s in range(0, len(wave), chunk) if len(wave[s : s + chunk]) >= 400]
    expected = torch.cat(pieces)
    torch.testing.assert_close(chunked, expected, atol=0, rtol=0)
    assert chunked.shape[0] == sum(num_frames(min(chunk, len(wave) - s)) for s in range(0, len(wave), chunk))
    assert chunked.shape[0] < whole.shape[0]  # chunking really happened (frames lost at each cut)
    # a trailing piece shorter than one window yields nothing, as a fairseq run would not
    short_tail = wave[: 2 * chunk + 200]
    torch.testing.assert_close(features(short_tail), torch.cat(pieces[:2]), atol=0, rtol=0)
    # batch() chunks long items the same way
    torch.testing.assert_close(features.batch([wave])[0], expected, atol=0, rtol=0)


def test_batch_equals_one_by_one(features: HubertFeatures) -> None:
    base = random_utterance(13, num_phones=20)
    waves = [base[:8000], random_utterance(14, 20)[:8000], base[:9123], base[1000:9000], base[:16000], base[:600]]
    singles = [features(w) for w in waves]
    for max_batch_size in (1, 2, 8):
        batched = features.batch(waves, max_batch_size=max_batch_size)
        assert len(batched) == len(waves)
        for one, many in zip(singles, batched, strict=True):
            torch.testing.assert_close(many, one, atol=2e-5, rtol=0)
    assert features.batch([]) == []


@pytest.mark.parametrize(
    ("config_kwargs", "description"),
    [
        ({"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}, "pre-LN, layer-norm convs"),
        ({"feat_extract_norm": "group", "do_stable_layer_norm": True}, "pre-LN"),
        ({"feat_extract_norm": "layer", "conv_bias": True, "num_conv_pos_embeddings": 15}, "odd positional kernel"),
    ],
)
def test_other_hf_layouts_equal_hidden_states(config_kwargs: dict, description: str) -> None:
    torch.manual_seed(0)
    sizes = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}
    config = HubertConfig(
        **sizes,
        conv_dim=(16,) * 7,
        num_conv_pos_embedding_groups=4,
        **{"num_conv_pos_embeddings": 16, **config_kwargs},
    )
    model = HubertModel(config).eval()
    wave = random_utterance(15, num_phones=10)
    with torch.no_grad():
        hidden = model(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
    for use_onednn in (True, False):
        extractor = HubertFeatures(model, layer=2, use_onednn=use_onednn)
        torch.testing.assert_close(extractor(wave), hidden[2][0], atol=2e-5, rtol=0, msg=description)


def test_bad_input_is_rejected(features: HubertFeatures) -> None:
    with pytest.raises(ValueError, match="too short: 399 samples, at least 400"):
        features(np.zeros(399, dtype=np.float32))
    with pytest.raises(ValueError, match=r"must be 1-D.*\(2, 1000\)"):
        features(np.zeros((2, 1000), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype int16"):
        features(np.zeros(1000, dtype=np.int16))
    wave = np.zeros(1000, dtype=np.float32)
    wave[500] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        features(wave)
    with pytest.raises(TypeError, match="list"):
        features([0.0] * 1000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"waves\[1\] is too short"):
        features.batch([np.zeros(1000, np.float32), np.zeros(10, np.float32)])
    with pytest.raises(ValueError, match="max_batch_size"):
        features.batch([np.zeros(1000, np.float32)], max_batch_size=0)


def test_bad_construction_is_rejected(features: HubertFeatures, tmp_path: Path) -> None:
    for layer in (0, 13, True):
        with pytest.raises(ValueError, match=r"layer must be an int in 1\.\.12"):
            HubertFeatures(features.model, layer=layer)
    with pytest.raises(TypeError, match="HubertModel"):
        HubertFeatures(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    relu = HubertModel(
        HubertConfig(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
            conv_dim=(8,) * 7,
            num_conv_pos_embedding_groups=2,
            hidden_act="relu",
        )
    )
    with pytest.raises(ValueError, match="hidden_act = 'relu', expected 'gelu'"):
        HubertFeatures(relu, layer=1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        HubertFeatures.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        HubertFeatures.from_pretrained(tmp_path)
