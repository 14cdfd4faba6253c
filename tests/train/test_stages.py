"""Stages 0 -> 1 -> 2 -> 3 in sequence on tiny data: each trains a few steps, lowers the loss and saves a model
the next one starts from."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechgpt.lm import PromptEncoder, SpeechVocab, load_model
from speechgpt.prompt_format import META_INSTRUCTION
from speechgpt.train.config import ConfigError, Stage0Config, Stage1Config, Stage2Config, Stage3Config
from speechgpt.train.data import USEFUL_TOKENS_KEY, DataError, RowCollator, encode_records, pad_examples
from speechgpt.train.stages import (
    ADAPTER_DIR,
    CONFIG_FILE,
    MODEL_DIR,
    StageResult,
    replayed_records,
    reshuffled_blocks,
    resolve_base_model,
    run_stage,
    run_stage0,
    run_stage1,
    run_stage2,
    run_stage3,
)
from speechgpt.train.trainer import LOSS_JSON, LOSS_PNG
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatures
from tests.train import (
    NUM_UNITS,
    TINY_MODEL,
    chain_of_modality_records,
    corpus_lines,
    cross_modal_records,
    unit_lines,
    write_lines,
    write_records,
)

COMMON = {"device": "cpu", "progress": False, "logging_steps": 2, "save_steps": 100, "warmup": 1}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, StageResult]:
    root = tmp_path_factory.mktemp("stages")
    corpus = write_lines(root / "corpus.txt", corpus_lines(200))
    units = write_lines(root / "units.txt", unit_lines(80))
    cross_modal = write_records(root / "cross_modal.jsonl", cross_modal_records(32))
    chain = write_records(root / "chain.jsonl", chain_of_modality_records(24))
    results = {}
    results[0] = run_stage0(
        Stage0Config(
            data=str(corpus),
            output_dir=str(root / "s0"),
            max_steps=12,
            batch_size=8,
            max_length=64,
            learning_rate=1e-2,
            tokenizer_vocab_size=512,
            max_position_embeddings=512,
            **TINY_MODEL,
            **COMMON,
        )
    )
    results[1] = run_stage1(
        Stage1Config(
            data=str(units),
            base_model=str(root / "s0"),  # a run folder: its model/ is used
            output_dir=str(root / "s1"),
            num_units=NUM_UNITS,
            max_steps=12,
            batch_size=8,
            max_length=64,
            learning_rate=1e-2,
            **COMMON,
        )
    )
    results[2] = run_stage2(
        Stage2Config(
            data=str(cross_modal),
            base_model=str(root / "s1" / MODEL_DIR),
            output_dir=str(root / "s2"),
            max_steps=10,
            batch_size=2,
            max_length=256,
            pack_length=512,
            learning_rate=1e-2,
            **COMMON,
        )
    )
    results[3] = run_stage(
        Stage3Config(
            data=str(chain),
            base_model=str(root / "s2"),
            output_dir=str(root / "s3"),
            max_steps=10,
            batch_size=2,
            max_length=256,
            learning_rate=3e-2,
            lora_r=4,
            lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
            **COMMON,
        )
    )
    return results


def _data_loss(model_dir: Path, records: list[dict[str, str]]) -> float:
    """Mean response loss of a saved model over records (padded batch: independent of packing)."""
    model, tokenizer = load_model(model_dir, device="cpu")
    examples = encode_records(records, PromptEncoder(tokenizer), max_length=256)
    batch = RowCollator(tokenizer.pad_token_id)(pad_examples(examples))
    batch.pop(USEFUL_TOKENS_KEY)
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_stage_lowers_the_loss_and_saves(runs: dict[int, StageResult], stage: int) -> None:
    result = runs[stage]
    assert result.stage == stage and result.steps in (10, 12)
    if stage < 3:
        assert result.final_loss < result.first_loss - 0.5, [e["loss"] for e in result.loss_curve]
    else:
        # A few LoRA steps on a 32-wide model move the loss little: measure it on all the data, noise-free.
        records = chain_of_modality_records(24)
        assert _data_loss(result.model_dir, records) < _data_loss(runs[2].model_dir, records) - 0.02
    assert (result.model_dir / "config.json").is_file() and (result.model_dir / "model.safetensors").is_file()
    assert (result.output_dir / LOSS_PNG).is_file()
    logged = json.loads((result.output_dir / LOSS_JSON).read_text())["log"]
    assert [e["loss"] for e in logged] == [e["loss"] for e in result.loss_curve]
    saved = json.loads((result.output_dir / CONFIG_FILE).read_text())
    assert saved["output_dir"] == str(result.output_dir)
    assert result.metrics["train_tokens_per_second"] > 0
    summary = result.to_dict()
    assert summary["final_loss"] == result.final_loss and summary["model_dir"] == str(result.model_dir)


def test_stage0_builds_tokenizer_and_tiny_model(runs: dict[int, StageResult]) -> None:
    model, tokenizer = load_model(runs[0].model_dir, device="cpu")
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert "<0>" not in tokenizer.get_vocab()  # text only: stage 1 adds speech
    assert len(tokenizer(META_INSTRUCTION)["input_ids"]) < 100  # layout merges keep every prompt short
    line = corpus_lines(1)[0]
    assert tokenizer.decode(tokenizer(line, add_special_tokens=False)["input_ids"]) == line
    # Packed blocks: every row is a full 64-token block but the last.
    assert runs[0].data.fill > 0.95


def test_reshuffled_blocks_pack_every_epoch_in_a_new_seeded_order() -> None:
    sequences = [[100 + line, 1, 2, 3, 4] for line in range(40)]  # 200 tokens: 25 blocks of 8 per copy
    rows, epochs = reshuffled_blocks(sequences, 8, 2.5, seed=0)
    assert epochs == pytest.approx(2.5 / 3)  # three copies, trained 5/6 of the way: 2.5 epochs of tokens
    assert len(rows) == 75 and all(len(row["input_ids"]) == 8 for row in rows)
    stream = [token for row in rows for token in row["input_ids"]]
    assert stream == [token for row in rows for token in row["labels"]]
    copies = [stream[i * 200 : (i + 1) * 200] for i in range(3)]
    firsts = [[token for token in copy if token >= 100] for copy in copies]
    assert all(sorted(first) == list(range(100, 140)) for first in firsts)  # each copy holds every line once
    assert len({tuple(first) for first in firsts}) == 3  # in three different orders
    assert reshuffled_blocks(sequences, 8, 2.5, seed=0) == (rows, epochs)
    assert reshuffled_blocks(sequences, 8, 2.5, seed=1)[0] != rows
    assert len(reshuffled_blocks(sequences, 8, 0.5, seed=0)[0]) == 25  # less than an epoch: one copy


def test_stage0_reshuffle_lines_trains_on_a_copy_of_the_corpus_per_epoch(tmp_path: Path) -> None:
    corpus = write_lines(tmp_path / "corpus.txt", corpus_lines(60))
    settings = {"data": str(corpus), "num_epochs": 2.0, "batch_size": 8, "max_length": 64, "learning_rate": 1e-2}
    settings.update(tokenizer_vocab_size=300, max_position_embeddings=128, **TINY_MODEL, **COMMON)
    once = run_stage0(Stage0Config(output_dir=str(tmp_path / "once"), **settings))
    twice = run_stage0(Stage0Config(output_dir=str(tmp_path / "twice"), reshuffle_lines=True, **settings))
    assert twice.data.tokens == 2 * once.data.tokens  # two copies, each in its own order...
    # ...trained once through: two epochs of tokens (one partial batch fewer, at most, as the copies are one set)
    assert once.steps - 1 <= twice.steps <= once.steps
    assert twice.final_loss < twice.first_loss


def test_stage1_expands_the_vocabulary_in_released_order(runs: dict[int, StageResult]) -> None:
    _, text_tokenizer = load_model(runs[0].model_dir, device="cpu")
    model, tokenizer = load_model(runs[1].model_dir, device="cpu")
    vocab = SpeechVocab.from_tokenizer(tokenizer)
    assert (vocab.unit_offset, vocab.num_units) == (len(text_tokenizer), NUM_UNITS)
    assert len(tokenizer) == len(text_tokenizer) + NUM_UNITS + 6
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # The block size is respected and unit text is what it learned from.
    assert runs[1].data.rows == -(-runs[1].data.tokens // 64)
    assert runs[1].data.label_tokens == runs[1].data.tokens


def test_stage2_keeps_the_vocabulary_and_packs(runs: dict[int, StageResult]) -> None:
    _, before = load_model(runs[1].model_dir, device="cpu")
    _, after = load_model(runs[2].model_dir, device="cpu")
    assert after.get_vocab() == before.get_vocab()  # expansion is idempotent
    data = runs[2].data
    assert data.examples == 32 and data.rows <= data.examples / 2  # examples share rows of up to 512 tokens
    assert data.tokens / data.rows > 256
    assert data.label_tokens < data.tokens / 2  # the loss is on the responses only


def test_stage3_saves_adapter_and_merged_model(runs: dict[int, StageResult]) -> None:
    result = runs[3]
    assert result.adapter_dir == result.output_dir / ADAPTER_DIR
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 4
    base_weights = load_file(runs[2].model_dir / "model.safetensors")
    merged_weights = load_file(result.model_dir / "model.safetensors")
    # LoRA changed the adapted linear layers only; embeddings and norms are the stage-2 model's, bit for bit.
    changed = {name for name in base_weights if not torch.equal(base_weights[name], merged_weights[name])}
    assert len(changed) == 2 * 7 and all(name.endswith("_proj.weight") for name in changed)
    assert base_weights.keys() == merged_weights.keys()

    merged, tokenizer = load_model(result.model_dir, device="cpu")
    wrapped, _ = load_model(runs[2].model_dir, device="cpu", lora=result.adapter_dir)
    ids = torch.tensor([PromptEncoder(tokenizer).encode_record(chain_of_modality_records(1)[0]).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, wrapped(ids).logits, atol=1e-4, rtol=1e-4)
    assert merged.config.use_cache  # generation-ready


def test_replayed_records_are_a_seeded_share_of_the_earlier_stage(tmp_path: Path) -> None:
    pool = write_records(tmp_path / "stage2.jsonl", cross_modal_records(10))
    config = Stage3Config(data="x", replay_data=str(pool), replay_fraction=0.25, seed=3)
    chosen = replayed_records(config, 16)
    assert len(chosen) == 4 and chosen == replayed_records(config, 16)
    assert all(record in cross_modal_records(10) for record in chosen)
    assert len({json.dumps(record) for record in chosen}) == 4  # without replacement
    assert chosen != replayed_records(Stage3Config(data="x", replay_data=str(pool), seed=4), 16)
    assert len(replayed_records(Stage3Config(data="x", replay_data=str(pool), replay_fraction=2.0), 16)) == 10
    assert replayed_records(Stage3Config(data="x"), 16) == []
    with pytest.raises(ConfigError, match=r"replay_fraction must not be negative, got -0\.5"):
        Stage3Config(replay_fraction=-0.5)


def test_stage3_trains_on_its_records_and_the_replayed_ones(tmp_path: Path, runs: dict[int, StageResult]) -> None:
    chain = write_records(tmp_path / "chain.jsonl", chain_of_modality_records(8))
    pool = write_records(tmp_path / "stage2.jsonl", cross_modal_records(12))
    settings = {**COMMON, "max_steps": 1, "batch_size": 2, "max_length": 256, "lora_r": 2, "packing": False}
    config = Stage3Config(
        data=str(chain), base_model=str(runs[2].model_dir), output_dir=str(tmp_path / "s3"), **settings
    )
    replaying = dataclasses.replace(config, replay_data=str(pool), replay_fraction=0.5, output_dir=str(tmp_path / "r"))
    assert run_stage3(config).data.examples == 8
    assert run_stage3(replaying).data.examples == 12


def test_stage1_can_start_the_units_at_their_letters(tmp_path: Path, runs: dict[int, StageResult]) -> None:
    from speechgpt.lm import expand_vocabulary
    from speechgpt.lm.unit_init import init_units_from_letters
    from speechgpt.units import SpeechTokenizer
    from tests.lm.test_unit_init import recogniser_tokenizer

    recogniser_tokenizer(seed=3, num_units=NUM_UNITS).save_pretrained(tmp_path / "tok")
    units = write_lines(tmp_path / "units.txt", unit_lines(8))
    settings = {**COMMON, "max_steps": 1, "batch_size": 2, "max_length": 64, "learning_rate": 1e-12}
    config = Stage1Config(
        data=str(units),
        base_model=str(runs[0].model_dir),
        output_dir=str(tmp_path / "s1"),
        num_units=NUM_UNITS,
        unit_init_tokenizer=str(tmp_path / "tok"),
        **settings,
    )
    trained, _ = load_model(run_stage1(config).model_dir, device="cpu")
    expected, tokenizer = load_model(runs[0].model_dir, device="cpu")
    vocab = expand_vocabulary(expected, tokenizer, NUM_UNITS)
    init_units_from_letters(expected, tokenizer, vocab, SpeechTokenizer.from_pretrained(tmp_path / "tok"))
    rows = slice(vocab.unit_offset, vocab.unit_offset + NUM_UNITS)
    got, want = trained.get_input_embeddings().weight[rows], expected.get_input_embeddings().weight[rows]
    assert torch.allclose(got, want, atol=1e-6)  # one step at lr 1e-12 leaves the start where it was
    assert not torch.allclose(want, want.mean(0, keepdim=True).expand_as(want), atol=1e-2)  # not the mean init

    # Without num_units the vocabulary takes the unit tokenizer's count (not the released 1000).
    unsized = dataclasses.replace(config, num_units=None, output_dir=str(tmp_path / "n"))
    assert SpeechVocab.from_tokenizer(load_model(run_stage1(unsized).model_dir)[1]).num_units == NUM_UNITS

    mfcc = tmp_path / "mfcc"
    SpeechTokenizer(LightFeatures(), KMeans(np.zeros((NUM_UNITS, 39), np.float32))).save_pretrained(mfcc)
    refused = dataclasses.replace(config, unit_init_tokenizer=str(mfcc), output_dir=str(tmp_path / "m"))
    with pytest.raises(ConfigError, match=r"unit_init_tokenizer .*mfcc: unit letters need .* CTC recogniser"):
        run_stage1(refused)


def test_resume_of_a_finished_run_trains_nothing(runs: dict[int, StageResult]) -> None:
    config = json.loads((runs[1].output_dir / CONFIG_FILE).read_text())
    again = run_stage1(Stage1Config(**{**config, "progress": False}))
    assert again.resumed_from == runs[1].output_dir / "checkpoint-12"
    assert again.steps == 12 and again.metrics == {}
    assert again.final_loss == runs[1].final_loss
    before = load_file(runs[1].output_dir / "checkpoint-12" / "model.safetensors")
    after = load_file(runs[1].model_dir / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)  # the checkpoint's weights, re-saved


def test_bad_inputs_fail_clearly(tmp_path: Path, runs: dict[int, StageResult]) -> None:
    with pytest.raises(ConfigError, match="base_model is required"):
        run_stage1(Stage1Config(data="x", output_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="data is required"):
        run_stage3(Stage3Config(base_model=str(runs[2].model_dir), output_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="stage 0 trains a model from nothing"):
        run_stage0(Stage0Config(data="x", base_model=str(runs[2].model_dir), output_dir=str(tmp_path / "a")))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        resolve_base_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"has no config.json \(nor model/config.json\); holds: notes.txt"):
        resolve_base_model(str(tmp_path / "empty"))
    bad = write_lines(tmp_path / "units.txt", [*unit_lines(2), "<sosp><3><oops>"])
    with pytest.raises(DataError, match=r"units.txt: line 3: stage-1 line is not one"):
        run_stage1(Stage1Config(data=str(bad), base_model=str(runs[1].model_dir), output_dir=str(tmp_path / "b")))
    too_many = write_lines(tmp_path / "big.txt", ["<sosp><999><eosp>"])
    with pytest.raises(DataError, match=r"big.txt: line 1: unit 999 at position 0 is not an integer in \[0, 24\)"):
        run_stage1(Stage1Config(data=str(too_many), base_model=str(runs[1].model_dir), output_dir=str(tmp_path / "c")))
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl does not exist"):
        run_stage2(Stage2Config(data=str(tmp_path / "missing.jsonl"), base_model=str(runs[1].model_dir)))
