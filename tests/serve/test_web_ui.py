"""``speechgpt web``: the handlers as ``build_demo`` wires them, the command, and the page driven in real headless
Chromium (upload a spoken question, read and hear the answer, ask a typed one, take a screenshot)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from typer.testing import CliRunner

from speechgpt.audio import write_wav
from speechgpt.constants import SAMPLE_RATE
from speechgpt.data.tts import EspeakEngine
from speechgpt.infer import GenerationOptions, SpeechGPT
from speechgpt.prompt_format import CONTROL_STRINGS, CROSS_MODAL_INPUT, SOSP
from speechgpt.serve import web_app
from speechgpt.serve.web_app import ELEMENT_IDS, ChatSession, WebChat, build_demo, launch_demo
from speechgpt.serve.web_cli import INSTALL_HINT, web_command
from tests.infer import ScriptedLM, build_tiny_bundle

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARTIFACTS_ENV = "SPEECHGPT_TEST_ARTIFACTS"
SPOKEN_QUESTION = "What is the capital of France?"
HEARD = "what is the capital of france"
SPOKEN_ANSWER = "Paris is the capital of France"
ANSWER_UNITS = list(range(5, 45))
TYPED_QUESTION = "What is four plus three?"
TYPED_ANSWER = "Four plus three is seven"
LEAK = re.compile("|".join(re.escape(s) for s in CONTROL_STRINGS) + r"|<\d+>", flags=re.IGNORECASE)
WAIT_MS = 20_000  # every browser wait is bounded


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_bundle(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def bundled(tiny) -> SpeechGPT:
    return SpeechGPT.from_pretrained(tiny.path, device="cpu")


def spoken_script(sg: SpeechGPT) -> list[int]:
    units = "".join(f"<{u}>" for u in ANSWER_UNITS)
    return sg.encoder.encode_trusted(f"{HEARD}; [ta] {SPOKEN_ANSWER}.; [ua] <sosp>{units}<eosp><eoa>")


@pytest.fixture()
def scripted(bundled) -> tuple[SpeechGPT, ScriptedLM]:
    """The bundle's speech tokenizer, text tokenizer and vocoder, with an LM that writes a known spoken answer."""
    lm = ScriptedLM(spoken_script(bundled), len(bundled.tokenizer), fallback=bundled.vocab.eos_id)
    sg = SpeechGPT(lm, bundled.tokenizer, speech_tokenizer=bundled.speech_tokenizer, vocoder=bundled.vocoder)
    return sg, lm


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    """A spoken question: espeak-ng in-process, 16 kHz WAV."""
    path = tmp_path_factory.mktemp("question") / "question.wav"
    return write_wav(path, EspeakEngine().synthesize(SPOKEN_QUESTION))


def respond_handler(demo: gr.Blocks):
    """The function ``build_demo`` registered under api_name "respond", with its input and output components."""
    matches = [f for f in demo.fns.values() if f.api_name == "respond"]
    assert len(matches) == 1
    return matches[0]


def run(handler, *args) -> list[tuple]:
    return list(handler(*args))


def texts(chat: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in chat if isinstance(m["content"], str)]


# --- the handlers, as wired (no browser) -------------------------------------------------------------------------


def test_build_demo_wires_a_handler_that_answers_with_history_and_audio(scripted, question_wav):
    sg, lm = scripted
    demo = build_demo(sg, options=GenerationOptions(temperature=0, max_new_tokens=200), max_queue=3)
    respond = respond_handler(demo)
    labels = [getattr(c, "elem_id", None) for c in respond.outputs]
    assert labels[:4] == [
        ELEMENT_IDS["chatbot"],
        ELEMENT_IDS["reply_audio"],
        ELEMENT_IDS["question_text"],
        ELEMENT_IDS["question_audio"],
    ]
    assert isinstance(respond.outputs[4], gr.State)
    assert [getattr(c, "elem_id", None) for c in respond.inputs[:2]] == [
        ELEMENT_IDS["question_audio"],
        ELEMENT_IDS["question_text"],
    ]
    assert respond.concurrency_limit == 1 and demo._queue.max_size == 3  # one answer at a time, bounded waiting

    # A spoken question: the inputs exactly as the page sends them (settings as floats).
    args = [str(question_wav), "", ChatSession(), "auto", 200.0, 0.0, 0.9, None]
    updates = run(respond.fn, *args)
    chat, audio, text, question_audio, session = updates[-1]
    expected = sg.chat(
        [{"role": "user", "content": question_wav}], GenerationOptions(temperature=0, max_new_tokens=200)
    )
    assert expected.text == SPOKEN_ANSWER and expected.units == ANSWER_UNITS
    assert texts(chat) == [("user", f"*heard:* {HEARD}"), ("assistant", SPOKEN_ANSWER)]
    assert chat[-1]["content"]["path"] == audio  # the answer's audio is in the chat and plays on its own
    served, rate = sf.read(audio, dtype="float32")
    assert rate == SAMPLE_RATE and len(served) == len(expected.waveform)
    np.testing.assert_allclose(served, expected.waveform, atol=1 / 2**15 + 1e-6)  # 16-bit WAV of the same answer
    assert (text, question_audio) == ("", None)  # the question boxes are cleared for the next one
    assert len(session.messages) == 2 and session.messages[1].waveform is None and session.display == chat
    assert updates[0][0][-1] == {"role": "assistant", "content": "…"}  # the answer bubble shows up at once
    assert updates[0][1] is None  # and the previous reply's audio is cleared

    # A typed follow-up, text only: the first exchange goes back into the prompt.
    lm.script = sg.encoder.encode_trusted(f"[ta] {TYPED_ANSWER}.<eoa>")
    chat, audio, _, _, session = run(respond.fn, None, TYPED_QUESTION, session, "text", 200.0, 0.0, 0.9, 0.0)[-1]
    assert texts(chat)[-2:] == [("user", TYPED_QUESTION), ("assistant", TYPED_ANSWER)]
    assert audio is None and len(chat) == 5 and len(session.messages) == 4
    assert sg.encoder.decode(lm.prompts[-1]).count(SPOKEN_ANSWER) == 1  # the history is in the prompt
    assert all(not LEAK.search(c) for _, c in texts(chat))

    # Clear, and the chat's own trash icon, forget the conversation (not only hide it).
    chatbot = respond.outputs[0]
    resets = [f for f in demo.fns.values() if f.fn == respond.fn.__self__.reset]
    assert {event for f in resets for _, event in f.targets} == {"click", "clear"}
    assert any((chatbot._id, "clear") in f.targets for f in resets)
    assert all(f.outputs == respond.outputs for f in resets)
    assert resets[0].fn() == ([], None, "", None, ChatSession())


def test_bad_input_is_a_message_not_a_crash(scripted, tmp_path):
    sg, _ = scripted
    chat = WebChat(sg, GenerationOptions(temperature=0, max_new_tokens=50))
    before = ChatSession(messages=["kept"], display=[{"role": "user", "content": "kept"}])
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    with pytest.raises(gr.Error, match=r"Cannot use the recording: notes\.wav: "):
        run(chat.respond, str(not_audio), "", before)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(gr.Error, match=r"empty\.wav"):
        run(chat.respond, str(empty), "", before)
    with pytest.raises(gr.Error, match="top_p"):
        run(chat.respond, None, "hello", before, "auto", 10.0, 0.5, 1.5, None)
    with pytest.raises(gr.Error, match="seed must be a whole number"):
        run(chat.respond, None, "hello", before, "auto", 10.0, 0.5, 0.9, 1.5)
    with pytest.raises(gr.Error, match="output_modality"):
        run(chat.respond, None, "hello", before, "video", 10.0, 0.5, 0.9, None)
    # Nothing asked: a warning, and the conversation stays as it was.
    with pytest.warns(UserWarning, match="Type a question"):
        ((shown, *_rest, session),) = run(chat.respond, None, "   ", before)
    assert shown == before.display and session is before


def test_text_with_a_recording_and_a_bounded_history(scripted, question_wav, monkeypatch):
    sg, lm = scripted
    monkeypatch.setattr(web_app, "MAX_HISTORY_EXCHANGES", 2)
    chat = WebChat(sg, GenerationOptions(temperature=0, max_new_tokens=200))
    # Typed text with a recording is an instruction about the recording; the chat shows both.
    shown, _, _, _, session = run(chat.respond, str(question_wav), "Transcribe the speech.", None)[-1]
    assert texts(shown)[0] == ("user", f"Transcribe the speech.\n\n*heard:* {HEARD}")
    assert f"Transcribe the speech.{CROSS_MODAL_INPUT}{SOSP}" in sg.encoder.decode(lm.prompts[-1])
    for question in ("one", "two"):
        shown, _, _, _, session = run(chat.respond, None, question, session, "text")[-1]
    assert len(session.messages) == 4  # the oldest exchange is forgotten, on the page too
    assert [content for role, content in texts(shown) if role == "user"] == ["one", "two"]
    assert session.display == shown


def test_the_token_limit_holds_whatever_the_page_asks(scripted):
    sg, lm = scripted
    lm.script = []  # writes <eos> at once; we look at what the handler asked for
    chat = WebChat(sg, GenerationOptions(max_new_tokens=8), max_new_tokens_limit=16)
    options = chat._options("auto", 10_000.0, 0.0, 1.0, 3.0)
    assert (options.max_new_tokens, options.seed, options.temperature) == (16, 3, 0.0)
    assert chat._options(None, None, None, None, None).max_new_tokens == 8
    with pytest.raises(ValueError, match="max_new_tokens_limit"):
        WebChat(sg, GenerationOptions(max_new_tokens=64), max_new_tokens_limit=16)
    with pytest.raises(ValueError, match="max_queue"):
        build_demo(sg, max_queue=0)


def test_a_random_model_through_the_page_never_leaks_tags(bundled, question_wav):
    """The real (random) tiny LM: whatever it writes, the chat holds no control strings and audio goes with units."""
    chat = WebChat(bundled, GenerationOptions(temperature=1.0, max_new_tokens=60, seed=0))
    session = ChatSession()
    for audio, text, reply_as in ((str(question_wav), "", "speech"), (None, "hello there", "auto")):
        shown, audio_path, _, _, session = run(chat.respond, audio, text, session, reply_as)[-1]
        reply = session.messages[-1]
        assert all(not LEAK.search(c) for _, c in texts(shown))
        assert (audio_path is not None) == bool(reply.units)
    assert len(session.messages) == 4


# --- the command ---------------------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, rich_markup_mode="markdown")
    app.command("web")(web_command)
    app.callback()(lambda: None)
    return app


def test_web_command_help_and_user_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(cli(), ["web", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--bundle", "--host", "--port", "--device", "--dtype", "--max-queue"):
        assert flag in result.output
    assert "--share" not in result.output and "speechgpt web --bundle" in result.output

    result = runner.invoke(cli(), ["web", "--bundle", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such bundle folder" in result.output

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(cli(), ["web", "--bundle", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if Gradio were not installed
    result = runner.invoke(cli(), ["web", "--bundle", str(tmp_path)])
    assert result.exit_code == 2 and INSTALL_HINT in " ".join(result.output.split())
    assert "Traceback" not in result.output


# --- the page in a real browser ------------------------------------------------------------------------------------


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_CANDIDATES) if p), None)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # Gradio's own use of pandas 3 deprecations
def test_the_page_in_headless_chromium(scripted, question_wav, tmp_path):
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed: pip install playwright (its bundled browsers are not needed)")
    sg, lm = scripted
    expected = sg.chat([{"role": "user", "content": question_wav}], GenerationOptions(temperature=0))
    demo = build_demo(sg, options=GenerationOptions(temperature=0, max_new_tokens=200))
    url = launch_demo(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True)
    screenshot = tmp_path / "web_ui.png"
    start = time.monotonic()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=executable,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--autoplay-policy=no-user-gesture-required",
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                ],
                timeout=WAIT_MS,
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900}, permissions=["microphone"])
                page.set_default_timeout(WAIT_MS)
                page.goto(url, wait_until="domcontentloaded")
                chat = page.locator(f"#{ELEMENT_IDS['chatbot']}")
                reply_audio = page.locator(f"#{ELEMENT_IDS['reply_audio']}")

                # A spoken question: upload the WAV, send, wait for the transcript, the answer and its audio.
                page.locator(f"#{ELEMENT_IDS['question_audio']} input[type=file]").set_input_files(question_wav)
                page.locator(f"#{ELEMENT_IDS['question_audio']} audio").first.wait_for(state="attached")
                page.click(f"#{ELEMENT_IDS['send']}")
                chat.get_by_text(SPOKEN_ANSWER, exact=True).wait_for()
                chat.get_by_text(HEARD).wait_for()
                link = reply_audio.locator("a[download]")
                link.wait_for(state="attached")
                playable = reply_audio.locator("audio[src]").first  # Playwright's CSS pierces shadow roots
                playable.wait_for(state="attached")
                page.wait_for_function("a => a.src.length > 0 && a.duration > 0", arg=playable.element_handle())
                # The WAV the page plays is the pipeline's answer.
                body = page.request.get(link.get_attribute("href")).body()
                served, rate = sf.read(io.BytesIO(body), dtype="float32")
                assert rate == expected.sample_rate and len(served) == len(expected.waveform)
                np.testing.assert_allclose(served, expected.waveform, atol=1 / 2**15 + 1e-6)
                assert chat.locator("audio").count() >= 1  # the answer also plays from the chat history

                # A recorded question (Chromium's fake microphone plays a beep): the same path as an upload.
                question = page.locator(f"#{ELEMENT_IDS['question_audio']}")
                question.get_by_label("Record audio").click()
                question.get_by_role("button", name="Record", exact=True).click()
                page.wait_for_timeout(1000)
                question.get_by_role("button", name="Stop", exact=True).first.click()
                question.locator("audio").first.wait_for(state="attached")
                page.click(f"#{ELEMENT_IDS['send']}")
                chat.get_by_text(SPOKEN_ANSWER, exact=True).nth(1).wait_for()

                # A typed question answered in text, after choosing "Text".
                lm.script = sg.encoder.encode_trusted(f"[ta] {TYPED_ANSWER}.<eoa>")
                page.get_by_label("Text", exact=True).check()
                page.fill(f"#{ELEMENT_IDS['question_text']} textarea", TYPED_QUESTION)
                page.press(f"#{ELEMENT_IDS['question_text']} textarea", "Enter")
                chat.get_by_text(TYPED_ANSWER, exact=True).wait_for()
                chat.get_by_text(TYPED_QUESTION, exact=True).wait_for()
                assert not LEAK.search(chat.inner_text())
                assert page.input_value(f"#{ELEMENT_IDS['question_text']} textarea") == ""
                assert reply_audio.locator("audio[src]").count() == 0  # a text answer: no stale audio plays
                page.mouse.move(0, 0)
                page.screenshot(path=screenshot, full_page=True)

                # Clear empties the conversation.
                page.click(f"#{ELEMENT_IDS['clear']}")
                chat.get_by_text(TYPED_ANSWER, exact=True).wait_for(state="detached")
                assert chat.get_by_text(SPOKEN_ANSWER).count() == 0
            except Exception:
                page.screenshot(path=screenshot.with_name("web_ui_failed.png"), full_page=True)
                print(f"web UI screenshot of the failure: {screenshot.with_name('web_ui_failed.png')}")
                raise
            finally:
                browser.close()
    finally:
        demo.close()
    elapsed = time.monotonic() - start
    print(f"web UI screenshot: {screenshot} (browser part took {elapsed:.1f} s)")
    artifacts = os.environ.get(ARTIFACTS_ENV)
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        copied = shutil.copy2(screenshot, Path(artifacts) / "web_ui.png")
        print(f"web UI screenshot copied to {copied}")
    assert screenshot.stat().st_size > 10_000
