"""The fairseq mHuBERT converter: released pickle layout without fairseq, key table, config checks, safety."""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from transformers import HubertModel

from speechgpt.convert.fairseq_hubert import (
    FAIRSEQ_HUBERT_KEYS,
    RELEASED_HUBERT_NAME,
    RELEASED_HUBERT_SHA256,
    convert_fairseq_hubert_state_dict,
    hubert_config_from_fairseq,
    load_fairseq_hubert,
    parse_conv_feature_layers,
)
from speechgpt.convert.restricted_pickle import RESTRICTED_PICKLE, is_stub, stub_state
from tests.fairseq_reference import (
    random_fairseq_hubert_state_dict,
    tiny_fairseq_hubert_cfg,
    write_fairseq_hubert_checkpoint,
)

RELEASED_CONV_LAYERS = "[(512,10,5)]+[(512,3,2)]*4+[(512,2,2)]*2"


@pytest.fixture(scope="module")
def tiny() -> tuple[dict, dict]:
    cfg = tiny_fairseq_hubert_cfg(layers=3)
    return cfg, random_fairseq_hubert_state_dict(cfg, seed=1)


@pytest.fixture(scope="module")
def checkpoint(tiny: tuple[dict, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "hubert.pt"
    write_fairseq_hubert_checkpoint(path, *tiny)
    return path


def _write(path: Path, cfg: dict, sd: dict, **kwargs: bool) -> Path:
    write_fairseq_hubert_checkpoint(path, cfg, sd, **kwargs)
    return path


def test_released_layout_needs_the_restricted_unpickler(checkpoint: Path) -> None:
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint, weights_only=True)
    with pytest.raises(ModuleNotFoundError, match="fairseq"):
        torch.load(checkpoint, weights_only=False)
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
    dictionary = raw["task_state"]["dictionaries"][0]
    assert is_stub(dictionary, "fairseq.data.dictionary", "Dictionary")
    assert stub_state(dictionary)["symbols"][:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert is_stub(raw["extra_state"]["metrics"]["train"]["loss"], "fairseq.logging.meters", "AverageMeter")


def test_load_converts_every_key_and_reads_sizes_from_cfg(tiny: tuple[dict, dict], checkpoint: Path) -> None:
    _, sd = tiny
    config, hf_sd = load_fairseq_hubert(checkpoint)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 3, 4)
    assert config.intermediate_size == 64 and config.conv_dim == (32,) * 7
    assert config.conv_kernel == (10, 3, 3, 3, 3, 2, 2) and config.conv_stride == (5, 2, 2, 2, 2, 2, 2)
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (16, 4)
    assert config.feat_extract_norm == "group" and not config.do_stable_layer_norm and not config.conv_bias
    model = HubertModel(config)
    assert set(hf_sd) == set(model.state_dict())
    model.load_state_dict(hf_sd, strict=True)
    # values land where the table says
    torch.testing.assert_close(model.masked_spec_embed, sd["mask_emb"], rtol=0, atol=0)
    attn = model.encoder.layers[2].attention
    torch.testing.assert_close(attn.k_proj.weight, sd["encoder.layers.2.self_attn.k_proj.weight"], rtol=0, atol=0)
    conv = model.encoder.pos_conv_embed.conv
    torch.testing.assert_close(
        conv.parametrizations.weight.original0, sd["encoder.pos_conv.0.weight_g"], rtol=0, atol=0
    )
    v = sd["encoder.pos_conv.0.weight_v"]
    folded = sd["encoder.pos_conv.0.weight_g"] * v / v.norm(dim=(0, 1), keepdim=True)
    torch.testing.assert_close(conv.weight, folded)  # HF's dim=2 weight norm is fairseq's
    group_norm = model.feature_extractor.conv_layers[0].layer_norm
    torch.testing.assert_close(group_norm.weight, sd["feature_extractor.conv_layers.0.2.weight"], rtol=0, atol=0)


def test_other_formats_load_the_same(tiny: tuple[dict, dict], checkpoint: Path, tmp_path: Path) -> None:
    _, reference = load_fairseq_hubert(checkpoint)
    for name, kwargs in [("legacy.pt", {"legacy_format": True}), ("args.pt", {"use_args": True})]:
        _, hf_sd = load_fairseq_hubert(_write(tmp_path / name, *tiny, **kwargs))
        assert set(hf_sd) == set(reference)
        assert all(torch.equal(hf_sd[k], reference[k]) for k in reference)


def test_key_table_drops_only_pretraining_heads() -> None:
    assert [k for k, v in FAIRSEQ_HUBERT_KEYS.items() if v is None] == [
        "final_proj.weight",
        "final_proj.bias",
        "label_embs_concat",
    ]


def test_full_size_keys_match_hf_base(tiny: tuple[dict, dict]) -> None:
    """At the released sizes (on the meta device), the table yields exactly HF's 12-layer base keys and shapes."""
    cfg = tiny_fairseq_hubert_cfg(
        conv_channels=512, embed_dim=768, ffn_dim=3072, heads=12, conv_pos=128, conv_pos_groups=16
    )
    assert cfg["model"]["conv_feature_layers"] == RELEASED_CONV_LAYERS
    config = hubert_config_from_fairseq(cfg)
    with torch.device("meta"):
        sd = random_fairseq_hubert_state_dict(cfg)
        expected = {k: v.shape for k, v in HubertModel(config).state_dict().items()}
    assert len(sd) == 214  # the released state dict's size (section B)
    converted = convert_fairseq_hubert_state_dict(sd)
    assert {k: v.shape for k, v in converted.items()} == expected


def test_unknown_and_missing_keys_are_listed(tiny: tuple[dict, dict], tmp_path: Path) -> None:
    cfg, sd = tiny
    extra = dict(sd)
    extra["encoder.layers.0.self_attn.rel_pos.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"unknown fairseq HuBERT keys \['encoder\.layers\.0\.self_attn\.rel_pos"):
        load_fairseq_hubert(_write(tmp_path / "extra.pt", cfg, extra))
    missing = {k: v for k, v in sd.items() if k != "encoder.layers.1.fc2.bias"}
    with pytest.raises(ValueError, match=r"missing keys .*\['encoder\.layers\.1\.feed_forward\.output_dense\.bias'\]"):
        load_fairseq_hubert(_write(tmp_path / "missing.pt", cfg, missing))
    wrong_shape = dict(sd)
    wrong_shape["post_extract_proj.weight"] = torch.zeros(32, 16)
    with pytest.raises(ValueError, match=r"shapes do not match.*feature_projection\.projection\.weight"):
        load_fairseq_hubert(_write(tmp_path / "shape.pt", cfg, wrong_shape))


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("model", "extractor_mode", "layer_norm", "model.extractor_mode = 'layer_norm', expected 'default'"),
        ("model", "layer_norm_first", True, "model.layer_norm_first = True, expected False"),
        ("model", "conv_bias", True, "model.conv_bias = True, expected False"),
        ("model", "activation_fn", "relu", "model.activation_fn = 'relu', expected 'gelu'"),
        ("task", "normalize", True, "task.normalize = True, expected False"),
        ("model", "layer_type", "conformer", "model.layer_type = 'conformer', expected 'transformer'"),
        ("model", "encoder_layers", "12", "model.encoder_layers = '12', expected a positive int"),
        ("model", "conv_feature_layers", "__import__('os')", "only lists of"),
    ],
)
def test_unsupported_config_is_rejected(
    tiny: tuple[dict, dict], tmp_path: Path, section: str, field: str, value: object, message: str
) -> None:
    cfg, sd = tiny
    bad = copy.deepcopy(cfg)
    bad[section][field] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        hubert_config_from_fairseq(bad)
    path = _write(tmp_path / "bad.pt", bad, sd)
    with pytest.raises(ValueError, match=str(path)):
        load_fairseq_hubert(path)


def test_missing_required_option_is_rejected(tiny: tuple[dict, dict]) -> None:
    cfg, _ = tiny
    bad = copy.deepcopy(cfg)
    del bad["model"]["layer_norm_first"]
    with pytest.raises(ValueError, match=r"model\.layer_norm_first is missing, expected False"):
        hubert_config_from_fairseq(bad)
    with pytest.raises(ValueError, match="no 'task' section"):
        hubert_config_from_fairseq({"model": cfg["model"]})


def test_conv_feature_layers_parser() -> None:
    assert parse_conv_feature_layers(RELEASED_CONV_LAYERS) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_feature_layers("[(8, 4, 2)] * 2") == [(8, 4, 2), (8, 4, 2)]
    for bad in ("[(512,10,5)]+os.system('x')", "[(1,2)]", "[(1,2,-3)]", "[]", "[(1,2,3)]*10**9", "(("):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_feature_layers(bad)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_fairseq_hubert(tmp_path / "nothing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match=r"garbage\.pt: not a fairseq checkpoint"):
        load_fairseq_hubert(garbage)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match=r"other\.pt: not a fairseq checkpoint \(no 'model'"):
        load_fairseq_hubert(other)
    no_cfg = tmp_path / "nocfg.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "args": None}, no_cfg)
    with pytest.raises(ValueError, match=r"nocfg\.pt: not a fairseq checkpoint \(no 'cfg'"):
        load_fairseq_hubert(no_cfg)


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.target}",))


class _EvalExploit:
    def __reduce__(self) -> tuple:
        return (eval, ("__import__('os').getcwd()",))


def test_malicious_pickles_are_refused(tiny: tuple[dict, dict], tmp_path: Path) -> None:
    cfg, sd = tiny
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"cfg": cfg, "model": sd, "extra_state": _Exploit(target)}, path)
    with pytest.raises(ValueError, match=r"evil\.pt: unsafe .*refusing to load global '(posix|os)\.system'"):
        load_fairseq_hubert(path)
    assert not target.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        RESTRICTED_PICKLE.loads(pickle.dumps(_EvalExploit()))
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|os)\.system"):
        RESTRICTED_PICKLE.loads(pickle.dumps(_Exploit(target)))
    assert not target.exists()


def test_sha256_is_checked_only_for_the_released_name(tiny: tuple[dict, dict], tmp_path: Path) -> None:
    path = _write(tmp_path / RELEASED_HUBERT_NAME, *tiny)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=f"SHA-256 is {digest}, the released file's is {RELEASED_HUBERT_SHA256}"):
        load_fairseq_hubert(path, verify_sha256=True)
    load_fairseq_hubert(path)  # not asked: no check
    other = _write(tmp_path / "renamed.pt", *tiny)
    load_fairseq_hubert(other, verify_sha256=True)  # no known sum for this name
