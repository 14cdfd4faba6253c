"""The SpeechGPT pipeline: a spoken or written turn in; transcript, text answer, units and audio out.

One turn runs the paper's chain of modality: the user's audio becomes units (speech tokenizer), the conversation
becomes prompt ids (:class:`~speechgpt.lm.PromptEncoder`, which never lets typed text pose as control or unit
tokens), the LM writes ``{transcript}; [ta] {answer}; [ua] <sosp>...<eosp><eoa>``, and the vocoder turns the units
into a 16 kHz waveform.

Generation is our own incremental loop over the KV cache (not ``model.generate``), so that :meth:`SpeechGPT.chat`
and :meth:`SpeechGPT.chat_stream` run exactly the same steps: with the same seed they produce the same tokens, and
streaming differs only in when the vocoder runs. While streaming, unit chunks go to the vocoder's
:class:`~speechgpt.vocoder.StreamingSynthesizer` as the LM writes them, so audio starts long before the answer ends.
The events and the step-by-step helpers of streaming live in :mod:`speechgpt.infer._streaming`.

Whatever the model writes, nothing crashes and no control tag reaches ``Reply.text`` or ``Reply.transcript``:
text comes from :func:`speechgpt.prompt_format.parse_response`, units are read by token id (the first
``<sosp>`` … ``<eosp>`` span, unterminated spans included), and ids the tokenizer does not know are never sampled.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import torch

from speechgpt.constants import SAMPLE_RATE
from speechgpt.infer._streaming import (
    AnswerText,
    AudioChunk,
    AudioStream,
    Done,
    Event,
    TextDelta,
    Transcript,
    UnitSpan,
    to_numpy,
)
from speechgpt.prompt_format import EOA, EOS, Modality, chain_of_modality_answer, neutralize_user_text
from speechgpt.units.tokenizer import units_to_string

if TYPE_CHECKING:
    from speechgpt.lm import PromptEncoder, SpeechVocab
    from speechgpt.units.tokenizer import SpeechTokenizer
    from speechgpt.vocoder.base import Vocoder

logger = logging.getLogger(__name__)

__all__ = [
    "AudioChunk",
    "Done",
    "Event",
    "GenerationOptions",
    "Message",
    "OutputModality",
    "Reply",
    "SpeechGPT",
    "TextDelta",
    "Transcript",
]

UNITS_CACHE_SIZE = 64
"""Audio turns whose units are remembered, so a multi-turn history is not re-encoded on every call."""
DEFAULT_AUDIO_CHUNK_UNITS = 16
"""Units of the first chunk handed to the streaming vocoder: small, so that audio starts early."""
DEFAULT_MAX_AUDIO_CHUNK_UNITS = 128
"""Largest later chunk: chunks double up to this, since every window re-renders the vocoder's context frames
(measured on the full-size unit HiFi-GAN: 16-unit chunks cost about 2x one-shot synthesis, 128-unit ones little)."""
_END_TAIL_TOKENS = 8
"""Trailing generated tokens decoded to spot ``<eoa>`` when the tokenizer spells it with several tokens."""


class OutputModality(str, enum.Enum):
    """What the answer should be: ``auto`` lets the model choose (it answers in kind), or force text/speech."""

    AUTO = "auto"
    TEXT = "text"
    SPEECH = "speech"


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate one answer; validated once, here.

    Attributes:
        max_new_tokens: Most tokens the LM writes (a spoken answer needs about 25-50 unit tokens per second).
        temperature: Sampling temperature; 0 is greedy decoding (deterministic without a seed).
        top_p: Nucleus sampling: sample among the most likely tokens whose probabilities add up to this.
        seed: Seed of the sampler's own generator (the global RNG is untouched); None draws a fresh one.
        output_modality: ``auto`` (no cue: the released behaviour), ``text`` or ``speech`` (adds the cue the
            chain-of-modality data uses, and with ``text`` no audio is synthesized).
        audio_chunk_units: Units in the first chunk handed to the streaming vocoder (sets the time to first audio).
        max_audio_chunk_units: Later chunks double in size up to this (less re-rendered context, same audio).
    """

    max_new_tokens: int = 1024
    temperature: float = 0.8
    top_p: float = 0.9
    seed: int | None = None
    output_modality: OutputModality | str = OutputModality.AUTO
    audio_chunk_units: int = DEFAULT_AUDIO_CHUNK_UNITS
    max_audio_chunk_units: int = DEFAULT_MAX_AUDIO_CHUNK_UNITS

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "audio_chunk_units", "max_audio_chunk_units"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_audio_chunk_units < self.audio_chunk_units:
            raise ValueError(
                f"max_audio_chunk_units ({self.max_audio_chunk_units}) must be >= audio_chunk_units "
                f"({self.audio_chunk_units})"
            )
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {self.seed!r}")
        try:
            modality = OutputModality(self.output_modality)
        except ValueError:
            valid = [m.value for m in OutputModality]
            raise ValueError(f"output_modality must be one of {valid}, got {self.output_modality!r}") from None
        object.__setattr__(self, "output_modality", modality)


@dataclass(eq=False)  # holds an array: compare fields explicitly
class Reply:
    """One answer of the assistant.

    Attributes:
        transcript: What the model heard in the user's speech ("" for a text question).
        text: The text answer, free of control tags.
        units: The spoken answer's unit ids (empty for a text-only answer).
        waveform: The spoken answer, float32 mono at ``sample_rate``; None when there is no speech.
        sample_rate: Rate of ``waveform``.
        raw: Everything the LM generated, control tags included (for debugging).
        timings: Seconds per stage: ``speech_to_units``, ``prefill``, ``decode``, ``vocoder``, ``total``, and
            ``first_text`` / ``first_audio`` (from the call's start to the first answer text / audio sample).
        finish_reason: ``"stop"`` (the model ended its answer) or ``"length"`` (``max_new_tokens`` reached).
        prompt_tokens: Length of the prompt in tokens.
        completion_tokens: Tokens generated.
    """

    transcript: str
    text: str
    units: list[int]
    waveform: np.ndarray | None
    sample_rate: int = SAMPLE_RATE
    raw: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def role(self) -> str:
        """A reply is an assistant message; it can go straight back into the history passed to ``chat``."""
        return "assistant"

    @property
    def duration(self) -> float:
        """Seconds of speech (0 without a waveform)."""
        return 0.0 if self.waveform is None else len(self.waveform) / self.sample_rate

    def response_text(self) -> str:
        """The canonical response this reply stands for, as it goes back into the prompt in a later turn.

        Built from the parsed parts (neutralized text, units by id) rather than ``raw``, so a malformed generation
        cannot leave stray tags in the history.
        """
        return chain_of_modality_answer(
            input_modality=Modality.SPEECH if self.transcript else Modality.TEXT,
            output_modality=Modality.SPEECH if self.units else Modality.TEXT,
            answer_text=neutralize_user_text(self.text),
            transcript=neutralize_user_text(self.transcript),
            answer_units=units_to_string(self.units),
        )


@dataclass(frozen=True)
class Message:
    """A chat message; plain dicts ``{"role": ..., "content": ...}`` work the same way.

    ``content`` of a user message: a text ``str``; audio as a :class:`~pathlib.Path`, the bytes of an audio file,
    or samples (numpy array / torch tensor at 16 kHz); or one part ``{"type": "text", "text": ...}``,
    ``{"type": "audio", "audio": <path|bytes|array>, "sample_rate": optional}``, ``{"type": "units", "units": [...]}``
    (or a one-element list of such a part). Assistant content is the answer text, or pass the :class:`Reply` itself.
    """

    role: str
    content: Any


MessageLike: TypeAlias = Mapping[str, Any] | Message | Reply | Any


@dataclass
class _UserAudio:
    source: Any
    sample_rate: int | None
    label: str


@dataclass
class _Turn:
    role: str
    text: str = ""
    units: list[int] | None = None
    audio: _UserAudio | None = None


class SpeechGPT:
    """Talk to a SpeechGPT: text or speech in, text and speech out. Load one with :meth:`from_pretrained`.

    Args:
        model: A causal LM over the expanded vocabulary (``forward(input_ids, past_key_values, use_cache)`` returning
            ``logits`` and ``past_key_values``, as every Hugging Face causal LM does).
        tokenizer: Its expanded text tokenizer.
        speech_tokenizer: Audio to units; None if this instance never hears audio.
        vocoder: Units to audio; None if it never speaks.
        units_cache_size: Audio messages whose units are remembered (by content), so that a conversation's earlier
            spoken turns are not re-encoded on every call; 0 turns the cache off.

    One call runs at a time per instance (the model and its cache are shared); servers serialize calls.

    Raises:
        ValueError: the speech tokenizer, LM vocabulary and vocoder disagree on the number of units.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        speech_tokenizer: SpeechTokenizer | None = None,
        vocoder: Vocoder | None = None,
        units_cache_size: int = UNITS_CACHE_SIZE,
    ) -> None:
        from speechgpt.infer.bundle import check_unit_counts
        from speechgpt.lm import PromptEncoder, SpeechVocab

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab: SpeechVocab = SpeechVocab.from_tokenizer(tokenizer)
        self.encoder: PromptEncoder = PromptEncoder(tokenizer, self.vocab)
        self.speech_tokenizer = speech_tokenizer
        self.vocoder = vocoder
        counts = {"LM vocabulary": self.vocab.num_units}
        if speech_tokenizer is not None:
            counts["speech tokenizer"] = speech_tokenizer.num_units
        if vocoder is not None:
            counts["vocoder"] = vocoder.num_units
        check_unit_counts(counts, where="SpeechGPT")
        # [Human] ends the answer too: a model that starts the next human turn would be forging it.
        self._stop_ids = frozenset(int(i) for i in self.encoder.stop_token_ids) | {self.vocab.human_id}
        self._known_ids = len(tokenizer)  # a model with padded embeddings must not emit ids past the tokenizer
        if not isinstance(units_cache_size, int) or units_cache_size < 0:
            raise ValueError(f"units_cache_size must be an int >= 0, got {units_cache_size!r}")
        self.units_cache_size = units_cache_size
        self._units_cache: OrderedDict[tuple, list[int]] = OrderedDict()
        config = getattr(model, "config", None)
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        self._cache_arg, self._logits_arg = _forward_arguments(model)

    @property
    def device(self) -> torch.device:
        """Where the LM runs."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate if self.vocoder is not None else SAMPLE_RATE

    @classmethod
    def from_pretrained(
        cls,
        bundle_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> SpeechGPT:
        """Load a bundle folder (see :mod:`speechgpt.infer.bundle`): speech tokenizer, LM (+ LoRA, merged), vocoder.

        Args:
            bundle_dir: Folder with ``speechgpt.json``.
            device: Where to run; CUDA when present, else CPU, when None.
            dtype: LM dtype (e.g. ``torch.bfloat16`` or ``"bfloat16"``); float32 when None.

        Raises:
            FileNotFoundError: the folder, its manifest or a part is missing.
            BundleError: the manifest is malformed or the parts disagree on the number of units.
        """
        from speechgpt.infer.bundle import MANIFEST_NAME, BundleManifest, check_unit_counts
        from speechgpt.lm import SpeechVocab, load_model
        from speechgpt.units.tokenizer import SpeechTokenizer
        from speechgpt.vocoder.base import load_vocoder

        bundle_dir = Path(bundle_dir)
        manifest = BundleManifest.read(bundle_dir, verify=False)
        manifest.check_files(bundle_dir)
        start = time.perf_counter()
        speech_tokenizer = SpeechTokenizer.from_pretrained(manifest.path(bundle_dir, "tokenizer"), device=device)
        model, tokenizer = load_model(
            manifest.path(bundle_dir, "lm"),
            device=device,
            dtype=dtype,
            lora=manifest.path(bundle_dir, "lora"),
            merge_lora=manifest.lora is not None,
        )
        vocoder = load_vocoder(manifest.path(bundle_dir, "vocoder"), device=device)
        check_unit_counts(
            {
                "manifest": manifest.num_units,
                f"tokenizer k-means ({manifest.tokenizer})": speech_tokenizer.num_units,
                f"LM vocabulary ({manifest.lm})": SpeechVocab.from_tokenizer(tokenizer).num_units,
                f"vocoder ({manifest.vocoder})": vocoder.num_units,
            },
            where=str(bundle_dir / MANIFEST_NAME),
        )
        logger.info("loaded bundle %s in %.1f s", bundle_dir, time.perf_counter() - start)
        return cls(model, tokenizer, speech_tokenizer=speech_tokenizer, vocoder=vocoder)

    # --- public API ----------------------------------------------------------------------------------------------

    def chat(self, messages: Sequence[MessageLike], options: GenerationOptions | None = None) -> Reply:
        """Answer the last user message of a conversation.

        Args:
            messages: The conversation, oldest first, ending with a user message (see :class:`Message`).
            options: Generation options; defaults when None.

        Returns:
            The reply, with the waveform synthesized in one go after generation.

        Raises:
            ValueError: malformed messages (named by index), or a conversation too long for the model.
            AudioError: unreadable, empty or too long audio in a user message.
        """
        for event in self._run(self._prepare(messages, options or GenerationOptions()), stream=False):
            if isinstance(event, Done):
                return event.reply
        raise AssertionError("a turn always ends with Done")  # pragma: no cover

    def chat_stream(self, messages: Sequence[MessageLike], options: GenerationOptions | None = None) -> Iterator[Event]:
        """Like :meth:`chat`, but yield :class:`TextDelta`, :class:`Transcript` and :class:`AudioChunk` events as
        they happen, then :class:`Done` with the full reply.

        Audio is synthesized while units are still being generated, ``options.audio_chunk_units`` at a time. The
        messages are checked (and audio encoded) before the first event; errors are raised then.
        """
        prepared = self._prepare(messages, options or GenerationOptions())  # errors now, not at the first next()
        return self._run(prepared, stream=True)

    # --- messages and prompt -----------------------------------------------------------------------------------

    def _read_messages(self, messages: Sequence[MessageLike]) -> list[_Turn]:
        if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
            raise ValueError(f"messages must be a list of messages, got {type(messages).__name__}")
        turns: list[_Turn] = []
        for index, message in enumerate(messages):
            turn = self._read_message(index, message)
            if turn is None:
                continue
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(
                    f"messages[{index}] is from the {turn.role}, expected the {expected}: user and assistant "
                    "messages must alternate, starting with the user"
                )
            turns.append(turn)
        if not turns or turns[-1].role != "user":
            raise ValueError("messages must end with a user message (the question to answer)")
        return turns

    def _read_message(self, index: int, message: MessageLike) -> _Turn | None:
        where = f"messages[{index}]"
        if isinstance(message, Reply):
            return _Turn("assistant", text=message.response_text())
        if isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
        else:
            role, content = getattr(message, "role", None), getattr(message, "content", None)
        if role == "system":
            logger.info("%s: system messages are ignored (SpeechGPT's meta instruction is fixed)", where)
            return None
        if role == "assistant":
            if isinstance(content, Reply):
                return _Turn("assistant", text=content.response_text())
            text = _text_content(content, where)
            answer = chain_of_modality_answer(
                input_modality=Modality.TEXT, output_modality=Modality.TEXT, answer_text=neutralize_user_text(text)
            )
            return _Turn("assistant", text=answer)
        if role != "user":
            raise ValueError(f"{where}: role must be 'user' or 'assistant' (or 'system', ignored), got {role!r}")
        return self._user_turn(content, where)

    def _user_turn(self, content: Any, where: str) -> _Turn:
        if isinstance(content, list | tuple):
            # Text plus audio is an instruction about the audio ("Transcribe this. This is input: <sosp>...").
            parts = [self._user_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]
            texts = [p for p in parts if p.units is None and p.audio is None]
            speech = [p for p in parts if p.units is not None or p.audio is not None]
            if not parts or len(texts) > 1 or len(speech) > 1:
                raise ValueError(
                    f"{where}: a user message holds one text part, one audio part, or one of each; "
                    f"got {len(texts)} text and {len(speech)} audio part(s)"
                )
            turn = speech[0] if speech else texts[0]
            if speech and texts:
                turn.text = texts[0].text
            return turn
        return self._user_part(content, where)

    def _user_part(self, content: Any, where: str) -> _Turn:
        if isinstance(content, str):
            if not content.strip():
                raise ValueError(f"{where}: the message is empty (no text, no audio)")
            return _Turn("user", text=content)
        if isinstance(content, bytes | bytearray | memoryview):
            return _Turn("user", audio=_UserAudio(bytes(content), None, where))
        if isinstance(content, os.PathLike):
            return _Turn("user", audio=_UserAudio(content, None, os.fspath(content)))
        if isinstance(content, np.ndarray | torch.Tensor):
            return _Turn("user", audio=_UserAudio(content, SAMPLE_RATE, where))
        if isinstance(content, Mapping):
            kind = content.get("type")
            if kind == "text":
                text = content.get("text")
                if not isinstance(text, str):
                    raise ValueError(f"{where}: a text part needs a 'text' string, got {type(text).__name__}")
                return _Turn("user", text=text)
            if kind == "audio":
                source = content.get("audio", content.get("path"))
                if source is None:
                    raise ValueError(f"{where}: an audio part needs 'audio' (a path, file bytes or samples)")
                rate = content.get("sample_rate")
                if rate is None and isinstance(source, np.ndarray | torch.Tensor):
                    rate = SAMPLE_RATE
                if isinstance(source, str):
                    source = Path(source)
                label = os.fspath(source) if isinstance(source, os.PathLike) else where
                if isinstance(source, bytes | bytearray | memoryview):
                    source = bytes(source)
                return _Turn("user", audio=_UserAudio(source, rate, label))
            if kind == "units":
                return _Turn("user", units=self._checked_units(content.get("units"), where))
            raise ValueError(f"{where}: unknown content part type {kind!r}; expected 'text', 'audio' or 'units'")
        raise ValueError(
            f"{where}: user content must be text (str), audio (Path, bytes, numpy array, torch tensor) or a part "
            f"dict, got {type(content).__name__}"
        )

    def _checked_units(self, units: Any, where: str) -> list[int]:
        if not isinstance(units, Sequence | np.ndarray | torch.Tensor) or isinstance(units, str):
            raise ValueError(f"{where}: 'units' must be a list of unit ids, got {type(units).__name__}")
        values = units.tolist() if isinstance(units, np.ndarray | torch.Tensor) else list(units)
        if not values:
            raise ValueError(f"{where}: 'units' is empty")
        for position, value in enumerate(values):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab.num_units:
                raise ValueError(
                    f"{where}: unit {value!r} at position {position} is not an id in 0..{self.vocab.num_units - 1}"
                )
        return values

    def _encode_audio(self, audio: _UserAudio) -> list[int]:
        if self.speech_tokenizer is None:
            raise ValueError(f"{audio.label}: this SpeechGPT has no speech tokenizer, so it cannot take audio")
        key = _audio_key(audio) if self.units_cache_size else None
        if key is not None and key in self._units_cache:
            self._units_cache.move_to_end(key)
            return self._units_cache[key]
        units = self.speech_tokenizer.encode(audio.source, sample_rate=audio.sample_rate, name=audio.label)
        ids = units.ids.tolist()
        if key is not None:
            self._units_cache[key] = ids
            while len(self._units_cache) > self.units_cache_size:
                self._units_cache.popitem(last=False)
        return ids

    def _prompt(self, turns: list[_Turn], options: GenerationOptions) -> tuple[list[int], int]:
        """Prompt ids, and how many tokens may be generated; the oldest exchanges are dropped if it is too long."""
        from speechgpt.lm import Turn

        lm_turns = [Turn(role=t.role, text=t.text, units=t.units) for t in turns]
        modality = {OutputModality.TEXT: Modality.TEXT, OutputModality.SPEECH: Modality.SPEECH}.get(
            OutputModality(options.output_modality)
        )
        while True:
            prompt = list(self.encoder.build_prompt(lm_turns, output_modality=modality))
            if self.max_positions is None:
                return prompt, options.max_new_tokens
            room = self.max_positions - len(prompt)
            if room >= min(options.max_new_tokens, self.max_positions // 4) or len(lm_turns) == 1:
                break
            # Drop the oldest exchange (up to the next user turn) and try again.
            cut = next((i for i in range(1, len(lm_turns)) if lm_turns[i].role == "user"), len(lm_turns) - 1)
            logger.warning(
                "conversation too long for the model's %d positions: dropped its oldest turn", self.max_positions
            )
            lm_turns = lm_turns[cut:]
        if room < 1:
            raise ValueError(
                f"the question is {len(prompt)} tokens with the instruction; the model reads at most "
                f"{self.max_positions} (shorten the question or the audio)"
            )
        return prompt, min(options.max_new_tokens, room)

    # --- generation --------------------------------------------------------------------------------------------

    def _pick(self, logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> int:
        logits = logits.to(torch.float32, copy=True)  # masked below: never write into the model's output
        if logits.shape[-1] > self._known_ids:
            logits[self._known_ids :] = -math.inf
        if options.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / options.temperature, dim=-1)
        if options.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest set whose mass reaches top_p (the most likely token always stays).
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= options.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _tokens(
        self, prompt: list[int], max_new_tokens: int, options: GenerationOptions, timings: dict[str, float]
    ) -> Iterator[int]:
        """Generated ids one at a time (the KV cache carries the prefix); stops only at ``max_new_tokens``."""
        device = self.device
        generator = None
        if options.temperature > 0:
            generator = torch.Generator(device=device)
            if options.seed is None:
                generator.seed()
            else:
                generator.manual_seed(options.seed)
        inputs = torch.tensor([prompt], dtype=torch.long, device=device)
        extra: dict[str, Any] = {self._logits_arg: 1} if self._logits_arg else {}
        cache = None
        for step in range(max_new_tokens):
            start = time.perf_counter()
            with torch.inference_mode():
                out = self.model(input_ids=inputs, use_cache=True, **{self._cache_arg: cache}, **extra)
                cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                token = self._pick(out.logits[0, -1], options, generator)
            elapsed = time.perf_counter() - start
            timings["prefill" if step == 0 else "decode"] += elapsed
            yield token
            inputs = torch.tensor([[token]], dtype=torch.long, device=device)

    def _decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids exactly as ``decode_response`` reads it (speech tokens as strings, no bos/pad)."""
        return self.encoder.decode(ids)

    def _raw(self, ids: Sequence[int]) -> str:
        """Everything generated, special tokens included (ids the tokenizer does not know are left out)."""
        known = [i for i in ids if 0 <= i < self._known_ids]
        return self.tokenizer.decode(known, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _prepare(self, messages: Sequence[MessageLike], options: GenerationOptions) -> _Prepared:
        """Everything before generation: read the messages, encode their audio, build the prompt."""
        start = time.perf_counter()
        timings = dict.fromkeys(("speech_to_units", "prefill", "decode", "vocoder"), 0.0)
        turns = self._read_messages(messages)
        for turn in turns:
            if turn.audio is not None:
                t0 = time.perf_counter()
                turn.units = self._encode_audio(turn.audio)
                timings["speech_to_units"] += time.perf_counter() - t0
        prompt, max_new_tokens = self._prompt(turns, options)
        return _Prepared(start, timings, turns[-1].units is not None, prompt, max_new_tokens, options)

    def _run(self, prepared: _Prepared, *, stream: bool) -> Iterator[Event]:
        """Generate, parse and voice one answer; with ``stream`` the vocoder and the text parse run as tokens come."""
        start, timings, options = prepared.start, prepared.timings, prepared.options
        speak = self.vocoder is not None and options.output_modality != OutputModality.TEXT
        audio = None
        if speak and stream:
            audio = AudioStream(self.vocoder, options.audio_chunk_units, options.max_audio_chunk_units, timings)
        text_stream = AnswerText(prepared.speech_input) if stream else None
        span = UnitSpan(self.vocab)
        generated: list[int] = []
        finish_reason = "length"
        for token in self._tokens(prepared.prompt, prepared.max_new_tokens, options, timings):
            generated.append(token)
            if token in self._stop_ids:
                finish_reason = "stop"
                break
            new_units = span.add(token)
            if audio is not None and new_units:
                for samples in audio.push(new_units):
                    timings.setdefault("first_audio", time.perf_counter() - start)
                    yield AudioChunk(samples, self.sample_rate)
            # <eoa> (and <eos>) spelled with ordinary tokens end the answer too; the same rule in both modes keeps
            # chat and chat_stream on the same tokens.
            if not self.vocab.is_speech_token(token):
                tail = self._decode(generated[-_END_TAIL_TOKENS:])
                if EOA in tail or EOS in tail:
                    finish_reason = "stop"
                    break
            if text_stream is not None and not span.inside:  # inside a unit span the answer text cannot change
                for event in text_stream.update(self._decode(generated)):
                    if isinstance(event, TextDelta):
                        timings.setdefault("first_text", time.perf_counter() - start)
                    yield event
        parsed = self.encoder.decode_response(generated)
        transcript = parsed.transcript if prepared.speech_input else ""
        waveform = None
        if audio is not None:
            for samples in audio.finish():
                timings.setdefault("first_audio", time.perf_counter() - start)
                yield AudioChunk(samples, self.sample_rate)
            waveform = audio.waveform()
        elif speak and span.units:
            t0 = time.perf_counter()
            with torch.inference_mode():
                waveform = to_numpy(self.vocoder.synthesize(span.units))
            timings["vocoder"] += time.perf_counter() - t0
        if text_stream is not None:
            for event in text_stream.flush(transcript, parsed.text):
                if isinstance(event, TextDelta):
                    timings.setdefault("first_text", time.perf_counter() - start)
                yield event
        timings["total"] = time.perf_counter() - start
        timings.setdefault("first_text", timings["total"])
        if waveform is not None:
            timings.setdefault("first_audio", timings["total"])
        if options.output_modality == OutputModality.SPEECH and waveform is None:
            logger.warning("speech was asked for but the model wrote no units; returning the text answer only")
        reply = Reply(
            transcript=transcript,
            text=parsed.text,
            units=list(span.units),
            waveform=waveform,
            sample_rate=self.sample_rate,
            raw=self._raw(generated),
            timings=timings,
            finish_reason=finish_reason,
            prompt_tokens=len(prepared.prompt),
            completion_tokens=len(generated),
        )
        yield Done(reply)


@dataclass
class _Prepared:
    start: float
    timings: dict[str, float]
    speech_input: bool
    prompt: list[int]
    max_new_tokens: int
    options: GenerationOptions


# --- helpers ------------------------------------------------------------------------------------------------------


def _text_content(content: Any, where: str) -> str:
    """Text of an assistant message: a string, a text part, or a list of text parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list | tuple) else [content]
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise ValueError(f"{where}: assistant content must be text (or the Reply itself), got {part!r:.80}")
    return " ".join(texts)


def _audio_key(audio: _UserAudio) -> tuple | None:
    """A cache key that changes whenever the audio does (content hash, or path + size + mtime)."""
    source = audio.source
    if isinstance(source, bytes):
        return ("bytes", hashlib.sha1(source).hexdigest(), audio.sample_rate)
    if isinstance(source, np.ndarray | torch.Tensor):
        array = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else source
        digest = hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()
        return ("array", digest, str(array.dtype), array.shape, audio.sample_rate)
    if isinstance(source, os.PathLike):
        try:
            stat = Path(source).stat()
        except OSError:
            return None  # let the tokenizer report it
        return ("path", str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns, audio.sample_rate)
    return None


def _forward_arguments(model: torch.nn.Module) -> tuple[str, str | None]:
    """Names of the KV-cache argument (``cache`` in recent transformers, ``past_key_values`` before) and of the
    "logits of the last positions only" argument (None if the model has none) of ``model.forward``."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values", None
    cache = "cache" if "cache" in parameters else "past_key_values"
    logits = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in parameters), None)
    return cache, logits
