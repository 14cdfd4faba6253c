"""The ``speechgpt eval`` commands, run in-process on ``eval_app`` with a scripted model and a scripted judge."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from speechgpt.data.world import WorldConfig
from speechgpt.data.world_speech import build_world
from speechgpt.eval.judge import JudgeASR, JudgeConfig
from speechgpt.eval.report import PLOT_FILES
from speechgpt.infer import SpeechGPT
from speechgpt.serve import eval_cli
from speechgpt.serve.eval_cli import eval_app
from speechgpt.units import units_to_string
from tests.eval.test_asr import ROWS, scripted, write_manifest
from tests.eval.test_tts import ScriptedJudge
from tests.infer import build_tiny_bundle

runner = CliRunner()
COMMANDS = ["asr", "tts", "vocoder", "qa", "latency", "report"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def base(tiny):
    return SpeechGPT.from_pretrained(tiny.path, device="cpu")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("set"), ROWS)


@pytest.fixture
def model(monkeypatch, base):
    """Make the commands load a pipeline that answers with the responses given to ``use``."""
    loaded = []

    def use(responses: list[str]) -> list:
        def load(bundle, device):
            pipeline, _ = scripted(base, responses)
            loaded.append((bundle, device))
            return pipeline

        monkeypatch.setattr(eval_cli, "_load_pipeline", load)
        return loaded

    return use


@pytest.fixture
def judge(monkeypatch):
    def use(texts: list[str]) -> ScriptedJudge:
        stub = ScriptedJudge(texts)
        monkeypatch.setattr(eval_cli, "_load_judge", lambda path, device: stub)
        return stub

    return use


def invoke(*args):
    return runner.invoke(eval_app, [str(a) for a in args])


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output
    if command:
        assert f"speechgpt eval {command[0]}" in result.output


def test_asr_writes_its_result_into_the_results_folder(model, tiny, manifest, tmp_path):
    loaded = model(["the cat sad down", "hello there", "two dogs", "blue sky"])
    result = invoke("asr", manifest, "--bundle", tiny.path, "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "asr.json").read_text())
    assert data["wer"] == pytest.approx(0.1) and data["groups"]["v1"]["wer"] == pytest.approx(1 / 6)
    assert [r["hyp"] for r in data["rows"]] == ["the cat sad down", "hello there", "two dogs", "blue sky"]
    assert loaded == [(tiny.path, "cpu")]
    assert result.stdout == "" and "WER" in result.stderr and "10.0%" in result.stderr  # the summary table


def test_asr_prints_json_without_output_folder_and_filters(model, tiny, manifest):
    model(["two dogs"])
    result = invoke("asr", manifest, "--bundle", tiny.path, "--where", "id=c")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "asr" and data["wer"] == 0.0 and [r["id"] for r in data["rows"]] == ["c"]


def test_unreadable_audio_is_a_partial_failure(model, tiny, tmp_path):
    rows = [
        {"id": "ok", "audio": "ok.wav", "text": "one two", "voice": "v"},
        {"id": "gone", "audio": "gone.wav", "text": "three", "voice": "v", "missing": True},
    ]
    model(["one two"])
    result = invoke("asr", write_manifest(tmp_path, rows), "--bundle", tiny.path, "-o", tmp_path / "out")
    assert result.exit_code == 1
    data = json.loads((tmp_path / "out" / "asr.json").read_text())
    assert data["wer"] == 0.0 and [f["id"] for f in data["failures"]] == ["gone"]
    assert "1 item(s) could not be run" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["asr", "missing.jsonl", "--bundle", "b"], "missing.jsonl: no such manifest"),
        (["asr", "{manifest}", "--bundle", "b", "--where", "voice"], "--where 'voice': expected KEY=VALUE"),
        (["asr", "{manifest}", "--bundle", "{tmp}"], "speechgpt.json"),
        (["qa", "--bundle", "b", "--world", "{tmp}"], "build the world first"),
        (["qa", "--bundle", "b", "--world", "{tmp}", "--combo", "text-music"], "unknown combination 'text-music'"),
        (["report", "{tmp}"], "no results"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(manifest, tmp_path, args, message):
    args = [a.format(manifest=manifest, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stderr.strip().startswith("error:")


def test_tts_scores_the_judges_transcripts_and_saves_the_audio(model, judge, tiny, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat down\nParis is big.\n")
    model([units_to_string([3, 7, 9, 12]), units_to_string([1, 2, 3, 4, 5])])
    stub = judge(["the cat sat town", "paris is big"])
    result = invoke(
        "tts",
        texts,
        "--bundle",
        tiny.path,
        "--judge",
        tmp_path,
        "-o",
        tmp_path / "out",
        "--save-audio",
        tmp_path / "wav",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "tts.json").read_text())
    assert data["wer"] == pytest.approx(1 / 7) and data["spoken_rate"] == 1.0
    assert len(stub.heard) == 2 and sorted(p.name for p in (tmp_path / "wav").iterdir()) == ["line-1.wav", "line-2.wav"]


def test_tts_with_a_real_judge_folder(model, tiny, tmp_path):
    JudgeASR(JudgeConfig(conv_channels=8, hidden_size=8, num_layers=1)).save_pretrained(tmp_path / "judge")
    texts = tmp_path / "texts.txt"
    texts.write_text("one sentence\n")
    model([units_to_string(list(range(10)))])
    result = invoke("tts", texts, "--bundle", tiny.path, "--judge", tmp_path / "judge", "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["spoken"] == 1 and isinstance(data["rows"][0]["hyp"], str) and data["rows"][0]["units"] == 10


def test_vocoder_uses_the_bundles_own_tokenizer_and_vocoder(judge, tiny, manifest, tmp_path):
    judge(["the cat sat down", "hello there", "two dogs", "blue sky", "the cat sat down", "hello there", "two", "x"])
    result = invoke("vocoder", manifest, "--bundle", tiny.path, "--judge", tmp_path, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "resynthesis.json").read_text())
    assert data["wer"] == 0.0 and data["ceiling_wer"] == pytest.approx(3 / 10) and data["durations"] == "predicted"
    assert data["utterances"] == 4 and data["audio_seconds"] > 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "world"
    config = WorldConfig(
        questions_per_family=3, heldout_fraction=0.3, train_utterances=1, test_utterances=12, families=("colour",)
    )
    build_world(config, out, num_workers=0)
    return out


def test_qa_on_a_world_folder(model, judge, tiny, world, tmp_path):
    from speechgpt.eval.qa import load_world_questions

    questions = load_world_questions(world, voices="all", limit=2)
    right = [f"{q.question}; [ta] {q.answer}" for q in questions]
    model([*right, "[ta] no idea", f"[ta] {questions[1].answer}"])  # speech-text, then text-text
    args = ["qa", "--bundle", tiny.path, "--world", world, "--voices", "all", "--limit", 2, "-o", tmp_path]
    result = invoke(*args, "--combo", "speech-text", "--combo", "text-text")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "qa.json").read_text())
    assert list(data["combos"]) == ["speech-text", "text-text"]
    assert data["text_accuracy"] == 1.0 and data["speech_accuracy"] is None
    assert data["combos"]["text-text"]["text_exact"]["accuracy"] == 0.5
    # Spoken answers need a judge.
    result = invoke(*args)
    assert result.exit_code == 2 and "--judge DIR is needed" in result.stderr


def test_latency_command(model, tiny, tmp_path):
    model([f"hi; [ta] ok; [ua] {units_to_string(list(range(12)))}"] * 3)
    result = invoke("latency", tiny.question_wav, "--bundle", tiny.path, "--repeats", 1, "--warmup", 1, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["repeats"] == 1 and len(data["runs"]) == 2 and data["first_audio_s"] > 0
    assert "decode tokens/s" in result.stderr


def test_report_assembles_a_results_folder(model, judge, tiny, manifest, tmp_path):
    model(["the cat sad down", "hello there", "two dogs", "blue sky"])
    assert invoke("asr", manifest, "--bundle", tiny.path, "-o", tmp_path / "results").exit_code == 0
    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "loss.json").write_text(json.dumps({"log": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]}))
    result = invoke(
        "report", tmp_path / "results", "-o", tmp_path / "report", "--loss", stage, "--extra", "seconds_total=12.5"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "report" / "report.md")
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["asr_wer"] == pytest.approx(0.1) and data["seconds_total"] == 12.5 and data["qa_text_accuracy"] is None
    assert data["training_curves"] == {"stage1": str(stage)}
    for name in ("wer_per_voice", "training"):
        assert (tmp_path / "report" / PLOT_FILES[name]).read_bytes()[:4] == b"\x89PNG"


def test_the_real_loader_runs_a_random_bundle(tiny, manifest):
    args = ["--limit", 2, "--where", "voice=v1", "--max-new-tokens", 4, "--device", "cpu"]
    result = invoke("asr", manifest, "--bundle", tiny.path, *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["utterances"] == 2 and [r["ref"] for r in data["rows"]] == ["the cat sat down", "two dogs"]
    assert all(r["wer"] >= 0 for r in data["rows"]) and data["truncated"] <= 2


def test_latency_reports_a_bad_question_before_loading_the_model(model, tiny, tmp_path):
    loaded = model([])
    result = invoke("latency", tmp_path / "nope.wav", "--bundle", tiny.path)
    assert result.exit_code == 2 and "nope.wav" in result.stderr and loaded == []
