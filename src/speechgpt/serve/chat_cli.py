"""``speechgpt chat``: talk to a bundle from the terminal, one question at a time or interactively."""

from __future__ import annotations

import enum
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from speechgpt.audio import AudioError
from speechgpt.jsonl import dumps_record
from speechgpt.serve._console import EXIT_INTERRUPTED, EXIT_PARTIAL_FAILURE, fail, stderr, user_errors, warn

if TYPE_CHECKING:
    from speechgpt.infer import GenerationOptions, Reply, SpeechGPT

# What can go wrong because of what the user gave (bundle, audio, options): one line, no traceback.
USER_ERRORS = (AudioError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError)
DEFAULT_SAVE_DIR = Path("speechgpt-replies")
REPLY_NAME = "reply-{:03d}.wav"
_REPLY_INDEX = re.compile(r"reply-(\d+)\.wav")
INTERACTIVE_HELP = """\
Type a question and press Enter, or:
  /audio PATH   ask with a recording (wav, flac, ogg...)
  /reset        forget the conversation so far
  /help         show this help
  /quit         leave (Ctrl-D works too)"""


class ReplyAs(str, enum.Enum):
    auto = "auto"
    text = "text"
    speech = "speech"


class DType(str, enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def _load(bundle: Path, device: str | None, dtype: DType | None) -> SpeechGPT:
    from speechgpt.infer import SpeechGPT
    from speechgpt.serve.vocode_cli import _check_device

    with user_errors(*USER_ERRORS):
        _check_device(device)
        with stderr.status(f"loading {bundle}"):
            return SpeechGPT.from_pretrained(bundle, device=device, dtype=dtype.value if dtype else None)


def _next_reply_path(save_dir: Path) -> Path:
    """The first ``reply-NNN.wav`` after those already in ``save_dir`` (earlier sessions are never overwritten)."""
    taken = [int(m.group(1)) for p in save_dir.glob("reply-*.wav") if (m := _REPLY_INDEX.fullmatch(p.name))]
    return save_dir / REPLY_NAME.format(max(taken, default=0) + 1)


def _save(reply: Reply, path: Path) -> Path:
    from speechgpt.audio import write_wav

    return write_wav(path, reply.waveform, sample_rate=reply.sample_rate)


def chat_command(
    bundle: Annotated[
        Path,
        typer.Option("--bundle", "-b", help="Bundle folder (with `speechgpt.json`).", show_default=False),
    ],
    text: Annotated[
        str | None, typer.Option("--text", "-t", help="Ask one typed question and exit.", show_default=False)
    ] = None,
    audio: Annotated[
        Path | None,
        typer.Option("--audio", "-a", help="Ask one spoken question (an audio file) and exit.", show_default=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="One-shot: write the spoken answer to this WAV.", show_default=False),
    ] = None,
    save_dir: Annotated[
        Path, typer.Option("--save-dir", help="Interactive: folder for the reply WAVs (reply-001.wav, ...).")
    ] = DEFAULT_SAVE_DIR,
    reply_as: Annotated[
        ReplyAs,
        typer.Option("--reply-as", help="Answer in text, speech, or as the model chooses (auto: in kind)."),
    ] = ReplyAs.auto,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Most tokens per answer (speech: ~25-50 per second).", min=1)
    ] = 1024,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature; 0 = greedy (deterministic).", min=0.0)
    ] = 0.8,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass, in (0, 1].")] = 0.9,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for sampling (same seed, same answer).", min=0)
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0 (default: cuda when present).")
    ] = None,
    dtype: Annotated[
        DType | None, typer.Option("--dtype", help="LM weights' dtype (default: float32).", show_default=False)
    ] = None,
) -> None:
    """Talk to SpeechGPT: type or speak a question, read and hear the answer.

    With `--text` or `--audio`, one question is answered and a JSON line
    `{"transcript", "text", "units", "audio"}` is written to stdout (`audio` is the `-o` WAV, or null).
    Without them, an interactive session starts: type questions, or `/audio PATH` to ask with a recording;
    answers appear as they are written, spoken replies are saved in `--save-dir`. `/help` lists the commands.

    Examples:

      `speechgpt chat --bundle runs/demo/bundle --audio question.wav -o reply.wav`

      `speechgpt chat --bundle runs/demo/bundle --text "What is the capital of France?" --reply-as text`

      `speechgpt chat --bundle runs/demo/bundle`
    """
    from speechgpt.infer import GenerationOptions

    if text is not None and audio is not None:
        fail("give one question: --text or --audio, not both")
    if output is not None and text is None and audio is None:
        fail("-o/--output is for one-shot use (with --text or --audio); interactive replies go to --save-dir")
    if text is not None and not text.strip():
        fail("--text is empty")
    if audio is not None and not audio.is_file():
        fail(f"{audio}: no such audio file")
    with user_errors(*USER_ERRORS):
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            output_modality=reply_as.value,
        )
    model = _load(bundle, device, dtype)
    if text is None and audio is None:
        _interactive(model, options, save_dir)
        return
    content: Any = text if text is not None else {"type": "audio", "audio": audio}
    with user_errors(*USER_ERRORS):
        reply = model.chat([{"role": "user", "content": content}], options)
    written = None
    if output is not None and reply.waveform is not None:
        with user_errors(*USER_ERRORS):
            written = str(_save(reply, output))
    record = {"transcript": reply.transcript, "text": reply.text, "units": reply.units, "audio": written}
    sys.stdout.write(dumps_record(record) + "\n")
    sys.stdout.flush()
    if output is not None and written is None:
        warn(f"the answer has no speech, so {output} was not written (try --reply-as speech)")
        raise typer.Exit(EXIT_PARTIAL_FAILURE)


def _interactive(model: SpeechGPT, options: GenerationOptions, save_dir: Path) -> None:
    """The prompt loop; a bad question (missing file, unreadable audio) is reported and the session goes on."""
    stderr.print(f"SpeechGPT is listening. {INTERACTIVE_HELP}")
    history: list[Any] = []
    try:
        while True:
            stderr.print("[bold]you>[/] ", end="", markup=True)
            line = sys.stdin.readline()
            if not line:  # end of input
                stderr.print()
                return
            line = line.strip()
            if not line:
                continue
            command, _, argument = line.partition(" ")
            if command in ("/quit", "/exit"):
                return
            if command == "/help":
                stderr.print(INTERACTIVE_HELP)
                continue
            if command == "/reset":
                history.clear()
                stderr.print("conversation cleared")
                continue
            if command == "/audio":
                path = Path(argument.strip()).expanduser()
                if not argument.strip():
                    stderr.print("[red]error:[/] /audio needs a file path", markup=True)
                    continue
                if not path.is_file():
                    stderr.print(f"[red]error:[/] {path}: no such audio file", markup=True, highlight=False)
                    continue
                content: Any = {"type": "audio", "audio": path}
            elif command.startswith("/") and re.fullmatch(r"/[a-z]+", command):
                stderr.print(f"[red]error:[/] unknown command {command}; /help lists them", markup=True)
                continue
            else:
                content = line
            message = {"role": "user", "content": content}
            reply = _answer(model, [*history, message], options)
            if reply is None:
                continue
            history += [message, reply]
            if reply.waveform is not None:
                path = _save(reply, _next_reply_path(save_dir))
                stderr.print(f"[dim]saved {path} ({reply.duration:.1f} s)[/]", markup=True, highlight=False)
    except KeyboardInterrupt:
        stderr.print("\ninterrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _answer(model: SpeechGPT, messages: list[Any], options: GenerationOptions) -> Reply | None:
    """Stream one answer to stdout; None (with the reason on stderr) when the question could not be read."""
    from speechgpt.infer import Done, TextDelta, Transcript

    try:
        events = model.chat_stream(messages, options)
    except USER_ERRORS as e:
        stderr.print(f"[red]error:[/] {e}", markup=True, highlight=False)
        return None
    started = False
    for event in events:
        if isinstance(event, Transcript):
            sys.stdout.write(f"(heard: {event.text})\n")
        elif isinstance(event, TextDelta):
            if not started:
                sys.stdout.write("SpeechGPT: ")
                started = True
            sys.stdout.write(event.text)
        elif isinstance(event, Done):
            if not started:
                sys.stdout.write("SpeechGPT: " + ("(spoken answer)" if event.reply.units else "(no answer)"))
            sys.stdout.write("\n")
            sys.stdout.flush()
            return event.reply
        sys.stdout.flush()
    return None  # pragma: no cover - chat_stream always ends with Done
