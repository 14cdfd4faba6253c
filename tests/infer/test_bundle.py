"""Bundle folders: assembling, the manifest, and every way a bundle can be wrong."""

import json
import shutil

import pytest
import torch

from speechgpt.infer.bundle import (
    MANIFEST_NAME,
    BundleError,
    BundleManifest,
    assemble_bundle,
    lm_num_units,
    tokenizer_num_units,
    vocoder_num_units,
)
from speechgpt.lm import save_model, tiny_llama_config, train_text_tokenizer
from speechgpt.units.kmeans import KMeans
from speechgpt.units.light import LightFeatures
from speechgpt.units.tokenizer import SpeechTokenizer
from tests.infer import NUM_UNITS, TEXT_LINES, build_tiny_bundle
from tests.synth import random_utterance


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def bundle(tiny, tmp_path):
    """A private copy, free to break."""
    return shutil.copytree(tiny.path, tmp_path / "bundle")


def parts_of(tiny):
    parts = tiny.path.parent / "parts"
    return {"tokenizer_dir": parts / "tokenizer", "lm_dir": parts / "lm", "vocoder_dir": parts / "vocoder"}


def test_assembled_bundle_has_the_documented_manifest_and_copies(tiny):
    data = json.loads((tiny.path / MANIFEST_NAME).read_text())
    assert data == {
        "format": "speechgpt-bundle",
        "version": 1,
        "tokenizer": "tokenizer",
        "lm": "lm",
        "lora": None,
        "vocoder": "vocoder",
        "num_units": NUM_UNITS,
        "created_by": data["created_by"],
    }
    assert data["created_by"].startswith("speechgpt")
    for part in ("tokenizer", "lm", "vocoder"):
        assert (tiny.path / part).is_dir()
    assert (tiny.path / "tokenizer" / "kmeans.safetensors").is_file()
    assert (tiny.path / "lm" / "config.json").is_file()
    assert not (tiny.path / "lora").exists()
    assert [p.name for p in tiny.path.parent.iterdir() if p.name.startswith(".")] == []  # no staging left
    manifest = BundleManifest.read(tiny.path)
    assert manifest.num_units == NUM_UNITS and manifest.lora is None
    assert manifest.path(tiny.path, "lm") == tiny.path / "lm" and manifest.path(tiny.path, "lora") is None
    assert BundleManifest.from_dict(manifest.to_dict()) == manifest


def test_unit_counts_of_each_part(tiny):
    assert tokenizer_num_units(tiny.path / "tokenizer") == NUM_UNITS
    assert lm_num_units(tiny.path / "lm") == NUM_UNITS
    assert vocoder_num_units(tiny.path / "vocoder") == NUM_UNITS


def test_write_and_read_round_trip(tmp_path, tiny):
    manifest = BundleManifest(num_units=7, lora="adapter", created_by="a test")
    path = manifest.write(tmp_path / "b")
    assert path == tmp_path / "b" / MANIFEST_NAME
    assert json.loads(path.read_text())["lora"] == "adapter"
    assert BundleManifest.read(tmp_path / "b", verify=False) == manifest
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [MANIFEST_NAME]  # atomic: no temp file left
    assert manifest.parts() == {"tokenizer": "tokenizer", "lm": "lm", "vocoder": "vocoder", "lora": "adapter"}
    with pytest.raises(ValueError, match="unknown bundle part 'weights'"):
        manifest.path(tmp_path, "weights")


def test_missing_folder_or_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such bundle folder"):
        BundleManifest.read(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"not a speechgpt bundle \(no speechgpt.json"):
        BundleManifest.read(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: [1, 2], "expected a JSON object, got list"),
        (lambda d: {**d, "format": "hf-model"}, r"'format' is 'hf-model', expected 'speechgpt-bundle'"),
        (lambda d: {**d, "version": 2}, r"unsupported bundle version 2; this speechgpt reads versions 1..1"),
        (lambda d: {**d, "extra": 1}, r"unknown keys \['extra'\]"),
        (lambda d: {k: v for k, v in d.items() if k != "vocoder"}, "missing 'vocoder'"),
        (lambda d: {**d, "num_units": 0}, "num_units must be a positive int, got 0"),
        (lambda d: {**d, "lm": ""}, "part 'lm' must be a non-empty folder path"),
    ],
    ids=["json", "list", "format", "version", "keys", "part", "units", "empty-path"],
)
def test_malformed_manifests_are_named(bundle, change, message):
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    changed = change(data)
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(BundleError, match=message) as info:
        BundleManifest.read(bundle)
    assert str(path) in str(info.value)


def test_missing_parts_are_named(bundle):
    shutil.rmtree(bundle / "vocoder")
    with pytest.raises(FileNotFoundError, match=r"vocoder folder .*vocoder does not exist"):
        BundleManifest.read(bundle)
    assert BundleManifest.read(bundle, verify=False).num_units == NUM_UNITS  # the manifest alone is fine
    (bundle / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer folder .* has no tokenizer_config\.json"):
        BundleManifest.read(bundle)


def test_manifest_unit_count_must_match_the_parts(bundle):
    path = bundle / MANIFEST_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_units": 60}))
    with pytest.raises(BundleError, match=r"disagree on the number of speech units: manifest 60, tokenizer k-means"):
        BundleManifest.read(bundle)


def test_kmeans_and_lm_vocabulary_must_agree(tiny, tmp_path):
    waves = [random_utterance(seed) for seed in range(4)]
    extractor = LightFeatures()
    kmeans = KMeans.train(torch.cat([extractor(w) for w in waves]), 40, seed=0, niter=2)
    SpeechTokenizer(extractor, kmeans).save_pretrained(tmp_path / "tok40")
    parts = {**parts_of(tiny), "tokenizer_dir": tmp_path / "tok40"}
    with pytest.raises(BundleError, match=r"tokenizer k-means .* 40, LM vocabulary .* 50, vocoder .* 50") as info:
        assemble_bundle(tmp_path / "out", **parts)
    assert "tok40" in str(info.value)
    assert not (tmp_path / "out").exists()  # checked before anything was written

    # The same mismatch inside an existing bundle is found when reading it.
    bundle = shutil.copytree(tiny.path, tmp_path / "bundle")
    shutil.rmtree(bundle / "tokenizer")
    shutil.copytree(tmp_path / "tok40", bundle / "tokenizer")
    with pytest.raises(BundleError, match=r"tokenizer k-means \(tokenizer\) 40, LM vocabulary \(lm\) 50"):
        BundleManifest.read(bundle)


def test_an_unexpanded_lm_is_refused(tiny, tmp_path):
    from speechgpt.lm import create_model

    tokenizer = train_text_tokenizer(TEXT_LINES, vocab_size=300)
    save_model(
        create_model(tiny_llama_config(len(tokenizer), hidden_size=16, num_layers=1, num_heads=1)),
        tokenizer,
        tmp_path / "lm",
    )
    with pytest.raises(BundleError, match=r"LM .*lm: tokenizer has no speech vocabulary"):
        assemble_bundle(tmp_path / "out", **{**parts_of(tiny), "lm_dir": tmp_path / "lm"})


def test_existing_output_is_kept_unless_overwrite(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        assemble_bundle(out, **parts_of(tiny))
    assert (out / "notes.txt").read_text() == "mine"
    assemble_bundle(out, **parts_of(tiny), overwrite=True, created_by="test")
    assert not (out / "notes.txt").exists()
    assert BundleManifest.read(out).created_by == "test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # neither staging nor the old copy is left


def test_without_copy_the_manifest_points_at_the_parts(tiny, tmp_path):
    out = tmp_path / "linked"
    assemble_bundle(out, **parts_of(tiny), copy=False)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]
    manifest = BundleManifest.read(out)
    assert manifest.lm.startswith("../") and manifest.path(out, "lm").resolve() == parts_of(tiny)["lm_dir"].resolve()
    with pytest.raises(FileExistsError, match=r"already holds a speechgpt\.json"):
        assemble_bundle(out, **parts_of(tiny), copy=False)
    # Parts already inside the folder (as a converter writes them) are referenced by their sub-folder names.
    inside = shutil.copytree(tiny.path, tmp_path / "inside")
    (inside / MANIFEST_NAME).unlink()
    parts = {f"{name}_dir": inside / name for name in ("tokenizer", "lm", "vocoder")}
    assemble_bundle(inside, **parts, copy=False)
    assert BundleManifest.read(inside).parts() == {"tokenizer": "tokenizer", "lm": "lm", "vocoder": "vocoder"}


def test_missing_source_part_is_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocoder folder .*nowhere does not exist"):
        assemble_bundle(tmp_path / "out", **{**parts_of(tiny), "vocoder_dir": tmp_path / "nowhere"})
    with pytest.raises(FileNotFoundError, match=r"lora folder .* has no adapter_config\.json"):
        assemble_bundle(tmp_path / "out", **parts_of(tiny), lora_dir=tmp_path)


def test_bundle_with_lora(tmp_path):
    tiny = build_tiny_bundle(tmp_path, with_lora=True)
    manifest = BundleManifest.read(tiny.path)
    assert manifest.lora == "lora" and (tiny.path / "lora" / "adapter_config.json").is_file()
    from speechgpt.infer import GenerationOptions, SpeechGPT

    model = SpeechGPT.from_pretrained(tiny.path, device="cpu")
    assert type(model.model).__name__ == "LlamaForCausalLM"  # the adapter is merged for inference
    reply = model.chat([{"role": "user", "content": "hi"}], GenerationOptions(temperature=0, max_new_tokens=5))
    assert reply.completion_tokens <= 5
