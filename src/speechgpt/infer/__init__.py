"""Inference: load a bundle, talk to SpeechGPT in text or speech, get text and speech back (also streaming)."""

from speechgpt.infer.bundle import MANIFEST_NAME, BundleError, BundleManifest, assemble_bundle
from speechgpt.infer.pipeline import (
    AudioChunk,
    Done,
    Event,
    GenerationOptions,
    Message,
    OutputModality,
    Reply,
    SpeechGPT,
    TextDelta,
    Transcript,
)

__all__ = [
    "MANIFEST_NAME",
    "AudioChunk",
    "BundleError",
    "BundleManifest",
    "Done",
    "Event",
    "GenerationOptions",
    "Message",
    "OutputModality",
    "Reply",
    "SpeechGPT",
    "TextDelta",
    "Transcript",
    "assemble_bundle",
]
