"""Memory estimates checked against numbers computed by hand for LLaMA-7B (after vocabulary expansion)."""

from __future__ import annotations

import json

import pytest

from speechgpt.train.estimate import (
    MODEL_SHAPES,
    STRATEGIES,
    activation_bytes,
    estimate_memory,
    lora_params,
    resolve_model_shape,
)

# LLaMA-7B: 32 layers, width 4096, MLP 11008, 32 heads; vocabulary 32000 + 1000 units + 6 control tokens.
P_7B = 6_746_656_768  # 6,738,415,616 (LLaMA-7B) + 2 x 1006 x 4096 (new embedding and head rows)
LAYER_7B = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # 202,383,360
ROOT_7B = 2 * 33006 * 4096 + 4096  # embeddings + untied head + final norm = 270,389,248


def test_parameter_counts() -> None:
    seven = MODEL_SHAPES["7b"]
    assert seven.layer_params == LAYER_7B == 202_383_360
    assert seven.root_params == ROOT_7B
    assert seven.params == P_7B
    assert MODEL_SHAPES["13b"].params == 13_026_165_760  # 13,015,864,320 + 2 x 1006 x 5120
    assert MODEL_SHAPES["tiny"].params == 3_497_216  # DESIGN's "3.5M-param" model (vocab 1300, tied)


def test_tiny_shape_matches_a_real_model(tmp_path) -> None:
    from speechgpt.lm import create_model, tiny_llama_config

    model = create_model(tiny_llama_config(1300), seed=0)
    assert MODEL_SHAPES["tiny"].params == model.num_parameters()
    model.config.save_pretrained(tmp_path)
    assert resolve_model_shape(tmp_path).params == model.num_parameters()
    assert resolve_model_shape(tmp_path / "config.json").num_layers == 4


def test_7b_stage2_full_fine_tuning_by_hand() -> None:
    table = estimate_memory("7b", stage=2, gpus=8, micro_batch_size=4)
    assert (table.seq_len, table.trainable_params) == (512, P_7B)
    tokens = 4 * 512
    # Per token and layer: 16h + 8i bytes = 65,536 + 88,064; logits: 33,006 x 10 bytes.
    per_layer_token = 16 * 4096 + 8 * 11008
    assert per_layer_token == 153_600
    activations = tokens * (32 * per_layer_token + 33006 * 10)
    assert activations == 10_742_292_480
    checkpointed = tokens * (32 * 2 * 4096 + per_layer_token + 33006 * 10)
    assert checkpointed == 1_527_406_592

    single = table.row("single")
    assert (single.weights, single.gradients, single.optimizer, single.buffers) == (4 * P_7B, 4 * P_7B, 8 * P_7B, 0)
    assert single.activations == activations and single.activations_checkpointed == checkpointed
    assert single.total == 16 * P_7B + activations  # no single 80 GB GPU holds it
    assert single.total / 2**30 == pytest.approx(110.53, abs=0.01)

    ddp = table.row("ddp")
    assert ddp.buffers == 4 * P_7B  # gradient buckets: a second copy of the gradients
    assert ddp.total == 20 * P_7B + activations

    fsdp = table.row("fsdp")
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (4 * P_7B // 8, 4 * P_7B // 8, 8 * P_7B // 8)
    assert fsdp.buffers == 4 * (ROOT_7B + 2 * LAYER_7B) == 2_700_623_872
    assert fsdp.total_checkpointed == 2 * P_7B + 2_700_623_872 + checkpointed
    assert fsdp.total_checkpointed / 2**30 == pytest.approx(16.50, abs=0.01)

    zero3 = table.row("zero3")
    assert (zero3.weights, zero3.gradients, zero3.optimizer) == (2 * P_7B // 8, 2 * P_7B // 8, 12 * P_7B // 8)
    assert zero3.buffers == fsdp.buffers


def test_7b_stage3_lora_by_hand() -> None:
    table = estimate_memory("7b", stage=3, gpus=8, strategy=["single", "ddp"], micro_batch_size=1)
    lora = 32 * 2 * 8 * (4096 + 4096)  # q_proj and v_proj: r x (in + out) per layer
    assert table.trainable_params == lora == 4_194_304 == lora_params(MODEL_SHAPES["7b"], 8, ("q_proj", "v_proj"))
    assert [r.strategy for r in table.rows] == ["single", "ddp"]
    single = table.row("single")
    assert single.weights == 2 * P_7B + 4 * lora  # frozen bf16 base + fp32 adapters
    assert (single.gradients, single.optimizer) == (4 * lora, 8 * lora)
    per_layer_token = 16 * 4096 + 8 * 11008 + 2 * 2 * (4096 + 8)  # plus each adapter's input and rank-8 hidden
    assert single.activations == 1024 * (32 * per_layer_token + 33006 * 10)
    assert table.row("ddp").buffers == 4 * lora
    assert single.total_checkpointed / 2**30 < 20  # LoRA on 7B fits one 24 GB GPU with checkpointing


def test_more_gpus_shrink_only_sharded_state() -> None:
    two = estimate_memory("13b", stage=1, gpus=2)
    eight = estimate_memory("13b", stage=1, gpus=8)
    for name in ("fsdp", "zero3"):
        assert eight.row(name).optimizer * 4 == pytest.approx(two.row(name).optimizer, abs=4)
        assert eight.row(name).activations == two.row(name).activations
    assert eight.row("ddp") == two.row("ddp")
    assert eight.seq_len == 1024
    one = estimate_memory("13b", stage=1, gpus=1, strategy="fsdp")
    assert one.row("fsdp").buffers == 0  # nothing to gather from a single shard


def test_model_size_forms() -> None:
    assert resolve_model_shape("7B") is MODEL_SHAPES["7b"]
    shaped = resolve_model_shape("6.7e9")
    assert (shaped.num_layers, shaped.hidden_size) == (32, 4096)  # LLaMA's proportions recover LLaMA-7B's shape
    assert resolve_model_shape(350_000_000).num_layers == 12  # (350e6 / 196,608) ** (1/3) = 12.1
    assert resolve_model_shape("350m").params == resolve_model_shape(350_000_000).params
    with pytest.raises(ValueError, match="unknown model size 'huge': use one of 7b, 13b, tiny"):
        resolve_model_shape("huge")
    with pytest.raises(ValueError, match="positive parameter count"):
        resolve_model_shape(0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stage must be one of"):
        estimate_memory("7b", stage=5)
    with pytest.raises(ValueError, match="unknown strategy 'zero2'"):
        estimate_memory("7b", strategy="zero2")
    with pytest.raises(ValueError, match="must be positive"):
        estimate_memory("7b", gpus=0)
    with pytest.raises(ValueError, match="unknown LoRA target module"):
        estimate_memory("7b", stage=3, lora_target_modules=("qkv",))


def test_table_text_and_json() -> None:
    table = estimate_memory("7b", stage=2, gpus=8)
    text = table.to_text()
    assert "LLaMA-7B + units: 6.747B params" in text and "stage 2, 8 GPU(s)" in text
    lines = text.splitlines()
    assert len(lines) == 2 + len(STRATEGIES) + 1
    assert lines[2].split()[:4] == ["single", "GPU", "25.1", "25.1"]  # 4 x 6.75e9 bytes = 25.1 GiB
    data = json.loads(json.dumps(table.to_dict()))
    assert [r["strategy"] for r in data["rows"]] == list(STRATEGIES)
    assert data["rows"][0]["total"] == table.rows[0].total


def test_activation_formula_with_grouped_query_attention() -> None:
    shape = resolve_model_shape("tiny")
    gqa = type(shape)("gqa", 4, 256, 688, 4, 1300, num_kv_heads=1, tie_word_embeddings=True)
    assert gqa.kv_size == 64
    full = activation_bytes(shape, 10, checkpointing=False)
    grouped = activation_bytes(gqa, 10, checkpointing=False)
    assert full - grouped == 10 * 4 * 2 * 2 * (256 - 64)  # k and v are narrower in every layer
