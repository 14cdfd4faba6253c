"""Speech units: frame features (HuBERT or a light CPU extractor), k-means, deduplication and unit strings."""

from speechgpt.units.base import FRAME_RATE, HOP_LENGTH, WINDOW_LENGTH, FeatureExtractor, num_frames
from speechgpt.units.light import LightFeatureConfig, LightFeatures
from speechgpt.units.tokenizer import EOSP, SOSP, SpeechTokenizer, Units, dedup, parse_units, units_to_string

__all__ = [
    "EOSP",
    "FRAME_RATE",
    "HOP_LENGTH",
    "SOSP",
    "WINDOW_LENGTH",
    "FeatureExtractor",
    "LightFeatureConfig",
    "LightFeatures",
    "SpeechTokenizer",
    "Units",
    "dedup",
    "num_frames",
    "parse_units",
    "units_to_string",
]
