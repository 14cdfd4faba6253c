"""espeak-ng speech in-process, for tests and benchmarks (a stop-gap until ``speechgpt.data`` has its TTS engine).

The ``espeakng-loader`` wheel (dev extra) ships libespeak-ng and its voice data, so no system install is needed.
The library is driven through ``ctypes`` in synchronous mode: synthesized 16-bit samples arrive in a callback,
are collected in memory and resampled from espeak's 22050 Hz to 16 kHz with :func:`speechgpt.audio.load_audio`.

libespeak-ng keeps global state (one voice, one callback), so the class is a process-wide singleton and is not
thread-safe.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from speechgpt.audio import SAMPLE_RATE, load_audio

AUDIO_OUTPUT_SYNCHRONOUS = 2
"""``espeak_AUDIO_OUTPUT``: synthesize in the calling thread and hand samples to the callback."""
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE = 1, 2, 3, 4
"""``espeak_PARAMETER`` ids."""
ESPEAK_CHARS_UTF8 = 1
POS_CHARACTER = 1
EE_OK = 0

VOICES = ("en-us", "en-us+f3", "en+m3", "en+f2", "en-gb-x-rp+m1", "en+f4")
"""A few English voices (language + variant) that sound clearly different."""

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """Synthesize English text with libespeak-ng into 16 kHz float32 arrays."""

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate})")
        self.native_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept on self: the C side holds only a raw pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Espeak:
        """The process-wide instance (libespeak-ng can be initialized once per process)."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.c_void_p) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
        """Speak ``text``; returns 16 kHz mono float32 in [-1, 1].

        Args:
            text: English text.
            voice: espeak voice name, optionally with a variant (``"en+f3"``).
            rate: Words per minute (espeak's default is 175).
            pitch: Base pitch 0..100 (default 50).

        Raises:
            ValueError: empty text, an unknown voice, or synthesis that yields no audio.
        """
        if not text.strip():
            raise ValueError("text is empty")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
                raise ValueError(f"unknown espeak voice {voice!r}")
            self._lib.espeak_SetParameter(ESPEAK_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(ESPEAK_PITCH, int(pitch), 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            status = self._lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
            if status != EE_OK:
                raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise ValueError(f"espeak produced no audio for {text!r}")
        pcm = np.concatenate(chunks)
        return load_audio(pcm, sample_rate=self.native_rate, target_rate=SAMPLE_RATE, name=f"espeak:{text[:30]}")


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """Shorthand for ``Espeak.get().synthesize(...)``."""
    return Espeak.get().synthesize(text, voice=voice, rate=rate, pitch=pitch)
