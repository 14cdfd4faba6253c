"""The released fairseq unit HiFi-GAN checkpoint -> UnitHiFiGAN: key table, weight-norm folding, errors, parity."""

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from speechgpt.convert.fairseq_hifigan import (
    FAIRSEQ_HIFIGAN_KEYS,
    CheckpointError,
    check_state_dict,
    convert_fairseq_hifigan,
    convert_state_dict,
    fold_weight_norm,
    infer_config,
    load_fairseq_hifigan,
    read_fairseq_checkpoint,
)
from speechgpt.vocoder import UnitHiFiGAN, VocoderConfig
from tests.hifigan_reference import (
    RELEASED_FAIRSEQ_CONFIG,
    TINY_FAIRSEQ_CONFIG,
    fold,
    random_released_state_dict,
    reference_synthesize,
    released_key_shapes,
)

KEYS_FILE = Path("/work/shared/compat/codehifigan_g_00500000_keys.txt")
KEYS_SHA256 = "52baff715392242139afe83bc87fbd9c8392b6986547cd27a367b335cf6e8f94"
"""sha256 of that file ("name<TAB>(shape)" lines, 302 of them), pinned so the check runs without the file."""
TOLERANCE = 1e-5


class Opaque:
    """An arbitrary Python object: a malicious pickle could run code when loading one."""


@pytest.fixture(scope="module")
def tiny_sd():
    return random_released_state_dict(TINY_FAIRSEQ_CONFIG, seed=1)


@pytest.fixture(scope="module")
def tiny_files(tiny_sd, tmp_path_factory):
    folder = tmp_path_factory.mktemp("released")
    torch.save({"generator": tiny_sd}, folder / "g_00500000")
    (folder / "config.json").write_text(json.dumps(TINY_FAIRSEQ_CONFIG))
    return folder / "g_00500000", folder / "config.json"


def meta_state_dict(cfg: dict) -> dict[str, torch.Tensor]:
    return {name: torch.empty(shape, device="meta") for name, shape in released_key_shapes(cfg)}


# --- the contract -------------------------------------------------------------------------------------------------


def test_reference_builder_reproduces_the_released_key_list():
    keys = released_key_shapes(RELEASED_FAIRSEQ_CONFIG)
    text = "\n".join(f"{name}\t{shape}" for name, shape in keys)  # the compat file's exact format
    assert len(keys) == 302 and hashlib.sha256(text.encode()).hexdigest() == KEYS_SHA256
    if KEYS_FILE.is_file():  # in this workspace: compare line by line for a readable failure
        assert text.splitlines() == KEYS_FILE.read_text().splitlines()


def test_full_size_conversion_on_meta_tensors():
    state = meta_state_dict(RELEASED_FAIRSEQ_CONFIG)
    assert infer_config(state) == VocoderConfig()
    converted = convert_state_dict(state)
    model = UnitHiFiGAN(device="meta")
    check_state_dict(converted, model)  # raises on any missing, extra or mis-shaped key
    assert len(converted) == 302 - 97  # 97 weight-norm pairs (g, v) fold into one weight each
    assert converted["generator.ups.0.weight"].shape == (512, 256, 11)
    assert converted["generator.blocks.14.convs2.2.weight"].shape == (16, 16, 11)


def test_every_table_entry_is_used_and_the_table_has_no_dropped_keys():
    folded = fold_weight_norm(meta_state_dict(TINY_FAIRSEQ_CONFIG))
    for source in FAIRSEQ_HIFIGAN_KEYS:
        pattern = re.compile("^" + re.escape(source).replace(r"\{\}", r"\d+") + "$")
        assert any(pattern.match(key) for key in folded), source
    assert None not in FAIRSEQ_HIFIGAN_KEYS.values()


def test_full_size_released_file_loads_and_matches_the_reference(tmp_path):
    state = random_released_state_dict(RELEASED_FAIRSEQ_CONFIG, seed=3)
    path = tmp_path / "g_00500000"
    torch.save({"generator": state}, path)  # ~54 MB, the size of the released file
    model = UnitHiFiGAN.from_fairseq(path, device="cpu")
    assert model.config == VocoderConfig() and not model.training
    units = [5, 999, 0, 512, 77, 77, 340]
    expected, durations = reference_synthesize(state, RELEASED_FAIRSEQ_CONFIG, units)
    wave = model.synthesize(units)
    assert wave.shape == (320 * int(durations.sum()),)
    assert (wave - expected).abs().max() <= TOLERANCE


# --- weight norm --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v_shape", [(8, 4, 7), (6, 3, 11), (1, 16, 7)], ids=["conv", "transposed", "post"])
def test_folding_equals_torch_weight_norm(v_shape):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(v_shape, generator=gen)
    g = torch.rand((v_shape[0], 1, 1), generator=gen) + 0.5
    folded = fold_weight_norm({"x.weight_g": g, "x.weight_v": v, "x.bias": torch.zeros(3)})
    assert set(folded) == {"x.weight", "x.bias"}
    torch.testing.assert_close(folded["x.weight"], torch._weight_norm(v, g, 0), rtol=0, atol=1e-7)
    torch.testing.assert_close(folded["x.weight"], fold(g, v), rtol=1e-6, atol=1e-7)
    # one norm per slice along dim 0: for a ConvTranspose1d [in, out, k] that is per *input* channel
    torch.testing.assert_close(folded["x.weight"].flatten(1).norm(dim=1), g.flatten(), rtol=1e-5, atol=1e-6)


def test_parametrization_spelling_folds_the_same_way():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 3, 4, stride=2))
    state = conv.state_dict()
    assert "parametrizations.weight.original0" in state
    folded = fold_weight_norm({f"ups.0.{k}": v for k, v in state.items()})
    torch.testing.assert_close(folded["ups.0.weight"], conv.weight.detach(), rtol=0, atol=1e-7)


def test_half_a_weight_norm_pair_is_an_error(tiny_sd):
    state = dict(tiny_sd)
    del state["ups.1.weight_g"]
    with pytest.raises(CheckpointError, match=r"ups.1.weight_v has no partner ups.1.weight_g"):
        fold_weight_norm(state, "ckpt")
    state = dict(tiny_sd)
    state["conv_pre.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"conv_pre\.weight is present next to its weight-norm pair"):
        fold_weight_norm(state, "ckpt")
    state = dict(tiny_sd)
    state["conv_post.weight_g"] = torch.ones(1, 16, 1)
    with pytest.raises(CheckpointError, match=r"conv_post.weight_g has shape \(1, 16, 1\), expected \(1, 1, 1\)"):
        fold_weight_norm(state, "ckpt")


# --- key table errors ---------------------------------------------------------------------------------------------


def test_unknown_keys_are_listed(tiny_sd):
    state = {**tiny_sd, "spkr.weight": torch.zeros(3, 4), "f0_quant_embed.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"unknown keys .*\['f0_quant_embed.weight', 'spkr.weight'\]"):
        convert_state_dict(state, "ckpt")


def test_missing_keys_are_listed(tiny_sd):
    state = {k: v for k, v in tiny_sd.items() if not k.startswith(("resblocks.7.convs2.1.", "dur_predictor.ln2."))}
    model = UnitHiFiGAN(VocoderConfig.tiny(), device="meta")
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \[.*'dur_predictor.ln2.bias'.*"
        r"'resblocks.7.convs2.1.bias', 'resblocks.7.convs2.1.weight_g/weight_v'\]",
    ):
        check_state_dict(convert_state_dict(state), model, "ckpt")


def test_shape_mismatch_names_the_key_and_both_shapes(tiny_sd, tmp_path):
    state = dict(tiny_sd)
    state["resblocks.5.convs2.1.weight_v"] = torch.randn(8, 8, 13)
    path = tmp_path / "g"
    torch.save({"generator": state}, path)
    with pytest.raises(
        CheckpointError,
        match=r"resblocks.5.convs2.1.weight_g/weight_v \(generator.blocks.5.convs2.1.weight\) has shape \(8, 8, 13\), "
        r"the configuration expects \(8, 8, 11\)",
    ):
        load_fairseq_hifigan(path, device="cpu")


# --- files and configs --------------------------------------------------------------------------------------------


def test_config_json_and_shape_inference_agree(tiny_files, tiny_sd):
    checkpoint, config_json = tiny_files
    with_json = load_fairseq_hifigan(checkpoint, config_json, device="cpu")
    inferred = load_fairseq_hifigan(checkpoint, device="cpu")
    assert with_json.config == inferred.config == VocoderConfig.tiny()
    units = [3, 14, 15, 9, 26, 5]
    assert torch.equal(with_json.synthesize(units), inferred.synthesize(units))
    expected, _ = reference_synthesize(tiny_sd, TINY_FAIRSEQ_CONFIG, units)
    assert (inferred.synthesize(units) - expected).abs().max() <= TOLERANCE


def test_config_json_is_checked_against_the_shapes(tiny_files, tmp_path):
    checkpoint, _ = tiny_files
    released_json = tmp_path / "config.json"
    released_json.write_text(json.dumps(RELEASED_FAIRSEQ_CONFIG))
    with pytest.raises(CheckpointError, match=r"config.json says num_units = 1000, the checkpoint has 50"):
        load_fairseq_hifigan(checkpoint, released_json)
    released_json.write_text(json.dumps({**TINY_FAIRSEQ_CONFIG, "f0": True}))
    with pytest.raises(CheckpointError, match=r"config.json: unsupported fairseq vocoder options \['f0'\]"):
        load_fairseq_hifigan(checkpoint, released_json)
    released_json.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_fairseq_hifigan(checkpoint, released_json)
    with pytest.raises(FileNotFoundError, match="no such vocoder config file"):
        load_fairseq_hifigan(checkpoint, tmp_path / "absent.json")


def test_a_non_released_layout_needs_its_config_json(tmp_path):
    cfg = {**TINY_FAIRSEQ_CONFIG, "upsample_rates": [8, 5, 2, 2, 2], "upsample_kernel_sizes": [16, 11, 4, 4, 4]}
    state = random_released_state_dict(cfg, seed=2)
    path, config_json = tmp_path / "g", tmp_path / "config.json"
    torch.save({"generator": state}, path)
    with pytest.raises(CheckpointError, match=r"upsample_kernel_sizes = \(16, 11, 4, 4, 4\) differ from the released"):
        load_fairseq_hifigan(path)
    config_json.write_text(json.dumps(cfg))
    model = load_fairseq_hifigan(path, config_json, device="cpu")
    assert model.config.upsample_rates == (8, 5, 2, 2, 2)
    expected, _ = reference_synthesize(state, cfg, [1, 2, 3])
    assert (model.synthesize([1, 2, 3]) - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a checkpoint", "not a readable torch checkpoint"),
        (b"", "not a readable torch checkpoint"),
        ("list", r"expected a fairseq vocoder checkpoint \{'generator': state_dict\}, found list"),
        ("model", r"found \['model'\]"),
        ("object", "not a readable torch checkpoint"),
        ("strings", "'generator' must map parameter names to tensors"),
    ],
)
def test_unreadable_or_wrong_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "g_bad"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    elif content == "model":
        torch.save({"model": {}}, path)
    elif content == "object":  # weights_only=True refuses arbitrary objects instead of running their code
        torch.save({"generator": {"x": Opaque()}}, path, pickle_module=pickle)
    else:
        torch.save({"generator": {"x": "text"}}, path)
    with pytest.raises(CheckpointError, match=message) as info:
        read_fairseq_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such vocoder checkpoint file"):
        read_fairseq_checkpoint(tmp_path / "absent")


def test_convert_writes_our_folder(tiny_files, tmp_path):
    checkpoint, config_json = tiny_files
    folder = convert_fairseq_hifigan(checkpoint, tmp_path / "vocoder", config_json)
    ours = UnitHiFiGAN.load(folder)
    released = UnitHiFiGAN.load(checkpoint, config_json)
    units = [1, 2, 3, 40, 41]
    assert torch.equal(ours.synthesize(units), released.synthesize(units))
