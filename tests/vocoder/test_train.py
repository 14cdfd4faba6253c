"""Vocoder training: manifest checks, aligned segments, sampler, learning, exact resume, atomic checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from torch.nn.utils import parametrize

from speechgpt.units.base import HOP_LENGTH, num_frames
from speechgpt.units.tokenizer import dedup
from speechgpt.vocoder import UnitHiFiGAN, VocoderConfig
from speechgpt.vocoder import train as train_module
from speechgpt.vocoder.data import (
    SegmentCollator,
    SegmentSampler,
    UnitAudioDataset,
    VocoderDataError,
    read_unit_manifest,
)
from speechgpt.vocoder.train import VocoderTrainConfig, VocoderTrainer, find_checkpoints, load_model_config
from tests.synth import PHONES, SAMPLE_RATE, phone_sequence_wave

FRAMES_PER_PHONE = 6  # tests.synth phones last 0.12 s = 6 unit frames


def write_unit_corpus(folder: Path, count: int, num_phones: int = 4, seed: int = 0) -> Path:
    """WAVs of random phone sequences and a units manifest whose unit per frame is the phone being spoken.

    That is what a perfect tokenizer would give: units and durations aligned with the audio, as
    ``speechgpt units encode`` writes them (paths relative to the manifest's folder).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        phones = [int(p) for p in rng.integers(0, len(PHONES), num_phones)]
        wave = phone_sequence_wave(phones, seed=seed * 100 + i)
        sf.write(folder / f"utt{i}.wav", wave, SAMPLE_RATE)
        frame_ids = [phones[f // FRAMES_PER_PHONE] for f in range(num_frames(len(wave)))]
        units = dedup(frame_ids)
        record = {"audio": f"utt{i}.wav", "units": units.ids.tolist(), "durations": units.durations.tolist()}
        lines.append(json.dumps(record))
    manifest = folder / "units.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions spend more time in thread hand-offs than in arithmetic (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_unit_corpus(tmp_path_factory.mktemp("corpus"), 5)


def tiny_config(manifest: Path, output_dir: Path, **overrides) -> VocoderTrainConfig:
    values = {
        "manifest": manifest,
        "output_dir": output_dir,
        "model": "tiny",
        "steps": 4,
        "batch_size": 2,
        "segment_frames": 8,
        "checkpoint_every": 2,
        "validate_every": 0,
        "num_val_items": 2,
        "num_val_samples": 1,
        "seed": 0,
        "progress": False,
        "cpu": True,
    }
    values.update(overrides)
    return VocoderTrainConfig(**values)


def run(config: VocoderTrainConfig, crash_at: int | None = None, monkeypatch=None) -> Path | None:
    """Train; with ``crash_at``, the process 'dies' (an exception other than Ctrl-C) as step ``crash_at`` begins."""
    trainer = VocoderTrainer(config)
    try:
        trainer.setup()
        if crash_at is not None:
            original = VocoderTrainer.train_step

            def step_or_crash(self, batch):
                if self.step + 1 == crash_at:
                    raise RuntimeError("simulated crash")
                return original(self, batch)

            monkeypatch.setattr(VocoderTrainer, "train_step", step_or_crash)
            with pytest.raises(RuntimeError, match="simulated crash"):
                trainer.train()
            monkeypatch.setattr(VocoderTrainer, "train_step", original)
            return None
        return trainer.train()
    finally:
        trainer.cleanup()


def metrics(output_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("seconds", None)  # wall time is the one thing allowed to differ
    return records


# --- manifest and data ----------------------------------------------------------------------------------------------


def test_manifest_errors_name_the_line(tmp_path, corpus):
    good = corpus.read_text().splitlines()[0]
    cases = {
        "not json": (f"{good}\n\n{{oops\n", ":3: not valid JSON"),
        "missing field": (f'{good}\n{{"audio": "utt0.wav", "units": [1]}}\n', ":2: record lacks ['durations']"),
        "lengths": ('{"audio": "utt0.wav", "units": [1, 2], "durations": [3]}\n', ":1: 'durations' has 1"),
        "zero duration": (f'{good}\n{{"audio": "a.wav", "units": [1], "durations": [0]}}\n', ":2: every duration"),
        "not ints": ('{"audio": "a.wav", "units": ["1"], "durations": [1]}\n', ":1: field 'units' must be"),
        "range": (f'{good}\n{good}\n{{"audio": "a.wav", "units": [50], "durations": [1]}}\n', ":3: unit id 50"),
        "array": ("[1, 2]\n", ":1: expected a JSON object"),
        "empty units": ('{"audio": "a.wav", "units": [], "durations": []}\n', ":1: field 'units' is empty"),
    }
    for name, (text, message) in cases.items():
        manifest = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        manifest.write_text(text)
        with pytest.raises(VocoderDataError) as error:
            read_unit_manifest(manifest, num_units=50)
        assert f"{manifest}{message}" in str(error.value), name
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(VocoderDataError, match="holds no records"):
        read_unit_manifest(empty)
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        read_unit_manifest(tmp_path / "missing.jsonl")


def test_audio_problems_name_the_line(tmp_path, corpus):
    lines = corpus.read_text().splitlines()
    records = [json.loads(line) for line in lines[:2]]
    records[0]["audio"] = str(corpus.parent / "utt0.wav")
    records[1]["audio"] = str(tmp_path / "gone.wav")
    missing = tmp_path / "missing_audio.jsonl"
    missing.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(VocoderDataError, match=r"missing_audio.jsonl:2: .*gone.wav: file not found"):
        UnitAudioDataset(read_unit_manifest(missing))
    record = json.loads(lines[0])
    record["audio"] = str(corpus.parent / "utt0.wav")
    record["durations"][0] += 5  # five frames more than the recording has
    mismatched = tmp_path / "mismatched.jsonl"
    mismatched.write_text(json.dumps(record) + "\n")
    with pytest.raises(VocoderDataError, match=r"mismatched.jsonl:1: .*do not belong together"):
        UnitAudioDataset(read_unit_manifest(mismatched))


def test_segments_are_aligned_cuts_of_units_and_audio(corpus):
    records = read_unit_manifest(corpus, num_units=50)
    dataset = UnitAudioDataset(records, segment_frames=8)
    assert dataset.cached and len(dataset) == 5
    whole = dataset[2]
    frame_ids = torch.repeat_interleave(whole["units"], whole["durations"])
    assert whole["audio"].numel() == records[2].num_frames * HOP_LENGTH == frame_ids.numel() * HOP_LENGTH
    starts = set()
    for crop_seed in range(20):
        piece = dataset[(2, crop_seed)]
        assert int(piece["durations"].sum()) == 8 and piece["audio"].numel() == 8 * HOP_LENGTH
        assert (piece["durations"] >= 1).all() and (piece["target_durations"] >= piece["durations"]).all()
        # locate the piece in the recording by its samples, then compare the frame-level units there
        start = next(
            s
            for s in range(records[2].num_frames - 7)
            if torch.equal(whole["audio"][s * HOP_LENGTH : (s + 8) * HOP_LENGTH], piece["audio"])
        )
        starts.add(start)
        assert torch.equal(torch.repeat_interleave(piece["units"], piece["durations"]), frame_ids[start : start + 8])
        first_unit = int(np.searchsorted(np.cumsum(records[2].durations), start, side="right"))
        assert (
            piece["target_durations"].tolist()
            == records[2].durations[first_unit : first_unit + len(piece["units"])].tolist()
        )
    assert len(starts) > 5  # crops really move around


def test_collator_pads_short_items_to_the_segment(corpus):
    dataset = UnitAudioDataset(read_unit_manifest(corpus), segment_frames=40)  # longer than any recording
    items = [dataset[(0, 1)], dataset[(1, 2)]]
    batch = SegmentCollator(HOP_LENGTH, 40)(items)
    assert batch["audio"].shape == (2, 40 * HOP_LENGTH)
    for b, item in enumerate(items):
        n = item["audio"].numel()
        assert torch.equal(batch["audio"][b, :n], item["audio"]) and not batch["audio"][b, n:].any()
        assert batch["unit_lengths"][b] == item["units"].numel()
        assert batch["frame_lengths"][b] == item["durations"].sum() == n // HOP_LENGTH
    assert batch["units"].shape == batch["durations"].shape == batch["target_durations"].shape


def test_sampler_epochs_are_reproducible_and_resumable():
    sampler = SegmentSampler(7, seed=3)
    epoch0, epoch1 = sampler.keys(0), sampler.keys(1)
    assert sorted(i for i, _ in epoch0) == list(range(7)) and epoch0 != epoch1
    assert SegmentSampler(7, seed=3).keys(0) == epoch0 and SegmentSampler(7, seed=4).keys(0) != epoch0
    sampler.set_epoch(1)
    state = sampler.state_dict(consumed=4)
    resumed = SegmentSampler(7, seed=3)
    resumed.load_state_dict(state)
    assert list(resumed) == epoch1[4:] and len(resumed) == 3
    replicas = [SegmentSampler(7, seed=3, num_replicas=2, rank=r).keys(0) for r in range(2)]
    assert len(replicas[0]) == len(replicas[1]) == 4
    assert {i for keys in replicas for i, _ in keys} == set(range(7))
    with pytest.raises(ValueError, match="seed"):
        SegmentSampler(7, seed=5).load_state_dict(state)


# --- config ---------------------------------------------------------------------------------------------------------


def test_config_rejects_bad_combinations(tmp_path):
    base = {"manifest": tmp_path / "m.jsonl", "output_dir": tmp_path / "out"}
    with pytest.raises(ValueError, match="not both"):
        VocoderTrainConfig(**base, model="tiny", init_from=tmp_path / "voc")
    with pytest.raises(ValueError, match="segment_frames"):
        VocoderTrainConfig(**base, segment_frames=1)
    with pytest.raises(ValueError, match="mixed_precision"):
        VocoderTrainConfig(**base, mixed_precision="fp8")
    with pytest.raises(ValueError, match="betas"):
        VocoderTrainConfig(**base, betas=(0.8, 1.5))
    config = VocoderTrainConfig(**base)
    assert (config.learning_rate, config.betas, config.lr_decay) == (2e-4, (0.8, 0.99), 0.999)
    assert (config.mel_weight, config.fm_weight, config.duration_weight) == (45.0, 2.0, 1.0)
    assert (config.segment_frames, config.mixed_precision, config.num_workers) == (28, "no", 0)


def test_model_config_from_names_and_files(tmp_path):
    assert load_model_config("tiny") == VocoderConfig.tiny()
    folder = UnitHiFiGAN(VocoderConfig.tiny(num_units=30)).save_pretrained(tmp_path / "voc")
    assert load_model_config(str(folder)).num_units == 30
    fairseq = tmp_path / "fairseq.json"
    fairseq.write_text(json.dumps(VocoderConfig.tiny(num_units=20).to_fairseq_json()))
    assert load_model_config(str(fairseq)) == VocoderConfig.tiny(num_units=20)
    with pytest.raises(FileNotFoundError, match="not a model preset"):
        load_model_config("huge")


# --- training -------------------------------------------------------------------------------------------------------


def test_a_few_steps_fit_a_tiny_set(corpus, tmp_path):
    """On a 5-recording set, 12 steps cut the validation log-mel L1 (whole recordings) by more than 20 %."""
    config = tiny_config(corpus, tmp_path / "run", steps=12, segment_frames=24, learning_rate=1e-3, num_val_items=5)
    trainer = VocoderTrainer(config)
    try:
        trainer.setup()
        before = trainer.validate()["val_mel"]
        trainer.train()
        after = trainer.validate()["val_mel"]
    finally:
        trainer.cleanup()
    assert after < 0.8 * before, (before, after)
    train_mels = [m["mel"] for m in metrics(tmp_path / "run") if "mel" in m]
    assert len(train_mels) == 12 and np.mean(train_mels[-3:]) < 0.8 * np.mean(train_mels[:3])


def test_final_vocoder_is_plain_and_matches_the_trained_generator(corpus, tmp_path):
    config = tiny_config(corpus, tmp_path / "run", steps=2, validate_every=2)
    trainer = VocoderTrainer(config)
    try:
        trainer.setup()
        trained = trainer.accelerator.unwrap_model(trainer.generator)
        assert parametrize.is_parametrized(trained.generator.conv_pre, "weight")  # trains with weight norm
        final = trainer.train()
        trained.eval()
        units = torch.tensor([1, 4, 2, 0])
        expected = trained.synthesize(units, durations=[2, 1, 3, 1])
    finally:
        trainer.cleanup()
    loaded = UnitHiFiGAN.from_pretrained(final)
    assert not any(parametrize.is_parametrized(m, "weight") for m in loaded.modules())
    torch.testing.assert_close(loaded.synthesize(units, durations=[2, 1, 3, 1]), expected, rtol=0, atol=1e-6)
    assert UnitHiFiGAN.from_pretrained(tmp_path / "run" / "ckpt-000002" / "vocoder").num_units == 50
    val = tmp_path / "run" / "val"
    assert sorted(p.name for p in (val / "step-000002").iterdir()) == ["00_generated.wav", "00_predicted_durations.wav"]
    assert (val / "real" / "00.wav").is_file()
    assert [set(m) for m in metrics(tmp_path / "run")][-1] == {"step", "val_mel", "val_dur"}


def test_resume_after_crashes_is_exact(corpus, tmp_path, monkeypatch, deterministic):
    """An uninterrupted 7-step run versus one that dies twice: mid-epoch (resumes from step 2) and right after an
    epoch ended (resumes from step 6, before the learning rates decayed). Same losses, same weights, bit for bit."""
    settings = {"steps": 7, "validate_every": 3, "keep_last": 2}  # 5 items, batch 2: epochs of 3 steps
    reference = run(tiny_config(corpus, tmp_path / "reference", **settings))
    resumed_dir = tmp_path / "resumed"
    run(tiny_config(corpus, resumed_dir, **settings), crash_at=4, monkeypatch=monkeypatch)
    assert [p.name for p in find_checkpoints(resumed_dir)] == ["ckpt-000002"]
    run(tiny_config(corpus, resumed_dir, **settings), crash_at=7, monkeypatch=monkeypatch)
    assert [p.name for p in find_checkpoints(resumed_dir)] == ["ckpt-000004", "ckpt-000006"]
    final = run(tiny_config(corpus, resumed_dir, **settings))

    expected, got = metrics(tmp_path / "reference"), metrics(resumed_dir)
    assert [m["step"] for m in got if "mel" in m] == list(range(1, 8))
    assert got == expected
    assert {m["epoch"] for m in got if "epoch" in m} == {0, 1, 2}
    assert len({m["lr"] for m in got if "lr" in m}) == 3  # decayed after each epoch
    for name in ("generator.safetensors", "discriminators.safetensors"):
        a = load_file(reference.parent / "ckpt-000007" / name)
        b = load_file(final.parent / "ckpt-000007" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (reference / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()


def test_interrupted_save_leaves_no_checkpoint_and_is_cleaned(corpus, tmp_path, monkeypatch):
    output = tmp_path / "run"
    original = train_module._save_safetensors

    def fail_on_discriminators(module, path):
        if path.name == "discriminators.safetensors":
            raise OSError("disk full")
        original(module, path)

    monkeypatch.setattr(train_module, "_save_safetensors", fail_on_discriminators)
    trainer = VocoderTrainer(tiny_config(corpus, output, steps=2))
    try:
        trainer.setup()
        with pytest.raises(OSError, match="disk full"):
            trainer.train()
    finally:
        trainer.cleanup()
    assert (output / "ckpt-000002.tmp").is_dir() and not (output / "ckpt-000002").exists()
    assert find_checkpoints(output) == []

    monkeypatch.setattr(train_module, "_save_safetensors", original)
    (output / "ckpt-000009").mkdir()  # a folder without trainer_state.json is not a checkpoint either
    trainer = VocoderTrainer(tiny_config(corpus, output, steps=2))
    try:
        trainer.setup()
        assert trainer.step == 0 and not (output / "ckpt-000002.tmp").exists()
        trainer.train()
    finally:
        trainer.cleanup()
    assert [p.name for p in find_checkpoints(output)] == ["ckpt-000002"]
    assert not any(p.name.endswith(".tmp") for p in output.iterdir())


def test_fresh_start_and_architecture_mismatch(corpus, tmp_path):
    output = tmp_path / "run"
    run(tiny_config(corpus, output, steps=2))
    trainer = VocoderTrainer(tiny_config(corpus, output, steps=2, model=None, discriminator="tiny"))
    with pytest.raises(ValueError, match="model architecture differs"):
        try:
            trainer.setup()
        finally:
            trainer.cleanup()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    trainer = VocoderTrainer(tiny_config(bad, output, steps=3, resume=False))
    with pytest.raises(VocoderDataError, match=r"bad\.jsonl:1: not valid JSON"):
        try:
            trainer.setup()
        finally:
            trainer.cleanup()
    assert [p.name for p in find_checkpoints(output)] == ["ckpt-000002"]  # bad input deletes nothing
    trainer = VocoderTrainer(tiny_config(corpus, output, steps=3, resume=False))
    try:
        trainer.setup()
        assert trainer.step == 0 and find_checkpoints(output) == [] and not (output / "final").exists()
        trainer.train()
    finally:
        trainer.cleanup()
    assert [m["step"] for m in metrics(output)] == [1, 2, 3]


def test_init_from_a_vocoder_folder_starts_from_its_weights(corpus, tmp_path):
    torch.manual_seed(7)
    source = UnitHiFiGAN(VocoderConfig.tiny())
    folder = source.save_pretrained(tmp_path / "voc")
    trainer = VocoderTrainer(tiny_config(corpus, tmp_path / "run", model=None, init_from=folder, discriminator="tiny"))
    try:
        trainer.setup()
        started = trainer.accelerator.unwrap_model(trainer.generator).inference_state_dict()
    finally:
        trainer.cleanup()
    for key, value in source.inference_state_dict().items():
        torch.testing.assert_close(started[key], value, rtol=1e-6, atol=1e-7)
    described = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert described["train"]["init_from"] == str(folder) and described["model"] == VocoderConfig.tiny().to_dict()
