"""Synthetic speech: a small TTS interface and an in-process espeak-ng engine behind it.

The embedded demo needs many short utterances in several voices, fast and reproducibly, without a system install
or a download: the ``espeakng-loader`` wheel ships libespeak-ng and its voice data, and :class:`EspeakEngine`
drives the library through ``ctypes`` in synchronous mode (samples arrive in a callback in the calling thread).
Anything else that turns text into 16 kHz float32 audio (a user's own model) fits :class:`TTSEngine` and can be
used wherever an engine is taken, :func:`synthesize_many` included.

libespeak-ng keeps global state (one current voice, one callback, one set of parameters), so every call into it
is serialised by one process-wide lock: the engine is thread-safe but not thread-parallel. For parallelism use
processes (:func:`synthesize_many` with ``num_workers > 0``); each worker process builds its own engine.
"""

from __future__ import annotations

import ctypes
import difflib
import logging
import os
import struct
import threading
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from speechgpt.audio import load_audio
from speechgpt.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 80, 450
"""Speaking rates (words per minute) that espeak-ng honours (``espeakRATE_MINIMUM`` / ``espeakRATE_MAXIMUM``)."""
DEFAULT_RATE = 175
"""espeak-ng's default speaking rate (words per minute)."""
MAX_WORD_GAP = 100
"""Largest extra pause between words we accept, in 10 ms units (1 s); longer gaps are a mistake, not a voice."""
ENGLISH_VOICES = ("en-us", "en-us+f3", "en+m3", "en+f2", "en-gb-x-rp+m1", "en+f4")
"""A few English espeak-ng voices (language + variant) that sound clearly different from each other."""
RANDOM_SEED = 0
"""Seed of libespeak-ng's random generator, reset before every utterance (with its other state)."""
MAX_TEXT_CHARS = 10_000
"""Longest text accepted in one call, so one stray document cannot block the process-wide lock for minutes."""

# libespeak-ng enums (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesize in the calling thread, samples go to the callback
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7  # espeak_PARAMETER
_DEFAULT_VOLUME = 100
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
# Static variables of libespeak-ng's waveform generator that outlive an utterance (pitch-flutter phase, wave
# phase, gain control, echo buffer, ...): they make the next utterance depend on the previous ones, and no API
# resets them. All are plain numbers or sample buffers (no pointers), so restoring their values as they were right
# after initialisation is memory-safe and gives every utterance the state of a fresh process.
_WAVEGEN_STATE = frozenset(
    [
        "Flutter_ix",
        "h_switch_sign",
        "agc",
        "amplitude2",
        "cycle_count",
        "maxh",
        "maxh2",
        "wavephase",
        "phaseinc",
        "cycle_samples",
        "samplecount",
        "samplecount_start",
        "end_wave",
        "nsamples",
        "echo_head",
        "echo_tail",
        "echo_complete",
        "echo_buf",
        "glotlast",
        "noise",
        "time_count",
        "resume",
        "n_samples",
    ]
)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    """``espeak_VOICE`` as returned by ``espeak_ListVoices``."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated name) pairs, ended by a 0 priority
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class VoiceSettings:
    """How an utterance is spoken; hashable, so it can key caches and be sent to worker processes.

    Attributes:
        voice: espeak-ng voice: a language name, optionally with a variant after ``+`` (``"en-us"``, ``"en+f3"``).
        rate: Speaking rate in words per minute, 80..450.
        pitch: Base pitch, 0..100 (50 is the voice's normal pitch).
        pitch_range: Pitch variation (intonation), 0..100; 0 is monotone.
        word_gap: Extra pause between words in 10 ms units, 0..100.
    """

    voice: str = "en-us"
    rate: int = DEFAULT_RATE
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.voice, str) or not self.voice.strip():
            raise ValueError(f"voice must be a non-empty string such as 'en-us' or 'en+f3', got {self.voice!r}")
        if self.voice != self.voice.strip() or any(unicodedata.category(c) == "Cc" for c in self.voice):
            raise ValueError(f"voice {self.voice!r} has surrounding whitespace or control characters")
        if self.voice.count("+") > 1 or self.voice.startswith("+") or self.voice.endswith("+"):
            raise ValueError(f"voice {self.voice!r} must be 'language' or 'language+variant'")
        for field, low, high in (
            ("rate", MIN_RATE, MAX_RATE),
            ("pitch", 0, 100),
            ("pitch_range", 0, 100),
            ("word_gap", 0, MAX_WORD_GAP),
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{field} must be an int in [{low}, {high}], got {value!r}")

    @property
    def language(self) -> str:
        """The voice without its variant (``"en"`` for ``"en+f3"``)."""
        return self.voice.partition("+")[0]

    @property
    def variant(self) -> str | None:
        """The variant after ``+``, or None."""
        return self.voice.partition("+")[2] or None


@runtime_checkable
class TTSEngine(Protocol):
    """Anything that speaks text: 1-D float32 audio at ``sample_rate`` (16 kHz for use in this package)."""

    sample_rate: int

    def synthesize(self, text: str, voice: VoiceSettings | None = None) -> np.ndarray:
        """Speak ``text`` with ``voice`` (the engine's default when None)."""
        ...


def clean_text(text: str) -> str:
    """Text as handed to a synthesizer: control characters become spaces, runs of whitespace collapse.

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: Nothing speakable is left, or the text is longer than :data:`MAX_TEXT_CHARS`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(text)} characters, more than the {MAX_TEXT_CHARS} accepted in one call")
    cleaned = " ".join("".join(" " if unicodedata.category(c) in ("Cc", "Cs") else c for c in text).split())
    if not cleaned:
        raise ValueError(f"text is empty or only whitespace/control characters: {text[:40]!r}")
    return cleaned


class _Espeak:
    """The loaded library: one per process, since libespeak-ng can be initialised only once."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise ImportError("EspeakEngine needs the 'espeakng-loader' package (pip install espeakng-loader)") from e
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        # Older builds lack the seed setter; then only the restored state (below) keeps output repeatable.
        self.set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self.set_seed is not None:
            self.set_seed.restype = None
            self.set_seed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes, including the terminating NUL
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique identifier (unused)
            ctypes.c_void_p,  # user data (unused)
        ]
        data_path = espeakng_loader.get_data_path()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data at {data_path}")
        self.lib = lib
        self.native_rate = int(rate)
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # kept alive here: the C side holds only a raw pointer
        lib.espeak_SetSynthCallback(self.callback)
        self.state = self._find_state(espeakng_loader.get_library_path())
        self.snapshot = [ctypes.string_at(address, size) for address, size in self.state]
        self.languages = self._list_languages()
        variant_dir = Path(data_path) / "voices" / "!v"
        self.variants = sorted(p.name for p in variant_dir.iterdir() if p.is_file()) if variant_dir.is_dir() else []
        logger.debug(
            "libespeak-ng ready: %d Hz, %d languages, %d variants", rate, len(self.languages), len(self.variants)
        )

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.c_void_p) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = go on synthesizing

    def _find_state(self, path: str) -> list[tuple[int, int]]:
        """Addresses and sizes of the :data:`_WAVEGEN_STATE` variables, from the library's ELF symbol table."""
        try:
            symbols = _elf_objects(Path(path))
            base = ctypes.cast(self.lib.espeak_Synth, ctypes.c_void_p).value - symbols["espeak_Synth"][0]
        except (OSError, ValueError, KeyError, struct.error) as e:
            logger.warning("cannot locate libespeak-ng's synthesis state (%s); output depends on earlier calls", e)
            return []
        found = {name.partition(".")[0]: value for name, value in symbols.items()}
        missing = sorted(_WAVEGEN_STATE - found.keys())
        if missing:
            logger.warning("libespeak-ng lacks state symbols %s; output may depend on earlier calls", missing)
        return [
            (base + offset, size)
            for name, (offset, size) in symbols.items()
            if name.partition(".")[0] in _WAVEGEN_STATE
        ]

    def reset(self) -> None:
        """Put the waveform generator back into its just-initialised state (call with ``_LOCK`` held)."""
        for (address, size), saved in zip(self.state, self.snapshot, strict=True):
            ctypes.memmove(address, saved, size)
        if self.set_seed is not None:
            self.set_seed(RANDOM_SEED)

    def _list_languages(self) -> list[str]:
        voices = self.lib.espeak_ListVoices(None)
        names: set[str] = set()
        index = 0
        while voices[index]:
            address = voices[index].contents.languages
            while address and ctypes.c_ubyte.from_address(address).value != 0:  # priority byte, then the name
                name = ctypes.string_at(address + 1)
                names.add(name.decode("utf-8", "replace"))
                address += len(name) + 2
            index += 1
        return sorted(names)


def _elf_objects(path: Path) -> dict[str, tuple[int, int]]:
    """``{name: (offset, size)}`` of the data objects (and ``espeak_Synth``) in a 64-bit little-endian ELF file.

    Raises:
        ValueError: Not such an ELF file, or it has no symbol table (stripped).
    """
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    (section_offset,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    # Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * entry_size) for i in range(count)]
    objects: dict[str, tuple[int, int]] = {}
    for section in sections:
        if section[1] != 2:  # SHT_SYMTAB (the full table, which keeps static variables)
            continue
        strings = sections[section[6]][4]
        for start in range(section[4], section[4] + section[5], 24):  # Elf64_Sym
            name, info, _, _, value, size = struct.unpack_from("<IBBHQQ", data, start)
            kind = info & 0xF  # 1 = STT_OBJECT, 2 = STT_FUNC
            if size > 0 and kind in (1, 2):
                label = data[strings + name : data.index(b"\0", strings + name)].decode("ascii", "replace")
                if kind == 1 or label == "espeak_Synth":
                    objects[label] = (value, size)
    if "espeak_Synth" not in objects:
        raise ValueError(f"{path} has no symbol table (stripped)")
    return objects


_LOCK = threading.Lock()
"""Serialises every use of libespeak-ng's global state in this process."""
_LIBRARY: _Espeak | None = None


def _reset_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a forked child may inherit the lock held by a parent thread that does not exist here


def _library() -> _Espeak:
    """The process's libespeak-ng, loaded on first use (never at import). Call with ``_LOCK`` held."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _Espeak()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_reset_after_fork)
    return _LIBRARY


class EspeakEngine:
    """espeak-ng in-process: deterministic 16 kHz float32 speech for the embedded speech world.

    Thread-safe by serialising calls on a process-wide lock (libespeak-ng has global state); use processes, e.g.
    :func:`synthesize_many`, for parallel synthesis. The same text and settings give bit-identical samples.

    Args:
        default: Settings used when :meth:`synthesize` gets none.

    Raises:
        ValueError: ``default`` names a voice espeak-ng does not have.
    """

    sample_rate: int = SAMPLE_RATE

    def __init__(self, default: VoiceSettings | None = None) -> None:
        self.default = default if default is not None else VoiceSettings()
        with _LOCK:
            _library()
        self.check_voice(self.default.voice)

    def available_voices(self) -> list[str]:
        """Language voices espeak-ng knows (``"en"``, ``"en-us"``, ``"de"``, ...); add ``+variant`` for others."""
        with _LOCK:
            return list(_library().languages)

    def available_variants(self) -> list[str]:
        """Voice variants (``"f3"``, ``"m3"``, ``"klatt"``, ...) that may follow ``+`` in a voice name."""
        with _LOCK:
            return list(_library().variants)

    def check_voice(self, voice: str) -> None:
        """Raise a ValueError naming ``voice`` and some valid ones when espeak-ng does not have it.

        The variant is checked against the data files, because libespeak-ng silently ignores unknown variants.
        """
        settings = VoiceSettings(voice=voice)
        languages, variants = self.available_voices(), self.available_variants()
        if settings.language not in languages:
            close = difflib.get_close_matches(settings.language, languages, n=5, cutoff=0.5)
            examples = close or [v for v in ("en", "en-us", "en-gb", "de", "fr") if v in languages]
            raise ValueError(
                f"unknown espeak voice {voice!r}: no language {settings.language!r}; "
                f"try one of {examples} ({len(languages)} available, see EspeakEngine.available_voices())"
            )
        if settings.variant is not None and settings.variant not in variants:
            close = difflib.get_close_matches(settings.variant, variants, n=5, cutoff=0.5) or variants[:5]
            raise ValueError(
                f"unknown espeak voice {voice!r}: no variant {settings.variant!r}; "
                f"try one of {close} ({len(variants)} available, see EspeakEngine.available_variants())"
            )

    def synthesize(self, text: str, voice: VoiceSettings | None = None) -> np.ndarray:
        """Speak ``text``; control characters are dropped and whitespace is collapsed first.

        Args:
            text: Text in the voice's language.
            voice: Settings; the engine's default when None.

        Returns:
            1-D float32 waveform at :data:`SAMPLE_RATE`, in [-1, 1].

        Raises:
            ValueError: Empty text, an unknown voice, or synthesis that produced no audio.
            RuntimeError: libespeak-ng reported an error.
        """
        settings = voice if voice is not None else self.default
        if not isinstance(settings, VoiceSettings):
            raise TypeError(f"voice must be a VoiceSettings or None, got {type(settings).__name__}")
        cleaned = clean_text(text)
        if settings.voice != self.default.voice:
            self.check_voice(settings.voice)
        data = cleaned.encode("utf-8") + b"\0"
        with _LOCK:
            espeak = _library()
            lib = espeak.lib
            if lib.espeak_SetVoiceByName(settings.voice.encode("utf-8")) != _EE_OK:
                raise ValueError(f"unknown espeak voice {settings.voice!r} (rejected by libespeak-ng)")
            # Every parameter is set on every call, so no setting leaks from one utterance into the next.
            for parameter, value in (
                (_PARAM_RATE, settings.rate),
                (_PARAM_VOLUME, _DEFAULT_VOLUME),
                (_PARAM_PITCH, settings.pitch),
                (_PARAM_RANGE, settings.pitch_range),
                (_PARAM_WORDGAP, settings.word_gap),
            ):
                lib.espeak_SetParameter(parameter, value, 0)
            espeak.reset()  # the same input now gives the same samples, whatever was spoken before
            espeak.chunks = []
            try:
                status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                chunks = espeak.chunks
            finally:
                espeak.chunks = []
            native_rate = espeak.native_rate
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with status {status} for {cleaned[:40]!r}")
        if not chunks:
            raise ValueError(f"espeak-ng produced no audio for {cleaned[:40]!r} with voice {settings.voice!r}")
        pcm = np.concatenate(chunks)
        return load_audio(
            pcm, sample_rate=native_rate, target_rate=SAMPLE_RATE, max_seconds=None, name=f"espeak:{cleaned[:30]}"
        )


# --- many utterances, in parallel processes ------------------------------------------------------------------------

_WORKER_ENGINE: TTSEngine | None = None


def _init_worker(engine_factory: Callable[[], TTSEngine]) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = engine_factory()


def _worker_synthesize(job: tuple[str, VoiceSettings | None]) -> np.ndarray:
    assert _WORKER_ENGINE is not None, "worker engine not initialised"
    return _WORKER_ENGINE.synthesize(job[0], job[1])


def synthesize_many(
    texts: Sequence[str],
    voices: VoiceSettings | Sequence[VoiceSettings | None] | None = None,
    *,
    engine_factory: Callable[[], TTSEngine] = EspeakEngine,
    num_workers: int = 0,
    chunksize: int = 16,
    mp_context: str | None = None,
) -> list[np.ndarray]:
    """Speak many texts, optionally in worker processes; results come back in input order.

    Each worker process builds its own engine with ``engine_factory`` (so it works under fork, spawn and
    forkserver, and engines with global state such as espeak-ng run truly in parallel). ``engine_factory`` must be
    picklable, i.e. a module-level class or function, when ``num_workers > 0``.

    Args:
        texts: The texts.
        voices: One setting for all texts, one per text, or None for the engine's default.
        engine_factory: Builds an engine (called once in-process, or once per worker).
        num_workers: Worker processes; 0 synthesizes in this process.
        chunksize: Texts sent to a worker at a time (bigger amortises inter-process overhead).
        mp_context: ``"fork"``, ``"spawn"`` or ``"forkserver"``; None for the platform default.

    Returns:
        One waveform per text, as the engine returns it.

    Raises:
        ValueError: ``voices`` has the wrong length, ``num_workers`` or ``chunksize`` is invalid, or an engine
            rejects a text or a voice (re-raised from the worker).
    """
    texts = list(texts)
    if voices is None or isinstance(voices, VoiceSettings):
        settings: list[VoiceSettings | None] = [voices] * len(texts)
    else:
        settings = list(voices)
        if len(settings) != len(texts):
            raise ValueError(f"voices has {len(settings)} entries but texts has {len(texts)}; give one per text")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
    if not texts:
        return []
    jobs = list(zip(texts, settings, strict=True))
    if num_workers == 0:
        engine = engine_factory()
        return [engine.synthesize(text, voice) for text, voice in jobs]
    context = None
    if mp_context is not None:
        import multiprocessing

        context = multiprocessing.get_context(mp_context)
    workers = min(num_workers, len(jobs))
    logger.debug("synthesizing %d texts in %d processes", len(jobs), workers)
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(engine_factory,)
    ) as pool:
        return list(pool.map(_worker_synthesize, jobs, chunksize=chunksize))
