"""The language model side of SpeechGPT: speech vocabulary, prompts by token id, model and LoRA I/O.

Importing this package loads transformers but no model; peft is imported only when LoRA is used.
"""

from speechgpt.lm.model import (
    LoraSettings,
    add_lora,
    count_parameters,
    create_model,
    load_model,
    merge_lora,
    save_lora,
    save_model,
    tiny_llama_config,
)
from speechgpt.lm.prompts import IGNORE_INDEX, EncodedExample, PromptEncoder, Turn
from speechgpt.lm.text_tokenizer import train_text_tokenizer
from speechgpt.lm.vocab import SpeechVocab, VocabularyError, expand_vocabulary, speech_tokens

__all__ = [
    "IGNORE_INDEX",
    "EncodedExample",
    "LoraSettings",
    "PromptEncoder",
    "SpeechVocab",
    "Turn",
    "VocabularyError",
    "add_lora",
    "count_parameters",
    "create_model",
    "expand_vocabulary",
    "load_model",
    "merge_lora",
    "save_lora",
    "save_model",
    "speech_tokens",
    "tiny_llama_config",
    "train_text_tokenizer",
]
