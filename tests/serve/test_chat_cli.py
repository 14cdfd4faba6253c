"""``speechgpt chat``: one-shot and interactive use, and user errors as one line with exit code 2."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from typer.testing import CliRunner

from speechgpt.infer import SpeechGPT
from speechgpt.lm import Turn
from speechgpt.serve.chat_cli import chat_command
from tests.infer import ScriptedLM, build_tiny_bundle

runner = CliRunner()
SPOKEN_ANSWER = "hello there; [ta] Hi, friend; [ua] <sosp><3><4><5><6><7><8><9><10><eosp><eoa>"


def make_app() -> typer.Typer:
    # The lead registers chat_command as `speechgpt chat`; here it is the only command of a test app.
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(chat_command)
    return app


APP = make_app()


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
def loaded(tiny):
    return SpeechGPT.from_pretrained(tiny.path, device="cpu")


@pytest.fixture
def scripted(loaded, monkeypatch):
    """Make the command load a SpeechGPT whose LM writes ``SPOKEN_ANSWER`` (or the layout given to the returned
    function) instead of the random bundle's noise; returns that LM so tests can read the prompts it saw."""
    state = {}

    def use(layout: str = SPOKEN_ANSWER) -> ScriptedLM:
        lm = ScriptedLM(loaded.encoder.encode_trusted(layout), len(loaded.tokenizer), loaded.vocab.eos_id)
        model = SpeechGPT(lm, loaded.tokenizer, speech_tokenizer=loaded.speech_tokenizer, vocoder=loaded.vocoder)
        state["bundle"] = None

        def from_pretrained(bundle, device=None, dtype=None):
            state["bundle"] = bundle
            return model

        monkeypatch.setattr(SpeechGPT, "from_pretrained", from_pretrained)
        return lm

    use.state = state
    return use


def invoke(args, **kwargs):
    return runner.invoke(APP, [str(a) for a in args], **kwargs)


def test_help_shows_the_usage_and_examples():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for text in ("--bundle", "--text", "--audio", "--output", "--save-dir", "--reply-as", "--seed", "Examples"):
        assert text in result.output


def test_one_shot_text_with_the_real_bundle(tiny):
    result = invoke(["--bundle", tiny.path, "--text", "hello there", "--seed", "0", "--max-new-tokens", "20"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"transcript", "text", "units", "audio"}
    assert record["transcript"] == "" and record["audio"] is None
    again = invoke(["--bundle", tiny.path, "--text", "hello there", "--seed", "0", "--max-new-tokens", "20"])
    assert again.stdout == result.stdout  # the same seed gives the same answer


def test_one_shot_audio_writes_the_reply_wav(tiny, scripted, loaded, tmp_path):
    lm = scripted()
    out = tmp_path / "reply.wav"
    result = invoke(["--bundle", tiny.path, "--audio", tiny.question_wav, "-o", out, "--temperature", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record == {"transcript": "hello there", "text": "Hi, friend", "units": list(range(3, 11)), "audio": str(out)}
    wave, rate = sf.read(out, dtype="float32")
    assert rate == 16_000 and len(wave) % 320 == 0 and np.abs(wave).max() > 0.01
    assert scripted.state["bundle"] == tiny.path
    units = loaded.speech_tokenizer.encode(tiny.question_wav).ids.tolist()
    span = loaded.encoder.encode_units(units)
    prompt = lm.prompts[-1]
    assert any(prompt[i : i + len(span)] == span for i in range(len(prompt)))  # the question went in as its units


def test_asking_for_a_wav_without_speech_is_a_partial_failure(tiny, scripted, tmp_path):
    scripted("[ta] Only words.<eoa>")
    out = tmp_path / "reply.wav"
    result = invoke(["--bundle", tiny.path, "--text", "hi", "-o", out])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"transcript": "", "text": "Only words", "units": [], "audio": None}
    assert "has no speech" in result.stderr and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "hi", "--audio", "x.wav"], "give one question: --text or --audio, not both"),
        (["-o", "reply.wav"], "-o/--output is for one-shot use"),
        (["--text", "  "], "--text is empty"),
        (["--audio", "/no/such.wav"], "/no/such.wav: no such audio file"),
        (["--text", "hi", "--top-p", "1.5"], r"top_p must be in (0, 1], got 1.5"),
        (["--text", "hi", "--device", "nonsense"], "--device 'nonsense' is not a torch device"),
    ],
)
def test_user_errors_are_one_line(tiny, args, message):
    result = invoke(["--bundle", tiny.path, *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_or_broken_bundle_and_bad_audio(tiny, tmp_path):
    result = invoke(["--bundle", tmp_path / "absent", "--text", "hi"])
    assert result.exit_code == 2 and "no such bundle folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = invoke(["--bundle", tmp_path / "empty", "--text", "hi"])
    assert result.exit_code == 2 and "not a speechgpt bundle" in result.stderr
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not a recording")
    result = invoke(["--bundle", tiny.path, "--audio", not_audio])
    assert result.exit_code == 2 and f"{not_audio}: unreadable or not audio" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_interactive_session(tiny, scripted, loaded, tmp_path):
    lm = scripted()
    save_dir = tmp_path / "replies"
    save_dir.mkdir()
    (save_dir / "reply-004.wav").write_bytes(b"from an earlier session")
    session = "\n".join(
        [
            "hello",
            "/help",
            f"/audio {tiny.question_wav}",
            "/bogus",
            "/audio /no/such.wav",
            "/audio",
            "",
            "/reset",
            "bye",
            "/quit",
            "never read",
        ]
    )
    result = invoke(["--bundle", tiny.path, "--save-dir", save_dir, "--temperature", "0"], input=session + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "SpeechGPT: Hi, friend",
        "(heard: hello there)",  # only the spoken question has a transcript
        "SpeechGPT: Hi, friend",
        "SpeechGPT: Hi, friend",
    ]
    assert "unknown command /bogus" in result.stderr
    assert "/no/such.wav: no such audio file" in result.stderr and "/audio needs a file path" in result.stderr
    assert "/audio PATH" in result.stderr  # the help
    assert sorted(p.name for p in save_dir.iterdir()) == [
        "reply-004.wav",
        "reply-005.wav",
        "reply-006.wav",
        "reply-007.wav",
    ]
    # History: the third question saw the first two exchanges; after /reset the fourth saw none.
    assert len(lm.prompts) == 3
    units = loaded.speech_tokenizer.encode(tiny.question_wav).ids.tolist()
    assert lm.prompts[1] != lm.prompts[0] and len(lm.prompts[1]) > len(lm.prompts[0]) + len(units)
    assert lm.prompts[2] == loaded.encoder.build_prompt([Turn("user", text="bye")])


def test_end_of_input_ends_the_session(tiny, scripted, tmp_path):
    scripted("[ta] ok<eoa>")
    result = invoke(["--bundle", tiny.path, "--save-dir", tmp_path / "r"], input="hi\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["SpeechGPT: ok"]
    assert not (tmp_path / "r").exists()  # a text answer saves nothing
