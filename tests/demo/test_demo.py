"""The demo: its step cache (with stand-in steps, fast), its settings and command, and a whole run at tiny size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from speechgpt.constants import SAMPLE_RATE
from speechgpt.demo import STEPS, DemoConfig, DemoError, DemoProgress, Step, StepContext, StepOutput, run_demo
from speechgpt.demo.runner import StepFailed
from speechgpt.demo.steps import build_seconds, step_command
from speechgpt.serve.demo_cli import demo_command

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(demo_command)
    return app


# --- the step cache, with stand-in steps ------------------------------------------------------------------------


class Recorder:
    """Stand-in steps ``a`` (reads ``seed``) and ``b`` (reads ``clusters``, builds on ``a``), counting their runs."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seen_partial: list[bool] = []
        self.interrupt_b = False

    def run_a(self, ctx: StepContext) -> StepOutput:
        self.calls.append("a")
        ctx.path("a").mkdir(parents=True, exist_ok=True)
        ctx.path("a", "value.txt").write_text(f"seed {ctx.config.seed}\n")
        return StepOutput(["a/value.txt"], {"seed": ctx.config.seed})

    def run_b(self, ctx: StepContext) -> StepOutput:
        self.calls.append("b")
        partial = ctx.path("b.partial")
        self.seen_partial.append(partial.exists())
        partial.write_text("half done\n")
        if self.interrupt_b:
            raise KeyboardInterrupt
        a = ctx.path("a", "value.txt").read_text()
        ctx.path("b.txt").write_text(f"{a.strip()} clusters {ctx.config.clusters}\n")
        partial.unlink()
        return StepOutput(["b.txt"], {"clusters": ctx.config.clusters})

    def steps(self) -> list[Step]:
        return [
            Step("a", "step a", self.run_a, keys=("seed",), after=(), clean=("a",), budget=1, command="a"),
            Step(
                "b",
                "step b",
                self.run_b,
                keys=("clusters",),
                after=("a",),
                clean=("b.txt", "b.partial"),
                budget=1,
                command="b --clusters {clusters}",
            ),
        ]


def _config(tmp_path: Path, **values) -> DemoConfig:
    return DemoConfig.from_size("tiny", output_dir=str(tmp_path / "run"), **values)


def test_finished_steps_are_skipped(tmp_path):
    recorder = Recorder()
    first = run_demo(_config(tmp_path), steps=recorder.steps())
    assert recorder.calls == ["a", "b"]
    assert [r.cached for r in first.steps] == [False, False]
    record = json.loads((tmp_path / "run/steps/b.json").read_text())
    assert record["outputs"] == ["b.txt"] and record["info"] == {"clusters": 24}
    assert record["command"] == "b --clusters 24"
    assert record["seconds"] >= 0 and len(record["fingerprint"]) == 16

    second = run_demo(_config(tmp_path), steps=recorder.steps())
    assert recorder.calls == ["a", "b"]  # nothing ran again
    assert [r.cached for r in second.steps] == [True, True]
    assert [r.seconds for r in second.steps] == [r.seconds for r in first.steps]
    assert second.seconds_total == pytest.approx(first.seconds_total)


def test_a_changed_setting_redoes_its_step_and_those_after_it(tmp_path):
    recorder = Recorder()
    run_demo(_config(tmp_path), steps=recorder.steps())
    run_demo(_config(tmp_path, clusters=30), steps=recorder.steps())
    assert recorder.calls == ["a", "b", "b"]  # only b reads clusters
    assert (tmp_path / "run/b.txt").read_text() == "seed 0 clusters 30\n"
    run_demo(_config(tmp_path, clusters=30, seed=5), steps=recorder.steps())
    assert recorder.calls == ["a", "b", "b", "a", "b"]  # b builds on a, so it follows
    assert (tmp_path / "run/b.txt").read_text() == "seed 5 clusters 30\n"


def test_fresh_redoes_every_step_after_removing_its_outputs(tmp_path):
    recorder = Recorder()
    run_demo(_config(tmp_path), steps=recorder.steps())
    stray = tmp_path / "run/a/left-over.bin"
    stray.write_bytes(b"old")
    run_demo(_config(tmp_path), fresh=True, steps=recorder.steps())
    assert recorder.calls == ["a", "b", "a", "b"]
    assert not stray.exists()  # the step's folder was cleared first


def test_a_missing_output_redoes_the_step(tmp_path):
    recorder = Recorder()
    run_demo(_config(tmp_path), steps=recorder.steps())
    (tmp_path / "run/b.txt").unlink()
    result = run_demo(_config(tmp_path), steps=recorder.steps())
    assert recorder.calls == ["a", "b", "b"]
    assert [r.cached for r in result.steps] == [True, False]


def test_an_interrupted_step_continues_with_the_same_settings_and_restarts_with_others(tmp_path):
    recorder = Recorder()
    recorder.interrupt_b = True
    with pytest.raises(KeyboardInterrupt):
        run_demo(_config(tmp_path), steps=recorder.steps())
    assert (tmp_path / "run/steps/b.started.json").is_file()
    assert not (tmp_path / "run/steps/b.json").exists()
    assert (tmp_path / "run/steps/a.json").is_file()

    recorder.interrupt_b = False
    run_demo(_config(tmp_path), steps=recorder.steps())
    assert recorder.calls == ["a", "b", "b"]  # a was kept
    assert recorder.seen_partial == [False, True]  # same settings: b's own work was left for it to continue
    assert not (tmp_path / "run/steps/b.started.json").exists()

    recorder.interrupt_b = True
    with pytest.raises(KeyboardInterrupt):
        run_demo(_config(tmp_path, clusters=40), steps=recorder.steps())
    recorder.interrupt_b = False
    run_demo(_config(tmp_path, clusters=50), steps=recorder.steps())
    assert recorder.seen_partial == [False, True, False, False]  # other settings: the partial work was removed


def test_a_failing_step_names_itself_and_keeps_the_steps_before_it(tmp_path):
    def broken(ctx: StepContext) -> StepOutput:
        raise OSError("disk full")

    recorder = Recorder()
    steps = [recorder.steps()[0], Step("c", "step c", broken, (), ("a",), ("c",), 1, "c")]
    with pytest.raises(StepFailed, match=r"step 'c' failed: OSError: disk full") as caught:
        run_demo(_config(tmp_path), steps=steps)
    assert isinstance(caught.value.__cause__, OSError)
    assert (tmp_path / "run/steps/a.json").is_file()
    run_demo(_config(tmp_path), steps=recorder.steps())
    assert recorder.calls == ["a", "b"]


def test_the_display_hears_every_step(tmp_path):
    class Events(DemoProgress):
        def __init__(self) -> None:
            self.events: list[tuple] = []

        def step_started(self, index, step):
            self.events.append(("start", index, step.name))

        def step_finished(self, index, step, record):
            self.events.append(("done", index, step.name, record.cached))

        def demo_finished(self):
            self.events.append(("end",))

    events = Events()
    run_demo(_config(tmp_path), steps=Recorder().steps(), progress=events)
    run_demo(_config(tmp_path), steps=Recorder().steps(), progress=events)
    assert events.events == [
        ("start", 0, "a"),
        ("done", 0, "a", False),
        ("start", 1, "b"),
        ("done", 1, "b", False),
        ("end",),
        ("start", 0, "a"),
        ("done", 0, "a", True),
        ("start", 1, "b"),
        ("done", 1, "b", True),
        ("end",),
    ]


def test_steps_read_only_what_runs_before_them():
    seen: set[str] = set()
    for step in STEPS:
        assert set(step.after) <= seen, step.name
        seen.add(step.name)
    fields = set(DemoConfig.__dataclass_fields__)
    for step in STEPS:
        assert set(step.keys) <= fields, step.name
    assert [s.name for s in STEPS][-1] == "report"


def test_two_runs_never_share_a_folder(tmp_path):
    from speechgpt.demo.runner import _folder_lock

    recorder = Recorder()
    out = tmp_path / "run"
    out.mkdir()
    with _folder_lock(out), pytest.raises(DemoError, match=r"another demo is running in this folder \(pid \d+\)"):
        run_demo(_config(tmp_path), steps=recorder.steps())
    assert recorder.calls == []
    run_demo(_config(tmp_path), steps=recorder.steps())  # released
    assert recorder.calls == ["a", "b"]


def test_an_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DemoError, match="exists and is not a folder"):
        run_demo(DemoConfig.from_size("tiny", output_dir=str(target)), steps=Recorder().steps())


# --- settings -------------------------------------------------------------------------------------------------------


def test_sizes_and_settings_from_strings():
    tiny = DemoConfig.from_size("tiny")
    assert tiny.size == "tiny" and tiny.world_size == "tiny" and tiny.hidden_size < DemoConfig().hidden_size
    config = DemoConfig.from_strings(
        "small", ["clusters=64", "stage3_items=none", "lora_target_modules=q_proj, k_proj", "stage2_learning_rate=3e-4"]
    )
    assert config.clusters == 64 and config.stage3_items is None
    assert config.lora_target_modules == ("q_proj", "k_proj")
    assert config.stage2_learning_rate == 3e-4
    assert config.to_dict()["lora_target_modules"] == ["q_proj", "k_proj"]
    assert DemoConfig().asr_speed_perturbation == () and tiny.asr_speed_perturbation == ()
    assert DemoConfig.from_strings("small", ["asr_speed_perturbation=0.95, 1.05"]).asr_speed_perturbation == (
        0.95,
        1.05,
    )
    assert DemoConfig.from_strings("default", ["asr_speed_perturbation="]).asr_speed_perturbation == ()
    assert DemoConfig.from_size("small", asr_speed_perturbation=[0.9]).asr_speed_perturbation == (0.9,)  # from JSON


@pytest.mark.parametrize(
    ("size", "settings", "message"),
    [
        ("huge", [], "unknown size 'huge'; choose one of tiny, small, default"),
        ("tiny", ["clusters"], "--set expects KEY=VALUE, got 'clusters'"),
        ("tiny", ["clusterz=3"], "unknown demo setting 'clusterz'"),
        ("tiny", ["clusters=many"], "clusters must be int, got 'many'"),
        ("tiny", ["clusters=1"], "clusters must be at least 2, got 1"),
        ("tiny", ["stage2_learning_rate=0"], "stage2_learning_rate must be positive, got 0.0"),
        ("tiny", ["hidden_size=100", "num_heads=3"], "hidden_size (100) must be a multiple of num_heads (3)"),
        ("tiny", ["world_size=galactic"], "unknown world_size 'galactic'"),
        ("tiny", ["asr_speed_perturbation=fast"], "asr_speed_perturbation must be float, got 'fast'"),
        ("tiny", ["asr_speed_perturbation=1.0"], "asr_speed_perturbation must be distinct factors in (0.5, 2)"),
    ],
)
def test_bad_settings_are_named(size, settings, message):
    with pytest.raises(DemoError) as caught:
        DemoConfig.from_strings(size, settings)
    assert message in str(caught.value)


def test_training_settings_of_each_stage(monkeypatch):
    import speechgpt.train.trainer as trainer
    from speechgpt.demo.steps import _stage_settings

    config = DemoConfig(device="cpu")
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: True)
    settings = {stage: _stage_settings(config, stage) for stage in (0, 1, 2, 3)}
    assert [settings[stage].get("precision") for stage in (0, 1, 2, 3)] == ["bf16"] * 4
    assert [settings[stage]["packing"] for stage in (0, 1, 2, 3)] == [True, True, True, True]
    assert [settings[stage]["pack_length"] for stage in (0, 1, 2, 3)] == [None, None, 720, 350]
    # Every setting is one `speechgpt train` accepts (a typo would fail there, after minutes of earlier steps).
    from speechgpt.train.config import STAGE_CONFIGS, load_config

    for stage in (0, 1, 2, 3):
        paths = {"data": "d", "output_dir": "o"} | ({"base_model": "b"} if stage else {})
        load_config(STAGE_CONFIGS[stage], None, {**settings[stage], **paths})
    assert settings[2]["batch_size"] == config.stage2_batch_size and settings[0]["hidden_size"] == config.hidden_size
    assert settings[3]["replay_fraction"] == config.stage3_replay_fraction and "replay_fraction" not in settings[2]
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: False)
    assert _stage_settings(config, 2)["precision"] == "auto"
    assert _stage_settings(DemoConfig(device="cpu", precision="fp32"), 0)["precision"] == "fp32"
    with pytest.raises(DemoError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        DemoConfig(precision="fp8")
    assert DemoConfig(stage3_replay_fraction=0.0).stage3_replay_fraction == 0.0
    with pytest.raises(DemoError, match="stage3_replay_fraction must be >= 0"):
        DemoConfig(stage3_replay_fraction=-1.0)


def test_command_help_and_user_errors(tmp_path):
    result = runner.invoke(_app(), ["--help"])
    assert result.exit_code == 0 and "speechgpt demo --size tiny" in result.output
    result = runner.invoke(_app(), ["--size", "tiny", "--set", "clusters=many", "-o", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "error: clusters must be int, got 'many'" in result.output
    assert "Traceback" not in result.output
    target = tmp_path / "file"
    target.write_text("x")
    result = runner.invoke(_app(), ["--size", "tiny", "-o", str(target)])
    assert result.exit_code == 2 and "exists and is not a folder" in result.output


# --- the whole demo at tiny size ------------------------------------------------------------------------------------


def _speech_energy(path: Path) -> float:
    info = sf.info(path)
    assert info.samplerate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16", path
    wave, _ = sf.read(path, dtype="float32")
    assert wave.size > SAMPLE_RATE // 4, path  # at least a quarter of a second
    return float(np.sqrt(np.mean(wave**2)))


def _wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER by jiwer directly on normalised text (independent of the evaluation's own scoring code)."""
    from speechgpt.eval.text_norm import normalize_text

    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    counts = jiwer.process_words(refs, [h if h else "" for h in hyps])
    errors = counts.substitutions + counts.deletions + counts.insertions
    return errors / sum(len(r.split()) for r in refs)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny demo through the command, timed; then the same command again."""
    out = tmp_path_factory.mktemp("demo") / "run"
    started = time.perf_counter()
    first = runner.invoke(_app(), ["--size", "tiny", "-o", str(out), "--workers", "0"])
    seconds = time.perf_counter() - started
    assert first.exit_code == 0, first.output
    started = time.perf_counter()
    second = runner.invoke(_app(), ["--size", "tiny", "-o", str(out), "--workers", "0"])
    again = time.perf_counter() - started
    assert second.exit_code == 0, second.output
    return out, first, second, seconds, again


@pytest.mark.slow
def test_tiny_demo_makes_every_artifact(tiny_run):
    from speechgpt.infer import SpeechGPT

    out, first, _, seconds, _ = tiny_run
    print(f"tiny demo: {seconds:.1f} s")  # pytest -s shows it; the README quotes it
    for step in STEPS:
        record = json.loads((out / "steps" / f"{step.name}.json").read_text())
        assert record["name"] == step.name and (record["seconds"] > 0 or "skipped" in record["info"])
        assert all((out / output).exists() for output in record["outputs"]), step.name
    pipeline = SpeechGPT.from_pretrained(out / "bundle", device="cpu")
    assert pipeline.vocab.num_units == DemoConfig.from_size("tiny").clusters
    report = (out / "report.md").read_text()
    for heading in ("## Summary", "## Spoken question answering", "## A spoken conversation"):
        assert heading in report
    document = json.loads((out / "report.json").read_text())
    assert document["plots"], "no plots"
    for plot in document["plots"].values():
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in report
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["report"] == str(out / "report.md")
    assert summary["asr_wer"] == document["asr_wer"]


@pytest.mark.slow
def test_tiny_demo_metrics_come_from_real_outputs(tiny_run):
    from speechgpt.data.templates import Direction, load_templates, pick_template
    from speechgpt.eval.asr import asr_messages, default_options, read_eval_manifest, reply_text
    from speechgpt.infer import SpeechGPT

    out, _, _, _, _ = tiny_run
    document = json.loads((out / "report.json").read_text())
    for key in ("asr_wer", "tts_judge_wer", "vocoder_judge_wer", "qa_text_accuracy", "qa_speech_accuracy"):
        assert isinstance(document[key], float), key
    steps = json.loads((out / "steps/report.json").read_text())
    assert document["seconds_per_step"] == {
        name: round(json.loads((out / "steps" / f"{name}.json").read_text())["seconds"], 2)
        for name in document["seconds_per_step"]
    }
    # Wall-clock: background steps (judge, vocoder) count only where the foreground waited for them.
    assert document["seconds_total"] == pytest.approx(build_seconds(document["seconds_per_step"]), abs=0.05)
    foreground = sum(v for k, v in document["seconds_per_step"].items() if k not in ("judge", "vocoder"))
    assert foreground - 0.05 <= document["seconds_total"] <= sum(document["seconds_per_step"].values()) + 0.05
    assert set(document["seconds_per_step"]) == {s.name for s in STEPS} - {"report"}
    assert steps["outputs"][:2] == ["report.md", "report.json"]

    asr = json.loads((out / "eval/asr.json").read_text())
    rows = asr["rows"]
    assert len(rows) == DemoConfig.from_size("tiny").eval_asr_items
    assert document["asr_wer"] == pytest.approx(_wer([r["ref"] for r in rows], [r["hyp"] for r in rows]))
    # The rows hold what the bundle really says: ask the first item again (greedy decoding is deterministic).
    item = next(i for i in read_eval_manifest(out / "world/speech_test.jsonl") if i.id == rows[0]["id"])
    template = pick_template(load_templates(Direction.SPEECH_TO_TEXT), key=f"{item.id}-asr", seed=0)
    pipeline = SpeechGPT.from_pretrained(out / "bundle", device="cpu")
    options = default_options(DemoConfig.from_size("tiny").eval_max_new_tokens)
    assert reply_text(pipeline.chat(asr_messages(item, template), options)) == rows[0]["hyp"]
    assert item.extra["voice_split"] == "heldout"

    tts = json.loads((out / "eval/tts.json").read_text())
    assert document["tts_judge_wer"] == pytest.approx(
        _wer([r["text"] for r in tts["rows"]], [r["hyp"] for r in tts["rows"]])
    )
    resynthesis = json.loads((out / "eval/resynthesis.json").read_text())
    assert document["vocoder_judge_wer"] == pytest.approx(
        _wer([r["ref"] for r in resynthesis["rows"]], [r["hyp"] for r in resynthesis["rows"]])
    )
    qa = json.loads((out / "eval/qa.json").read_text())
    assert set(qa["combos"]) == {"speech-speech", "speech-text", "text-speech", "text-text"}
    spoken = [row for name in ("speech-speech", "speech-text") for row in qa["combos"][name]["rows"]]
    assert document["qa_text_accuracy"] == pytest.approx(np.mean([row["text_contains"] for row in spoken]))


@pytest.mark.slow
def test_tiny_demo_holds_a_spoken_conversation_on_held_out_voices(tiny_run):
    out, _, _, _, _ = tiny_run
    world = json.loads((out / "world/world.json").read_text())
    heldout = {voice["name"] for voice in world["voices"]["heldout"]}
    turns = [json.loads(line) for line in (out / "conversation/conversation.jsonl").read_text().splitlines()]
    assert len(turns) == DemoConfig.from_size("tiny").conversation_turns
    answers = 0
    for turn in turns:
        assert turn["voice"] in heldout
        assert _speech_energy(out / "conversation" / turn["question_audio"]) > 0.01
        if turn["answer_audio"]:
            answers += 1
            assert _speech_energy(out / "conversation" / turn["answer_audio"]) > 0.005
            assert turn["units"] > 0 and turn["answer_seconds"] > 0
    assert answers >= 1, "the tiny model never answered in speech"
    markdown = (out / "conversation/conversation.md").read_text()
    assert all(f"]({t['question_audio']})" in markdown for t in turns)


@pytest.mark.slow
def test_tiny_demo_units_cache_matches_the_tokenizer(tiny_run):
    from speechgpt.units.tokenizer import SpeechTokenizer

    out, _, _, _, _ = tiny_run
    tokenizer = SpeechTokenizer.from_pretrained(out / "tokenizer")
    records = [json.loads(line) for line in (out / "units/train.jsonl").read_text().splitlines()]
    assert len(records) == len((out / "world/speech_train.jsonl").read_text().splitlines())
    for record in records[:: max(1, len(records) // 5)]:
        units = tokenizer.encode(out / "units" / record["audio"])
        assert units.ids.tolist() == record["units"] and units.durations.tolist() == record["durations"]
    stage1 = json.loads((out / "steps/data_stage1.json").read_text())
    assert stage1["info"]["encoded_again"] == 0  # every recording came from the cache


@pytest.mark.slow
def test_tiny_demo_run_again_skips_every_step(tiny_run):
    _, _, second, _, again = tiny_run
    assert again < 30
    assert second.output.count("done before") == len(STEPS)
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["seconds_this_run"] < summary["seconds_total"]


# --- background steps -----------------------------------------------------------------------------------------------


def run_in_background(ctx: StepContext) -> StepOutput:
    """A background stand-in: records the process it ran in and its torch threads (module level: sent by reference)."""
    import os

    import torch

    ctx.path("bg.txt").write_text(f"{os.getpid()} {torch.get_num_threads()}\n")
    return StepOutput(["bg.txt"], {"pid": os.getpid()})


def fail_in_background(ctx: StepContext) -> StepOutput:
    raise ValueError("the background stand-in broke")


def _background_steps(run=run_in_background) -> list[Step]:
    def foreground(ctx: StepContext) -> StepOutput:
        ctx.path("fg.txt").write_text("foreground\n")
        return StepOutput(["fg.txt"])

    def reader(ctx: StepContext) -> StepOutput:
        ctx.path("after.txt").write_text(ctx.path("bg.txt").read_text())
        return StepOutput(["after.txt"])

    plain = {"keys": (), "clean": (), "budget": 1, "command": ""}
    return [
        Step("bg", "background", run, after=(), background=True, **{**plain, "keys": ("seed",)}),
        Step("fg", "foreground", foreground, after=(), **plain),
        Step("after", "reads bg", reader, after=("bg",), **plain),
    ]


def test_a_background_step_runs_in_another_process_on_one_thread_and_is_cached(tmp_path):
    import os

    result = run_demo(_config(tmp_path), steps=_background_steps())
    out = Path(result.out_dir)
    pid, threads = (out / "bg.txt").read_text().split()
    assert int(pid) != os.getpid() and int(threads) == 1
    assert (out / "after.txt").read_text() == (out / "bg.txt").read_text()  # "after" waited for it
    assert [r.name for r in result.steps] == ["bg", "fg", "after"] and not any(r.cached for r in result.steps)
    assert result.steps[0].info == {"pid": int(pid)}
    again = run_demo(_config(tmp_path), steps=_background_steps())
    assert all(r.cached for r in again.steps)
    changed = run_demo(_config(tmp_path, seed=3), steps=_background_steps())
    assert [r.cached for r in changed.steps] == [False, True, False]  # the reader is redone after its input


def test_a_failing_background_step_names_itself_and_its_log(tmp_path):
    with pytest.raises(StepFailed, match=r"step 'bg' failed: .*bg\.log.*the background stand-in broke"):
        run_demo(_config(tmp_path), steps=_background_steps(fail_in_background))
    assert not (tmp_path / "run" / "after.txt").exists()


def test_build_seconds_counts_a_background_lane_only_where_the_foreground_waits():
    def step(name, after=(), background=False):
        return Step(
            name, name, run_in_background, keys=(), after=after, clean=(), budget=1, command="", background=background
        )

    steps = [step("w"), step("bg1", background=True), step("bg2", background=True), step("f1"), step("f2", ("bg2",))]
    # The lane (1 + 3 s) runs next to f1 (5 s): hidden.
    assert build_seconds({"w": 1, "bg1": 1, "bg2": 3, "f1": 5, "f2": 2}, steps) == 1 + 5 + 2
    # A longer lane (10 s) makes f2 wait 5 s.
    assert build_seconds({"w": 1, "bg1": 6, "bg2": 4, "f1": 5, "f2": 2}, steps) == 1 + 5 + 5 + 2
    # Nothing reads the lane: it is waited for at the end; unknown steps count in full.
    assert build_seconds({"bg1": 9, "f1": 5, "extra": 1}, steps[1:4]) == 9 + 1


@pytest.mark.slow
def test_recognizer_units_are_the_tokenizers_encoding_and_agree_across_voices(tmp_path):
    """The default unit path: a recogniser trained first, its states clustered, every recording's units cached."""
    from speechgpt.units.encoder import RecognizerFeatures
    from speechgpt.units.tokenizer import SpeechTokenizer

    config = _config(tmp_path, extractor="recognizer", recognizer_steps=40, workers=0)
    wanted = ("world", "recognizer", "tokenizer", "data_stage1", "train_stage0", "train_stage1")
    result = run_demo(config, steps=[s for s in STEPS if s.name in wanted])
    out = Path(result.out_dir)
    recognizer = json.loads((out / "steps/recognizer.json").read_text())
    assert recognizer["outputs"] == ["recognizer"] and recognizer["info"]["seed"] == config.seed + 1
    tokenizer = SpeechTokenizer.from_pretrained(out / "tokenizer")
    assert isinstance(tokenizer.extractor, RecognizerFeatures) and tokenizer.num_units == config.clusters
    assert json.loads((out / "tokenizer/tokenizer_config.json").read_text())["extractor"]["type"] == "recognizer"
    records = [json.loads(line) for line in (out / "units/train.jsonl").read_text().splitlines()]
    for record in records[:: max(1, len(records) // 4)]:
        units = tokenizer.encode(out / "units" / record["audio"])
        assert units.ids.tolist() == record["units"] and units.durations.tolist() == record["durations"]
    assert "--extractor recognizer --recognizer" in json.loads((out / "steps/tokenizer.json").read_text())["command"]
    # Stage 1 starts the unit rows at the letters this recogniser reads, and its record names that option.
    stage1 = json.loads((out / "steps/train_stage1.json").read_text())["command"]
    assert stage1.endswith(f"--set unit_init_tokenizer={out}/tokenizer")


def test_only_recogniser_units_start_as_letters(tmp_path):
    def stage1_command(**values) -> str:
        ctx = StepContext(_config(tmp_path, **values), tmp_path / "run")
        return step_command(next(s for s in STEPS if s.name == "train_stage1"), ctx)

    assert "unit_init_tokenizer" in stage1_command(extractor="recognizer")
    assert "unit_init_tokenizer" not in stage1_command(extractor="recognizer", unit_init="mean")
    assert "unit_init_tokenizer" not in stage1_command(extractor="mfcc")
    with pytest.raises(DemoError, match="unit_init must be 'letters' or 'mean', got 'noise'"):
        _config(tmp_path, unit_init="noise")


def test_commands_name_the_speed_copies_and_the_judges_word_list(tmp_path):
    def command(step: str, **values) -> str:
        ctx = StepContext(_config(tmp_path, **values), tmp_path / "run")
        return step_command(next(s for s in STEPS if s.name == step), ctx)

    run = tmp_path / "run"
    assert command("data_stage2", asr_speed_perturbation=(0.9, 1.1)).endswith("--seed 0 --speed-perturb 0.9,1.1")
    assert "--speed-perturb" not in command("data_stage2", asr_speed_perturbation=())
    judge = command("judge", judge_lexicon=True)
    assert judge.endswith(f"--lexicon {run}/world/text/corpus.txt --lexicon {run}/world/text/vocabulary.txt")
    assert "--lexicon" not in command("judge", judge_lexicon=False)
