"""SpeechInstruct building and the embedded speech world.

- :mod:`~speechgpt.data.tts`: synthetic speech (espeak-ng in-process) behind the :class:`TTSEngine` protocol;
- :mod:`~speechgpt.data.world` / :mod:`~speechgpt.data.world_speech`: the embedded speech world;
- :mod:`~speechgpt.data.readers`: LibriSpeech, Common Voice, JSONL/CSV manifests, Alpaca instructions;
- :mod:`~speechgpt.data.templates` / :mod:`~speechgpt.data.records`: instruction templates and record layouts;
- :mod:`~speechgpt.data.builders`: the stage 1/2/3 builders; :mod:`~speechgpt.data.validate`: record checks;
- :mod:`~speechgpt.data.hf`: loading built files as a ``datasets.Dataset``.
"""

from speechgpt.data.builders import BuildResult, build_stage1, build_stage2, build_stage3, merge_shards
from speechgpt.data.hf import load_instruct_dataset
from speechgpt.data.readers import InstructionItem, ReaderError, SpeechItem, read_instructions, read_speech_corpus
from speechgpt.data.records import make_asr_record, make_com_record, make_tts_record
from speechgpt.data.templates import Direction, load_templates, pick_template
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
from speechgpt.data.validate import InvalidRecordError, ValidationReport, check_record, ensure_valid, validate_file
from speechgpt.data.world import WorldConfig, build_text_world
from speechgpt.data.world_speech import WorldSummary, build_world, load_world

__all__ = [
    "ENGLISH_VOICES",
    "MAX_RATE",
    "MIN_RATE",
    "BuildResult",
    "Direction",
    "EspeakEngine",
    "InstructionItem",
    "InvalidRecordError",
    "ReaderError",
    "SpeechItem",
    "TTSEngine",
    "ValidationReport",
    "VoiceSettings",
    "WorldConfig",
    "WorldSummary",
    "build_stage1",
    "build_stage2",
    "build_stage3",
    "build_text_world",
    "build_world",
    "check_record",
    "clean_text",
    "ensure_valid",
    "load_instruct_dataset",
    "load_templates",
    "load_world",
    "make_asr_record",
    "make_com_record",
    "make_tts_record",
    "merge_shards",
    "pick_template",
    "read_instructions",
    "read_speech_corpus",
    "synthesize_many",
    "validate_file",
]
