"""The browser UI of ``speechgpt web``: speak or type to a SpeechGPT, read and hear its answers (Gradio).

A thin shell over :class:`~speechgpt.infer.SpeechGPT`: :class:`WebChat` holds the pipeline and answers one turn
per call (its methods are the event handlers), :func:`build_demo` lays out the page and wires the events, and
:func:`launch_demo` serves it. Gradio is imported only inside these functions: it is the optional ``web`` extra
(``pip install 'speechgpt[web]'``), and ``import speechgpt.serve.cli`` must not pay for it.

One answer is generated at a time (a :class:`~speechgpt.infer.SpeechGPT` is not re-entrant); other visitors wait
in Gradio's queue, which is bounded so that a crowd gets a clear "queue is full" instead of waiting forever.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speechgpt.audio import AudioError, load_audio, write_wav
from speechgpt.infer import Done, GenerationOptions, OutputModality, Reply, TextDelta, Transcript

if TYPE_CHECKING:
    import gradio as gr

    from speechgpt.infer import SpeechGPT

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS_LIMIT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_OPTIONS",
    "DEFAULT_TITLE",
    "ELEMENT_IDS",
    "ChatSession",
    "WebChat",
    "build_demo",
    "launch_demo",
]

DEFAULT_TITLE = "SpeechGPT"
DEFAULT_OPTIONS = GenerationOptions()
DEFAULT_MAX_QUEUE = 16
"""Visitors that may wait for the model; one more is told the queue is full (bounded waiting for everyone)."""
DEFAULT_MAX_NEW_TOKENS_LIMIT = 2048
"""Most tokens one answer may take, whatever the page (or a client of its API) asks: one visitor cannot hold the
model for long."""
MAX_HISTORY_EXCHANGES = 20
"""Question/answer pairs a session remembers (the prompt is trimmed further if the model's context is shorter)."""
SESSION_TTL_S = 6 * 3600
"""Seconds a visitor's conversation is kept after its last change; reply WAVs live as long."""
STREAM_UPDATE_S = 0.05
"""Shortest gap between two page updates while an answer streams in (fewer, larger updates on fast models)."""
MAX_UPLOAD = "50mb"
"""Largest upload Gradio accepts (about 26 minutes of 16 kHz 16-bit mono WAV)."""
WAITING = "…"
"""Shown in the answer bubble until the first words arrive."""
HEARD_MARK = "*heard:*"
"""Starts a spoken question in the chat (Markdown); the transcript, what the model heard, follows it."""

ELEMENT_IDS = {
    "chatbot": "speechgpt-chat",
    "question_audio": "speechgpt-question-audio",
    "question_text": "speechgpt-question-text",
    "reply_as": "speechgpt-reply-as",
    "send": "speechgpt-send",
    "clear": "speechgpt-clear",
    "reply_audio": "speechgpt-reply-audio",
    "settings": "speechgpt-settings",
}
"""HTML ids of the page's parts, for styling and for tests that drive the page in a browser."""

REPLY_AS_CHOICES = (
    ("Auto (answer in kind)", OutputModality.AUTO.value),
    ("Text", OutputModality.TEXT.value),
    ("Speech", OutputModality.SPEECH.value),
)

CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto !important; }
#speechgpt-header h1 { margin-bottom: 0.1em; }
#speechgpt-header p { margin-top: 0; opacity: 0.8; }
#speechgpt-send { min-width: 8em; }
"""
"""A centred page of reasonable width; Gradio's default theme does the rest."""


@dataclass
class ChatSession:
    """One visitor's conversation (kept in a ``gr.State``).

    Attributes:
        messages: The conversation as :meth:`SpeechGPT.chat` reads it: user messages (text, audio samples at 16 kHz
            or both) alternating with the replies (their waveforms dropped: the history needs only their units).
        display: The chat as the page shows it (Gradio message dicts, reply audio as WAV files).
    """

    messages: list[Any] = field(default_factory=list)
    display: list[dict[str, Any]] = field(default_factory=list)


class WebChat:
    """The state behind the page: the pipeline, default options, and the folder of reply WAVs.

    Its methods are the page's event handlers; tests call them directly.

    Args:
        pipeline: A loaded :class:`~speechgpt.infer.SpeechGPT` (anything with its ``chat_stream``).
        options: Defaults of the page's generation settings.
        max_new_tokens_limit: Most tokens one answer may take, whatever a request asks.
        audio_dir: Where reply WAVs are written; a fresh temporary folder when None (it must be under the system's
            temporary folder or the working directory for Gradio to serve it).

    Raises:
        ValueError: ``max_new_tokens_limit`` is not a positive int, or below ``options.max_new_tokens``.
    """

    def __init__(
        self,
        pipeline: SpeechGPT,
        options: GenerationOptions = DEFAULT_OPTIONS,
        *,
        max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS_LIMIT,
        audio_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(max_new_tokens_limit, int) or isinstance(max_new_tokens_limit, bool):
            raise ValueError(f"max_new_tokens_limit must be a positive int, got {max_new_tokens_limit!r}")
        if max_new_tokens_limit < options.max_new_tokens:
            raise ValueError(
                f"max_new_tokens_limit ({max_new_tokens_limit}) must be >= options.max_new_tokens "
                f"({options.max_new_tokens})"
            )
        self.pipeline = pipeline
        self.options = options
        self.max_new_tokens_limit = max_new_tokens_limit
        if audio_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="speechgpt-web-")  # removed when the app goes away
            audio_dir = self._tmp.name
        self.audio_dir = Path(audio_dir)
        self.audio_dir.mkdir(parents=True, exist_ok=True)

    # --- event handlers ----------------------------------------------------------------------------------------

    def respond(
        self,
        audio: str | None,
        text: str | None,
        session: ChatSession | None,
        reply_as: str = OutputModality.AUTO.value,
        max_new_tokens: float | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: float | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """Answer one question: a recording (file path), typed text, or both (an instruction about the recording).

        Yields ``(chat messages, reply WAV path or None, question text, question audio, session)`` as the answer
        streams in; the last one holds the reply audio and clears the question boxes. Settings left as None take
        the defaults.

        Raises:
            gradio.Error: unreadable or empty audio, bad settings, a question too long for the model (shown on the
                page; the conversation is kept).
        """
        import gradio as gr

        session = session if isinstance(session, ChatSession) else ChatSession()
        text = (text or "").strip()
        if not audio and not text:
            gr.Warning("Type a question, or record or upload one.")
            yield list(session.display), gr.skip(), "", None, session
            return
        options = self._options(reply_as, max_new_tokens, temperature, top_p, seed)
        content = self._question(audio, text)
        message = {"role": "user", "content": content}
        try:
            events = self.pipeline.chat_stream([*session.messages, message], options)
        except ValueError as e:  # AudioError included: its text names the recording and the reason
            raise gr.Error(str(e), print_exception=False) from None

        spoken = bool(audio)
        shown_question = self._shown_question(text, spoken, transcript=None)
        answer = ""
        chat = [
            *session.display,
            {"role": "user", "content": shown_question},
            {"role": "assistant", "content": WAITING},
        ]
        yield list(chat), None, gr.skip(), gr.skip(), session
        last_update = time.monotonic()
        reply: Reply | None = None
        try:
            for event in events:
                if isinstance(event, Transcript):
                    chat[-2] = {"role": "user", "content": self._shown_question(text, spoken, event.text)}
                elif isinstance(event, TextDelta):
                    answer += event.text
                    chat[-1] = {"role": "assistant", "content": answer}
                elif isinstance(event, Done):
                    reply = event.reply
                    break
                else:
                    continue  # audio chunks: the reply is played whole, once it is complete
                if time.monotonic() - last_update >= STREAM_UPDATE_S:
                    last_update = time.monotonic()
                    yield list(chat), None, gr.skip(), gr.skip(), session
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception:
            logger.exception("the model failed to answer")
            raise gr.Error("The model failed on this question; the server log has the details.") from None
        if reply is None:  # pragma: no cover - chat_stream always ends with Done
            raise gr.Error("The model stopped without an answer.")

        wav = self._save_reply(reply)
        turn_display = [{"role": "user", "content": self._shown_question(text, spoken, reply.transcript)}]
        turn_display.append({"role": "assistant", "content": _answer_text(reply)})
        if wav is not None:
            turn_display.append({"role": "assistant", "content": {"path": str(wav), "mime_type": "audio/wav"}})
        session = ChatSession(
            messages=[*session.messages, message, dataclasses.replace(reply, waveform=None)],
            display=[*session.display, *turn_display],
        )
        session = self._trimmed(session)
        yield list(session.display), None if wav is None else str(wav), "", None, session

    def reset(self) -> tuple[list[dict[str, Any]], None, str, None, ChatSession]:
        """Forget the conversation: ``(chat messages, reply audio, question text, question audio, session)``."""
        return [], None, "", None, ChatSession()

    # --- helpers -----------------------------------------------------------------------------------------------

    def _options(
        self,
        reply_as: str | None,
        max_new_tokens: float | None,
        temperature: float | None,
        top_p: float | None,
        seed: float | None,
    ) -> GenerationOptions:
        """Options from the page's settings; Gradio sends numbers as floats, and a client may send anything."""
        import gradio as gr

        defaults = self.options
        try:
            tokens = defaults.max_new_tokens if max_new_tokens is None else _whole(max_new_tokens, "max new tokens")
            seed_value = None if seed is None or seed == "" else _whole(seed, "seed")
            return dataclasses.replace(
                defaults,
                output_modality=reply_as or defaults.output_modality,
                max_new_tokens=max(1, min(tokens, self.max_new_tokens_limit)),
                temperature=defaults.temperature if temperature is None else float(temperature),
                top_p=defaults.top_p if top_p is None else float(top_p),
                seed=seed_value if seed is not None else defaults.seed,
                # The page plays the reply once it is complete: vocode in few, large chunks.
                audio_chunk_units=defaults.max_audio_chunk_units,
            )
        except (TypeError, ValueError) as e:
            raise gr.Error(f"Bad generation setting: {e}", print_exception=False) from None

    def _question(self, audio: str | None, text: str) -> Any:
        """The user message's content: audio read here (so errors name the uploaded file, not a server path)."""
        import gradio as gr

        if not audio:
            return text
        name = Path(audio).name
        try:
            wave = load_audio(audio, name=name)
        except AudioError as e:
            raise gr.Error(f"Cannot use the recording: {e}", print_exception=False) from None
        part = {"type": "audio", "audio": wave}
        return [{"type": "text", "text": text}, part] if text else part

    @staticmethod
    def _shown_question(text: str, spoken: bool, transcript: str | None) -> str:
        """How the user's turn reads in the chat: the typed text, and what the model heard in the recording."""
        if not spoken:
            return text
        if transcript is None:
            heard = f"{HEARD_MARK} {WAITING}"
        else:
            heard = f"{HEARD_MARK} {transcript}" if transcript else f"{HEARD_MARK} *(no words recognised)*"
        return f"{text}\n\n{heard}" if text else heard

    def _save_reply(self, reply: Reply) -> Path | None:
        """Write the spoken answer as a WAV the page can play (old ones are removed first)."""
        if reply.waveform is None or len(reply.waveform) == 0:
            return None
        self._prune()
        path = self.audio_dir / f"reply-{uuid.uuid4().hex}.wav"
        return write_wav(path, reply.waveform, sample_rate=reply.sample_rate)

    def _prune(self) -> None:
        """Delete reply WAVs older than :data:`SESSION_TTL_S`, so a long-running server does not fill the disk."""
        cutoff = time.time() - SESSION_TTL_S
        for old in self.audio_dir.glob("reply-*.wav"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:  # another thread removed it first
                continue

    @staticmethod
    def _trimmed(session: ChatSession) -> ChatSession:
        """Keep the last :data:`MAX_HISTORY_EXCHANGES` exchanges (the chat shows the same turns)."""
        if len(session.messages) <= 2 * MAX_HISTORY_EXCHANGES:
            return session
        messages = session.messages[-2 * MAX_HISTORY_EXCHANGES :]
        starts = [i for i, m in enumerate(session.display) if m["role"] == "user"]
        display = session.display[starts[-MAX_HISTORY_EXCHANGES] :]
        return ChatSession(messages=messages, display=display)


def _whole(value: Any, what: str) -> int:
    """An integral setting (Gradio numbers arrive as floats)."""
    number = float(value)
    if not np.isfinite(number) or number != int(number):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(number)


def _answer_text(reply: Reply) -> str:
    """The answer bubble: the text answer, or a note when the model only spoke (or said nothing)."""
    if reply.text:
        return reply.text
    return "*(spoken answer)*" if reply.waveform is not None else "*(no answer)*"


def build_demo(
    pipeline: SpeechGPT,
    *,
    title: str = DEFAULT_TITLE,
    options: GenerationOptions = DEFAULT_OPTIONS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS_LIMIT,
) -> gr.Blocks:
    """The page: a chat, a recording or file to ask with, a text box, the reply playing, and settings.

    Args:
        pipeline: A loaded :class:`~speechgpt.infer.SpeechGPT`.
        title: Page title and heading.
        options: Defaults of the generation settings (reply modality, tokens, temperature, top-p, seed).
        max_queue: Visitors who may wait for the model; more are turned away with a message.
        max_new_tokens_limit: Most tokens one answer may take.

    Returns:
        A queued ``gradio.Blocks``; serve it with :func:`launch_demo` (or its own ``launch``).

    Raises:
        ImportError: Gradio is not installed (``pip install 'speechgpt[web]'``).
        ValueError: ``max_queue`` is not a positive int, or the token limit is below the default.
    """
    import gradio as gr

    if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 1:
        raise ValueError(f"max_queue must be a positive int, got {max_queue!r}")
    chat = WebChat(pipeline, options, max_new_tokens_limit=max_new_tokens_limit)
    ids = ELEMENT_IDS
    modality = OutputModality(options.output_modality).value
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, SESSION_TTL_S)) as demo:
        gr.Markdown(
            f"# {title}\nSpeak or type a question. The model hears your speech as units, answers in text and "
            "speech, and plays the spoken answer here.",
            elem_id="speechgpt-header",
        )
        session = gr.State(ChatSession(), time_to_live=SESSION_TTL_S)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    elem_id=ids["chatbot"],
                    height=520,
                    placeholder="Ask by recording, uploading a file or typing; the answer appears here.",
                    feedback_options=None,
                    buttons=["copy"],
                )
            with gr.Column(scale=2, min_width=320):
                question_audio = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    label="Ask by voice: upload a file or record",
                    elem_id=ids["question_audio"],
                )
                question_text = gr.Textbox(
                    label="…or type (Enter sends)",
                    placeholder="What is the capital of France?",
                    lines=1,  # one line: Enter sends (a taller box would take Enter as a new line)
                    max_lines=6,
                    elem_id=ids["question_text"],
                )
                reply_as = gr.Radio(
                    choices=list(REPLY_AS_CHOICES), value=modality, label="Reply in", elem_id=ids["reply_as"]
                )
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id=ids["send"])
                    clear = gr.Button("Clear", variant="secondary", elem_id=ids["clear"])
                reply_audio = gr.Audio(
                    label="Spoken answer",
                    type="filepath",
                    interactive=False,
                    autoplay=True,
                    elem_id=ids["reply_audio"],
                    buttons=["download"],
                )
                with gr.Accordion("Generation settings", open=False, elem_id=ids["settings"]):
                    max_new_tokens = gr.Slider(
                        1,
                        max_new_tokens_limit,
                        value=options.max_new_tokens,
                        step=1,
                        label="Max new tokens",
                        info="A spoken answer takes about 25-50 tokens per second of speech.",
                    )
                    temperature = gr.Slider(
                        0.0, 2.0, value=options.temperature, step=0.05, label="Temperature", info="0 = greedy"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=options.top_p, step=0.05, label="Top-p")
                    seed = gr.Number(value=options.seed, precision=0, minimum=0, label="Seed (empty = random)")
        outputs = [chatbot, reply_audio, question_text, question_audio, session]
        gr.on(
            triggers=[send.click, question_text.submit],
            fn=chat.respond,
            inputs=[question_audio, question_text, session, reply_as, max_new_tokens, temperature, top_p, seed],
            outputs=outputs,
            api_name="respond",
            concurrency_limit=1,  # one SpeechGPT, one answer at a time
            concurrency_id="speechgpt",
        )
        clear.click(chat.reset, inputs=None, outputs=outputs, api_name="reset", queue=False)
        # The chat's own trash icon must forget the conversation too, not only hide it.
        chatbot.clear(chat.reset, inputs=None, outputs=outputs, api_visibility="private", queue=False)
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def launch_demo(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    prevent_thread_lock: bool = False,
    quiet: bool = True,
) -> str:
    """Serve the page (never through Gradio's public share links) with its look: system fonts, our CSS.

    Args:
        demo: From :func:`build_demo`.
        host: Address to listen on.
        port: TCP port; None lets Gradio pick a free one from 7860 up.
        prevent_thread_lock: Return at once and serve from a background thread (tests, notebooks).
        quiet: Leave out Gradio's own banner on stdout.

    Returns:
        The page's local URL.

    Raises:
        OSError: the port is taken.
    """
    import gradio as gr

    # System fonts: the default theme would fetch Google Fonts, which an offline machine cannot reach.
    fonts = ("ui-sans-serif", "system-ui", "sans-serif")
    mono = ("ui-monospace", "monospace")
    theme = gr.themes.Default(primary_hue="indigo", font=fonts, font_mono=mono)
    _, local_url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        theme=theme,
        css=CSS,
        ssr_mode=False,
        max_file_size=MAX_UPLOAD,
        footer_links=["api", "settings"],
    )
    return local_url
