"""SpeechInstruct building and the embedded speech world: synthetic speech (espeak-ng) behind a small TTS interface."""

from speechgpt.data.tts import (
    ENGLISH_VOICES,
    MAX_RATE,
    MIN_RATE,
    EspeakEngine,
    TTSEngine,
    VoiceSettings,
    clean_text,
    synthesize_many,
)

__all__ = [
    "ENGLISH_VOICES",
    "MAX_RATE",
    "MIN_RATE",
    "EspeakEngine",
    "TTSEngine",
    "VoiceSettings",
    "clean_text",
    "synthesize_many",
]
