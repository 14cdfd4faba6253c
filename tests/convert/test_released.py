"""`convert_released`, end to end on tiny random stand-ins written in exactly the released formats.

The stand-ins: a LLaMA Hugging Face directory whose tokenizer was extended the way the release did it
(``tokenizer.add_tokens`` of ``<0>``..``<N-1>``, ``<sosp>``, ``<eosp>``, ``[Human]``, ``[SpeechGPT]``, ``<eoh>``,
``<eos>``) with sharded ``pytorch_model-*.bin`` weights, a peft LoRA adapter on q_proj/v_proj (r 8, alpha 16), a
fairseq-pickled mHuBERT, a genuine scikit-learn k-means dumped with joblib and a ``{"generator": state_dict}`` unit
HiFi-GAN with old-style weight norm plus its fairseq ``config.json``. Expected units and waveforms come from the
reference math in ``tests/fairseq_reference.py`` and ``tests/hifigan_reference.py``, not from our code.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from speechgpt.convert.released import (
    CONVERSION_RECORD_NAME,
    ConversionError,
    convert_released,
    inspect_lm,
    inspect_lora,
    read_weight_shapes,
)
from speechgpt.infer import GenerationOptions, Reply, SpeechGPT
from speechgpt.infer.bundle import BundleManifest
from speechgpt.lm import LoraSettings, add_lora, create_model, save_lora, tiny_llama_config
from speechgpt.lm.text_tokenizer import train_text_tokenizer
from tests.fairseq_reference import (
    numpy_assign,
    random_fairseq_hubert_state_dict,
    reference_hubert_layer,
    tiny_fairseq_hubert_cfg,
    write_fairseq_hubert_checkpoint,
    write_sklearn_kmeans,
)
from tests.hifigan_reference import TINY_FAIRSEQ_CONFIG, random_released_state_dict, reference_synthesize
from tests.infer import TEXT_LINES
from tests.synth import SAMPLE_RATE, random_utterance

NUM_UNITS = TINY_FAIRSEQ_CONFIG["num_embeddings"]  # 50: the tiny vocoder's unit embedding
CONTROL_TOKENS = ["<sosp>", "<eosp>", "[Human]", "[SpeechGPT]", "<eoh>", "<eos>"]  # the release's order (DESIGN.md)
TOLERANCE = 1e-5

# The legacy (peft 0.3 era) adapter_config.json of the released adapter has keys today's peft ignores with a warning.
pytestmark = pytest.mark.filterwarnings("ignore:Unexpected keyword arguments:UserWarning")


def released_tokens(num_units: int = NUM_UNITS) -> list[str]:
    """The tokens SpeechGPT appended to LLaMA's vocabulary, in the released order."""
    return [f"<{k}>" for k in range(num_units)] + CONTROL_TOKENS


# --- released-format writers -----------------------------------------------------------------------------------------


def write_lm(
    path: Path,
    tokens: list[str],
    *,
    hidden_size: int = 32,
    rows: int | None = None,
    weights: str = "bin",
    seed: int = 0,
):
    """A tiny LLaMA directory expanded like the release (plain ``add_tokens``); returns its ``LlamaConfig``.

    ``weights="bin"`` writes two ``pytorch_model-0000i-of-00002.bin`` shards and their index (the 7B-cm layout),
    ``"safetensors"`` what ``save_pretrained`` writes today. ``rows`` overrides the embedding size.
    """
    tokenizer = train_text_tokenizer(TEXT_LINES, vocab_size=300)
    assert tokenizer.add_tokens(tokens) == len(tokens)
    config = tiny_llama_config(
        rows or len(tokenizer), hidden_size=hidden_size, num_layers=2, num_heads=2, tie_word_embeddings=False
    )
    create_model(config, seed=seed).save_pretrained(path)  # what the release's trainer wrote, checks and all
    tokenizer.save_pretrained(path)
    if weights == "bin":
        state = load_file(path / "model.safetensors")
        (path / "model.safetensors").unlink()
        keys = list(state)
        weight_map = {}
        for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
            name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
            torch.save({key: state[key] for key in part}, path / name)
            weight_map.update(dict.fromkeys(part, name))
        index = {"metadata": {"total_size": sum(t.numel() * 4 for t in state.values())}, "weight_map": weight_map}
        (path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return config


def write_lora(path: Path, config, *, seed: int = 1, legacy: bool = False) -> None:
    """A peft LoRA adapter (r 8, alpha 16, q_proj/v_proj) with random non-zero B, so it really changes the LM.

    ``legacy`` rewrites it as the peft 0.3 era saved it (the released 7B-com): ``adapter_model.bin`` and a config
    with the keys of that time.
    """
    model = add_lora(create_model(config, seed=0), LoraSettings(r=8, alpha=16, dropout=0.05), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    save_lora(model, path)
    if legacy:
        state = load_file(path / "adapter_model.safetensors")
        (path / "adapter_model.safetensors").unlink()
        torch.save(state, path / "adapter_model.bin")
        old_config = {
            "base_model_name_or_path": "/mnt/petrelfs/SpeechGPT-7B-cm",
            "bias": "none",
            "enable_lora": None,
            "fan_in_fan_out": False,
            "inference_mode": True,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "merge_weights": False,
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": 8,
            "target_modules": ["q_proj", "v_proj"],
            "task_type": "CAUSAL_LM",
        }
        (path / "adapter_config.json").write_text(json.dumps(old_config))


@dataclass
class Released:
    """Paths of the released-format stand-ins and the weights behind them (for the reference math)."""

    root: Path
    lm: Path
    lora: Path
    hubert: Path
    kmeans: Path
    vocoder: Path
    vocoder_config: Path
    lm_config: Any
    hubert_cfg: dict
    hubert_state: dict
    centers: np.ndarray
    vocoder_state: dict

    def kwargs(self, out_dir: Path, **overrides: Any) -> dict[str, Any]:
        """Arguments of :func:`convert_released` for these files (a tiny system: ``num_units`` from the k-means)."""
        args = {
            "lm_dir": self.lm,
            "lora_dir": self.lora,
            "hubert": self.hubert,
            "kmeans": self.kmeans,
            "vocoder": self.vocoder,
            "vocoder_config": self.vocoder_config,
            "out_dir": out_dir,
            "num_units": None,
        }
        return args | overrides


def write_released(root: Path) -> Released:
    """Every released file, tiny and random, under ``root`` (about a second)."""
    root.mkdir(parents=True, exist_ok=True)
    lm_config = write_lm(root / "SpeechGPT-7B-cm", released_tokens())
    write_lora(root / "SpeechGPT-7B-com", lm_config, legacy=True)

    cfg = tiny_fairseq_hubert_cfg()
    hubert_state = random_fairseq_hubert_state_dict(cfg, seed=3)
    write_fairseq_hubert_checkpoint(root / "mhubert_base_vp_en_es_fr_it3.pt", cfg, hubert_state)
    # Centres are real layer-11 frames of this model, so assignments are well separated, like a trained codebook.
    frames = np.concatenate([reference_hubert_layer(hubert_state, cfg, random_utterance(s)).numpy() for s in range(3)])
    centers = frames[np.random.default_rng(0).choice(len(frames), NUM_UNITS, replace=False)].astype(np.float32)
    write_sklearn_kmeans(root / "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin", centers, minibatch=True)

    vocoder_state = random_released_state_dict(TINY_FAIRSEQ_CONFIG, seed=1)
    torch.save({"generator": vocoder_state}, root / "g_00500000")
    (root / "config.json").write_text(json.dumps(TINY_FAIRSEQ_CONFIG))
    return Released(
        root=root,
        lm=root / "SpeechGPT-7B-cm",
        lora=root / "SpeechGPT-7B-com",
        hubert=root / "mhubert_base_vp_en_es_fr_it3.pt",
        kmeans=root / "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin",
        vocoder=root / "g_00500000",
        vocoder_config=root / "config.json",
        lm_config=lm_config,
        hubert_cfg=cfg,
        hubert_state=hubert_state,
        centers=centers,
        vocoder_state=vocoder_state,
    )


def reference_units(files: Released, wave: np.ndarray) -> tuple[list[int], list[int]]:
    """Deduplicated unit ids and run lengths as the released fairseq + ApplyKmeans computation gives them."""
    ids = numpy_assign(reference_hubert_layer(files.hubert_state, files.hubert_cfg, wave, 11), files.centers).tolist()
    runs = [(unit, len(list(group))) for unit, group in itertools.groupby(ids)]
    return [u for u, _ in runs], [n for _, n in runs]


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Released:
    return write_released(tmp_path_factory.mktemp("released"))


@pytest.fixture(scope="module")
def bundle(released, tmp_path_factory) -> Path:
    return convert_released(**released.kwargs(tmp_path_factory.mktemp("out") / "bundle"))


@pytest.fixture(scope="module")
def sg(bundle) -> SpeechGPT:
    return SpeechGPT.from_pretrained(bundle, device="cpu")


def no_leftovers(folder: Path) -> list[str]:
    """Temporary staging folders a failed conversion might have left next to its output."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- end to end ------------------------------------------------------------------------------------------------------


def test_the_bundle_loads_and_answers_a_text_and_an_audio_turn(bundle, sg, released, tmp_path):
    manifest = BundleManifest.read(bundle)  # verifies the parts agree on the unit count
    assert manifest.num_units == NUM_UNITS and manifest.lora == "lora"
    assert sg.vocab.num_units == sg.speech_tokenizer.num_units == sg.vocoder.num_units == NUM_UNITS
    options = GenerationOptions(temperature=0, max_new_tokens=24)
    text_reply = sg.chat([{"role": "user", "content": "What is the capital of France?"}], options)
    question = tmp_path / "question.wav"
    sf.write(question, random_utterance(100), SAMPLE_RATE)
    audio_reply = sg.chat([{"role": "user", "content": question}], options)
    for reply in (text_reply, audio_reply):
        assert isinstance(reply, Reply) and 0 < reply.completion_tokens <= 24
        assert all(0 <= u < NUM_UNITS for u in reply.units)
    assert audio_reply.timings["speech_to_units"] > 0 and audio_reply.prompt_tokens > text_reply.prompt_tokens

    record = json.loads((bundle / CONVERSION_RECORD_NAME).read_text())
    assert record["num_units"] == NUM_UNITS
    assert record["sources"]["hubert"] == str(released.hubert.resolve())
    assert record["lm"]["base_vocab_size"] == 300 and record["lm"]["tokenizer_size"] == 356
    assert record["lora"] == {
        "mode": "adapter",
        "r": 8,
        "alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "layers": 4,
        "base_model": "/mnt/petrelfs/SpeechGPT-7B-cm",
    }


def test_units_from_the_bundle_equal_the_released_computation(sg, released):
    distinct = set()
    for seed in (50, 51, 52):
        wave = random_utterance(seed, num_phones=10)
        units = sg.speech_tokenizer.encode(wave, sample_rate=SAMPLE_RATE)
        expected_ids, expected_durations = reference_units(released, wave)
        assert units.ids.tolist() == expected_ids
        assert units.durations.tolist() == expected_durations
        distinct.update(expected_ids)
    assert len(distinct) >= 10  # a codebook that really separates frames, not one unit everywhere


def test_the_bundle_vocoder_equals_the_released_computation(sg, released):
    units = [3, 14, 15, 9, 26, 5, 49, 0, 0, 31]
    expected, durations = reference_synthesize(released.vocoder_state, TINY_FAIRSEQ_CONFIG, units)
    wave = sg.vocoder.synthesize(units).cpu()
    assert wave.shape == (320 * int(durations.sum()),) and int(durations.max()) > 1
    assert (wave - expected).abs().max() <= TOLERANCE


def test_lm_weights_and_token_ids_are_the_released_ones(bundle, released):
    from transformers import AutoTokenizer

    source = {k: v for f in sorted(released.lm.glob("pytorch_model-*.bin")) for k, v in torch.load(f).items()}
    copied = {k: v for f in sorted((bundle / "lm").glob("pytorch_model-*.bin")) for k, v in torch.load(f).items()}
    assert source.keys() == copied.keys() and all(torch.equal(source[k], copied[k]) for k in source)
    vocab = AutoTokenizer.from_pretrained(bundle / "lm").get_vocab()
    assert [vocab[t] for t in released_tokens()] == list(range(300, 356))


def test_merge_lora_gives_the_same_model_as_the_adapter(bundle, released, tmp_path):
    merged_dir = convert_released(**released.kwargs(tmp_path / "merged", merge_lora=True))
    manifest = BundleManifest.read(merged_dir)
    assert manifest.lora is None and not (merged_dir / "lora").exists()
    assert json.loads((merged_dir / CONVERSION_RECORD_NAME).read_text())["lora"]["mode"] == "merged"
    from speechgpt.lm import load_model

    ids = torch.tensor([[5, 17, 300, 320, 349, 350, 352, 40]])
    with torch.inference_mode():
        base = load_model(released.lm, device="cpu")[0](input_ids=ids).logits
        adapter = load_model(bundle / "lm", lora=bundle / "lora", device="cpu")[0](input_ids=ids).logits
        merged = load_model(merged_dir / "lm", device="cpu")[0](input_ids=ids).logits
    assert (merged - adapter).abs().max() <= 1e-4
    assert (merged - base).abs().max() > 1e-2  # the adapter changes the model, so the comparison means something


def test_lm_files_can_be_linked_instead_of_copied(released, tmp_path):
    linked = convert_released(**released.kwargs(tmp_path / "symlinked", link="symlink", lora_dir=None))
    shard = linked / "lm" / "pytorch_model-00001-of-00002.bin"
    assert shard.is_symlink() and shard.resolve() == (released.lm / shard.name).resolve()
    assert not (linked / "lora").exists() and BundleManifest.read(linked).lora is None
    hard = convert_released(**released.kwargs(tmp_path / "hardlinked", link="hardlink", lora_dir=None))
    shard = hard / "lm" / "pytorch_model-00002-of-00002.bin"
    assert not shard.is_symlink() and shard.stat().st_ino == (released.lm / shard.name).stat().st_ino
    with pytest.raises(ValueError, match=r"link must be one of \('copy', 'hardlink', 'symlink'\), got 'move'"):
        convert_released(**released.kwargs(tmp_path / "x", link="move"))


def test_progress_is_reported_per_step(released, tmp_path):
    calls = []
    convert_released(**released.kwargs(tmp_path / "b"), progress=lambda *call: calls.append(call))
    assert [step for step, _, _ in calls] == [
        "checking the released files",
        "speech tokenizer (mHuBERT + k-means)",
        "vocoder",
        "language model (copy)",
        "LoRA adapter",
        "bundle manifest",
        "done",
    ]
    assert [done for _, done, _ in calls] == list(range(7)) and {total for _, _, total in calls} == {6}


def test_an_existing_output_is_replaced_only_when_asked(released, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        convert_released(**released.kwargs(out))
    assert (out / "keep.txt").read_text() == "mine"
    convert_released(**released.kwargs(out, lora_dir=None), overwrite=True)
    assert not (out / "keep.txt").exists() and BundleManifest.read(out).num_units == NUM_UNITS
    with pytest.raises(ValueError, match=r"output .*bundle is inside the input .*SpeechGPT-7B-cm"):
        convert_released(**released.kwargs(released.lm / "bundle"), overwrite=True)
    root = re.escape(str(released.root))
    with pytest.raises(ValueError, match=rf"output {root} would replace the input {root}/"):
        convert_released(**released.kwargs(released.root), overwrite=True)
    assert no_leftovers(tmp_path) == []


def test_pytorch_bin_and_safetensors_layouts_read_the_same_shapes(released, tmp_path):
    write_lm(tmp_path / "lm", released_tokens(), weights="safetensors")
    assert read_weight_shapes(tmp_path / "lm") == read_weight_shapes(released.lm)
    assert read_weight_shapes(released.lm)["model.embed_tokens.weight"] == (356, 32)
    (tmp_path / "lm" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model weights"):
        read_weight_shapes(tmp_path / "lm")


# --- failures: each names what is wrong ------------------------------------------------------------------------------


def fails(released: Released, out: Path, message: str, **overrides: Any) -> str:
    with pytest.raises(ConversionError, match=message) as info:
        convert_released(**released.kwargs(out, **overrides))
    assert "\n" not in str(info.value)
    assert not out.exists() and no_leftovers(out.parent) == []
    return str(info.value)


def test_wrong_vocabulary_order_is_refused(released, tmp_path):
    tokens = released_tokens()
    tokens[50], tokens[51] = tokens[51], tokens[50]  # <eosp> before <sosp>
    write_lm(tmp_path / "lm", tokens)
    fails(
        released,
        tmp_path / "out",
        r"LM .*lm: 2 speech token\(s\) are out of the released order \(<0>..<49>, <sosp>, <eosp>, \[Human\], "
        r"\[SpeechGPT\], <eoh>, <eos> from id 300\): '<sosp>' at id 351, expected 350, '<eosp>' at id 350, "
        r"expected 351",
        lm_dir=tmp_path / "lm",
        lora_dir=None,
    )


def test_a_missing_token_is_refused(released, tmp_path):
    write_lm(tmp_path / "lm", [t for t in released_tokens() if t != "[SpeechGPT]"])
    message = fails(
        released,
        tmp_path / "out",
        r"tokenizer lacks 1 released speech token\(s\): '\[SpeechGPT\]'",
        lm_dir=tmp_path / "lm",
        lora_dir=None,
    )
    assert "'<eoh>' at id 353, expected 354, '<eos>' at id 354, expected 355" in message


def test_speech_tokens_must_follow_the_base_vocabulary(released, tmp_path):
    write_lm(tmp_path / "lm", ["<pad2>", *released_tokens()])
    fails(
        released,
        tmp_path / "out",
        r"the speech tokens start at id 301, not right after the base vocabulary of 300 tokens \(ids 300..300 hold "
        r"\['<pad2>'\]\)",
        lm_dir=tmp_path / "lm",
        lora_dir=None,
    )


def test_unit_count_mismatch_lists_every_part(released, tmp_path):
    few = tmp_path / "km40.bin"
    write_sklearn_kmeans(few, released.centers[:40], minibatch=True)
    message = fails(
        released,
        tmp_path / "out",
        r"speech unit counts differ from the k-means' 40: k-means .*km40.bin has 40, vocoder .*g_00500000 has 50, "
        r"LM vocabulary .*SpeechGPT-7B-cm has 50",
        kmeans=few,
    )
    assert "1 problem(s)" in message


def test_kmeans_must_fit_the_hubert_features(released, tmp_path):
    write_sklearn_kmeans(tmp_path / "km16.bin", released.centers[:, :16], minibatch=True)
    fails(
        released,
        tmp_path / "out",
        r"k-means .*km16.bin has 16-dimensional centres but layer 11 of .*mhubert_base_vp_en_es_fr_it3.pt gives "
        r"32-dimensional features",
        kmeans=tmp_path / "km16.bin",
    )


def test_the_default_expects_the_released_1000_units(released, tmp_path):
    fails(
        released,
        tmp_path / "out",
        r"speech unit counts differ from the release's 1000: k-means .* has 50, vocoder .* has 50, LM vocabulary .* "
        r"has 50 \(to convert a system with 50 units, pass num_units=50 or --num-units 50\)",
        num_units=1000,
    )


def test_embedding_rows_must_cover_the_tokenizer(released, tmp_path):
    write_lm(tmp_path / "lm", released_tokens(), rows=352)
    fails(
        released,
        tmp_path / "out",
        r"the input embedding has 352 rows, fewer than the tokenizer's 356 tokens; LM .*: the output head \(lm_head\) "
        r"has 352 rows",
        lm_dir=tmp_path / "lm",
        lora_dir=None,
    )


def test_lora_shape_mismatch_is_refused(released, tmp_path):
    write_lora(tmp_path / "lora", tiny_llama_config(356, hidden_size=48, num_layers=2, num_heads=2))
    fails(
        released,
        tmp_path / "out",
        r"LoRA .*lora: 8 adapter tensor\(s\) do not fit the LM: "
        r"base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight \[8, 48\] \(the LM layer needs "
        r"\[8, 32\]\)",
        lora_dir=tmp_path / "lora",
    )
    fails(released, tmp_path / "out", r"8 adapter tensor\(s\) do not fit", merge_lora=True, lora_dir=tmp_path / "lora")


def test_every_problem_is_listed_at_once(released, tmp_path):
    tokens = released_tokens()
    tokens[52], tokens[53] = tokens[53], tokens[52]  # [SpeechGPT] before [Human]
    write_lm(tmp_path / "lm", tokens)
    write_lora(tmp_path / "lora", tiny_llama_config(356, hidden_size=48, num_layers=2, num_heads=2))
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "v_proj", "qkv_proj"]
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(config))
    write_sklearn_kmeans(tmp_path / "km40.bin", released.centers[:40], minibatch=True)
    message = fails(
        released,
        tmp_path / "out",
        "4 problem",
        lm_dir=tmp_path / "lm",
        lora_dir=tmp_path / "lora",
        kmeans=tmp_path / "km40.bin",
    )
    assert "'[Human]' at id 353, expected 352" in message
    assert "k-means" in message and "has 40" in message
    assert "target_modules ['qkv_proj'] match no layer of the LM" in message
    assert "8 adapter tensor(s) do not fit the LM" in message


def test_missing_inputs_are_all_named(released, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing input\(s\): hubert file .*absent.pt; LoRA directory .*nope"):
        convert_released(**released.kwargs(tmp_path / "o", hubert=tmp_path / "absent.pt", lora_dir=tmp_path / "nope"))
    with pytest.raises(ValueError, match="merge_lora needs a LoRA adapter directory"):
        convert_released(**released.kwargs(tmp_path / "o", lora_dir=None, merge_lora=True))
    with pytest.raises(ValueError, match="num_units must be a positive integer or None, got 0"):
        convert_released(**released.kwargs(tmp_path / "o", num_units=0))


# --- full size, on headers only --------------------------------------------------------------------------------------


def write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A valid float16 safetensors file of the given shapes whose data is a hole: 13 GB that take no disk."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)


def test_full_size_released_lm_and_lora_are_checked_from_headers(tmp_path):
    """SpeechGPT-7B-cm's sizes (LLaMA-7B, 32000 + 1006 tokens) and 7B-com's adapter, without allocating weights."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    lm_dir = tmp_path / "SpeechGPT-7B-cm"
    lm_dir.mkdir()
    base = Tokenizer(WordLevel({f"w{i}": i for i in range(32000)}, unk_token="w0"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base)
    tokenizer.add_tokens(released_tokens(1000))
    tokenizer.save_pretrained(lm_dir)
    config = LlamaConfig(
        vocab_size=33006, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    )
    config.save_pretrained(lm_dir)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    write_sparse_safetensors(lm_dir / "model.safetensors", shapes)
    assert os.stat(lm_dir / "model.safetensors").st_size > 13e9

    lm = inspect_lm(lm_dir, num_units=1000)
    assert lm.problems == []
    assert (lm.base_vocab_size, lm.num_units, lm.embedding_rows, lm.head_rows) == (32000, 1000, 33006, 33006)
    assert lm.vocab is not None and (lm.vocab.unit_offset, lm.vocab.eos_id) == (32000, 33005)
    assert 6.7e9 < lm.num_parameters < 6.8e9

    lora_dir = tmp_path / "SpeechGPT-7B-com"
    lora_dir.mkdir()
    (lora_dir / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    )
    adapter = {}
    for layer, module in itertools.product(range(32), ("q_proj", "v_proj")):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
        adapter[f"{prefix}.lora_A.weight"] = torch.zeros(8, 4096, dtype=torch.float16)
        adapter[f"{prefix}.lora_B.weight"] = torch.zeros(4096, 8, dtype=torch.float16)
    save_file(adapter, lora_dir / "adapter_model.safetensors")
    lora = inspect_lora(lora_dir, lm)
    assert lora.problems == [] and len(lora.modules) == 64 and lora.r == 8
    adapter["base_model.model.model.layers.31.mlp.up_proj.lora_A.weight"] = torch.zeros(8, 4096)
    save_file(adapter, lora_dir / "adapter_model.safetensors")
    assert inspect_lora(lora_dir, lm).problems == [
        f"LoRA {lora_dir}: 1 layer(s) have only one of lora_A/lora_B: model.layers.31.mlp.up_proj"
    ]
