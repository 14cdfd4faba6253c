"""Model building, atomic save/load, and LoRA adapters (add, save/load, merge) on tiny Llama models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from speechgpt.lm import (
    LoraSettings,
    PromptEncoder,
    add_lora,
    count_parameters,
    create_model,
    expand_vocabulary,
    load_model,
    merge_lora,
    save_lora,
    save_model,
    tiny_llama_config,
)
from tests.lm.test_vocab import make_text_tokenizer

NUM_UNITS = 16


def expanded_model(*, tie: bool = True, seed: int = 0):
    tokenizer = make_text_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=256, tie_word_embeddings=tie
    )
    model = create_model(config, seed=seed)
    expand_vocabulary(model, tokenizer, NUM_UNITS)
    return model, tokenizer


def sample_ids(tokenizer) -> torch.Tensor:
    encoder = PromptEncoder(tokenizer)
    ids = (
        encoder.encode_unit_text("<sosp><1><5><15><eosp>")
        + tokenizer("the cat sat", add_special_tokens=False).input_ids
    )
    return torch.tensor([ids])


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_tiny_config_defaults() -> None:
    config = tiny_llama_config(1300)
    assert config.intermediate_size == 688  # 8/3 * 256 rounded up to a multiple of 16
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 4, 4)
    assert config.num_key_value_heads == 4 and config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    model = create_model(config)
    # 1300*256 tied embedding + 4 layers of (4*256*256 attention + 3*256*688 MLP + 2*256 norms) + final norm.
    assert count_parameters(model) == 1300 * 256 + 4 * (4 * 256 * 256 + 3 * 256 * 688 + 2 * 256) + 256 == 3_497_216
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = tiny_llama_config(100, hidden_size=64, num_heads=8, num_kv_heads=2, tie_word_embeddings=False)
    assert untied.num_key_value_heads == 2 and untied.intermediate_size == 176


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        tiny_llama_config(0)
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        tiny_llama_config(100, hidden_size=32, num_heads=3)
    with pytest.raises(ValueError, match="num_kv_heads 3"):
        tiny_llama_config(100, hidden_size=32, num_heads=4, num_kv_heads=3)


def test_create_model_is_seeded_and_leaves_global_rng_alone() -> None:
    config = tiny_llama_config(300, hidden_size=32, num_layers=1, num_heads=2)
    rng = torch.get_rng_state()
    a, b, c = create_model(config, seed=1), create_model(config, seed=1), create_model(config, seed=2)
    assert torch.equal(torch.get_rng_state(), rng)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.dim() == 2:
            assert not torch.equal(pa, pc), name


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_round_trip(tmp_path: Path, tie: bool) -> None:
    model, tokenizer = expanded_model(tie=tie)
    ids = sample_ids(tokenizer)
    expected = logits(model, ids)
    path = save_model(model, tokenizer, tmp_path / "lm")
    assert path == tmp_path / "lm"
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["lm"]  # no temporary siblings left
    loaded, loaded_tokenizer = load_model(path, device="cpu")
    assert not loaded.training
    torch.testing.assert_close(logits(loaded, ids), expected, rtol=0, atol=0)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert PromptEncoder(loaded_tokenizer).vocab == PromptEncoder(tokenizer).vocab
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    half, _ = load_model(path, dtype="bfloat16")
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16


def test_save_replaces_atomically_and_keeps_the_old_copy_on_failure(tmp_path: Path) -> None:
    model, tokenizer = expanded_model(seed=0)
    other, _ = expanded_model(seed=1)
    ids = sample_ids(tokenizer)
    save_model(model, tokenizer, tmp_path / "lm")
    save_model(other, tokenizer, tmp_path / "lm")
    torch.testing.assert_close(logits(load_model(tmp_path / "lm")[0], ids), logits(other, ids), rtol=0, atol=0)

    class Broken:
        def __len__(self) -> int:
            return len(tokenizer)

        def save_pretrained(self, directory: Path) -> None:
            (Path(directory) / "half_written.json").write_text("{")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(model, Broken(), tmp_path / "lm")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]
    assert not (tmp_path / "lm" / "half_written.json").exists()
    torch.testing.assert_close(logits(load_model(tmp_path / "lm")[0], ids), logits(other, ids), rtol=0, atol=0)


def test_load_dtype_defaults_to_float32(tmp_path: Path) -> None:
    model, tokenizer = expanded_model()
    save_model(model.to(torch.bfloat16), tokenizer, tmp_path / "lm")
    assert load_model(tmp_path / "lm")[0].model.embed_tokens.weight.dtype == torch.float32
    assert load_model(tmp_path / "lm", dtype="auto")[0].model.embed_tokens.weight.dtype == torch.bfloat16
    (tmp_path / "lm" / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer_config\.json"):
        load_model(tmp_path / "lm")


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config.json \(holds: \[\]\)"):
        load_model(tmp_path / "empty")
    model, tokenizer = expanded_model()
    save_model(model, tokenizer, tmp_path / "lm")
    with pytest.raises(ValueError, match="merge_lora=True needs"):
        load_model(tmp_path / "lm", merge_lora=True)
    with pytest.raises(FileNotFoundError, match=r"LoRA adapter directory .* has no adapter_config\.json"):
        load_model(tmp_path / "lm", lora=tmp_path / "empty")
    with pytest.raises(ValueError, match="dtype"):
        load_model(tmp_path / "lm", dtype="float8")
    small = create_model(tiny_llama_config(300, hidden_size=32, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="embedding rows"):
        save_model(small, tokenizer, tmp_path / "bad")


def test_add_lora_trains_only_the_adapter() -> None:
    model, tokenizer = expanded_model()
    ids = sample_ids(tokenizer)
    base = logits(model, ids)
    settings = LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj"))
    peft_model = add_lora(model, settings)
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    # Per layer and target: A is r x 32, B is out x r (q: 32 out, v: 8 out with 4 heads of 8 and 4 kv heads).
    assert count_parameters(peft_model, trainable_only=True) == 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 32 * 4))
    dropout = peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"]
    assert dropout.p == 0.1
    peft_model.eval()
    torch.testing.assert_close(logits(peft_model, ids), base, rtol=0, atol=0)  # B starts at zero


def test_lora_defaults_are_the_released_ones() -> None:
    assert LoraSettings() == LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    assert LoraSettings(target_modules=["k_proj"]).target_modules == ("k_proj",)
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": ()}):
        with pytest.raises(ValueError, match="LoRA"):
            LoraSettings(**bad)
    model, _ = expanded_model()
    with pytest.raises(ValueError, match=r"\['qkv'\] match no layer.*q_proj"):
        add_lora(model, LoraSettings(target_modules=("q_proj", "qkv")))
    with pytest.raises(ValueError, match="merge_lora needs a LoRA"):
        merge_lora(model)
    with pytest.raises(ValueError, match="save_lora needs a LoRA"):
        save_lora(model, "unused")


def _trained_adapter(base_dir: Path):
    model, tokenizer = expanded_model()
    save_model(model, tokenizer, base_dir)  # before add_lora: peft wraps the model's layers in place
    peft_model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    peft_model.eval()
    return peft_model, tokenizer


def test_lora_save_load_and_merge_give_the_same_logits(tmp_path: Path) -> None:
    peft_model, tokenizer = _trained_adapter(tmp_path / "base")
    ids = sample_ids(tokenizer)
    adapted = logits(peft_model, ids)
    with peft_model.disable_adapter():
        plain = logits(peft_model, ids)
    assert (adapted - plain).abs().max() > 1e-3  # the adapter really changes the output

    with pytest.raises(ValueError, match="save_lora"):
        save_model(peft_model, tokenizer, tmp_path / "wrong")
    with pytest.raises(ValueError, match="holds LoRA layers"):
        save_model(peft_model.get_base_model(), tokenizer, tmp_path / "wrong")
    adapter_dir = save_lora(peft_model, tmp_path / "adapter")
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()

    loaded, _ = load_model(tmp_path / "base", lora=adapter_dir)
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(logits(loaded, ids), adapted, rtol=0, atol=1e-6)
    merged_on_load, _ = load_model(tmp_path / "base", lora=adapter_dir, merge_lora=True)
    assert not isinstance(merged_on_load, PeftModel)
    torch.testing.assert_close(logits(merged_on_load, ids), adapted, rtol=0, atol=1e-5)

    merged = merge_lora(peft_model)
    assert not isinstance(merged, PeftModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids), adapted, rtol=0, atol=1e-5)
    save_model(merged, tokenizer, tmp_path / "merged")
    torch.testing.assert_close(logits(load_model(tmp_path / "merged")[0], ids), adapted, rtol=0, atol=1e-5)
