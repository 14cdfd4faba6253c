"""Tiny training data in the builders' layouts, and a tiny base model, shared by the training tests.

Everything is deterministic (fixed seeds) and small enough that a stage trains a few steps in about a second.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from speechgpt.prompt_format import (
    CROSS_MODAL_INPUT,
    HUMAN_OPEN,
    META_INSTRUCTION,
    RESPONSE_OPEN,
    Modality,
    chain_of_modality_answer,
    chain_of_modality_question,
    cross_modal_question,
    record_text,
)
from speechgpt.units import units_to_string

NUM_UNITS = 24
"""Units of the tiny speech vocabulary."""
TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2}
"""Size of the tiny Llama the tests train (about 40k parameters with a ~500-token vocabulary)."""

_SUBJECTS = ("the cat", "a dog", "my friend", "the teacher", "a bird", "the child")
_VERBS = ("sees", "likes", "finds", "helps", "hears", "follows")
_OBJECTS = ("the ball", "a tree", "the river", "a book", "the house", "the moon")


def corpus_lines(count: int = 120, seed: int = 0) -> list[str]:
    """Simple sentences from a tiny grammar (learnable: the loss drops within a few steps)."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}." for _ in range(count)]


def word_units(word: str) -> list[int]:
    """A fixed unit sequence per word (each letter maps to one or two units), so speech is learnable."""
    units: list[int] = []
    for char in word:
        code = ord(char) % NUM_UNITS
        units.extend([code, (code * 7 + 3) % NUM_UNITS] if char in "aeiou" else [code])
    return units


def sentence_units(sentence: str) -> list[int]:
    return [u for word in sentence.rstrip(".").split() for u in word_units(word)]


def unit_lines(count: int = 80, seed: int = 0) -> list[str]:
    """Stage-1 lines ``<sosp><k>...<eosp>``: the "speech" of corpus sentences."""
    return [units_to_string(sentence_units(s)) for s in corpus_lines(count, seed)]


def cross_modal_records(count: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """Stage-2 records: half speech->text (ASR), half text->speech (TTS), in the builders' layout."""
    records = []
    for i, sentence in enumerate(corpus_lines(count, seed)):
        units = units_to_string(sentence_units(sentence))
        if i % 2 == 0:
            question, response, task = cross_modal_question("Transcribe the speech.", units), sentence, "asr"
        else:
            question, response, task = cross_modal_question("Say this aloud.", sentence), units, "tts"
        records.append(
            {
                "id": f"{task}-{i}",
                "task": task,
                "prefix": META_INSTRUCTION,
                "plain_text": record_text(question, response),
            }
        )
    return records


def chain_of_modality_records(count: int = 30, seed: int = 1) -> list[dict[str, str]]:
    """Stage-3 records: a spoken question, its transcript, a text answer and the spoken answer."""
    records = []
    for i, sentence in enumerate(corpus_lines(count, seed)):
        subject = sentence.split(" ")[1]
        answer = f"it is about {subject}."
        question = chain_of_modality_question(
            units_to_string(sentence_units(sentence)), Modality.SPEECH, Modality.SPEECH
        )
        response = chain_of_modality_answer(
            input_modality=Modality.SPEECH,
            output_modality=Modality.SPEECH,
            transcript=sentence,
            answer_text=answer,
            answer_units=units_to_string(sentence_units(answer)),
        )
        records.append(
            {"id": f"com-{i}", "task": "com", "prefix": META_INSTRUCTION, "plain_text": record_text(question, response)}
        )
    return records


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_records(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_base_model(path: Path, *, expanded: bool = False, seed: int = 0) -> Path:
    """Save a tiny text-only Llama (tokenizer trained on the corpus) to ``path``; with the speech vocabulary if
    ``expanded``."""
    from speechgpt.lm import create_model, expand_vocabulary, save_model, tiny_llama_config, train_text_tokenizer

    layout = [META_INSTRUCTION, f"{HUMAN_OPEN}{CROSS_MODAL_INPUT}{RESPONSE_OPEN}"] * 20  # short prompts, as stage 0
    tokenizer = train_text_tokenizer(corpus_lines(200) + layout, vocab_size=512)
    config = tiny_llama_config(
        len(tokenizer),
        **TINY_MODEL,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = create_model(config, seed=seed)
    if expanded:
        expand_vocabulary(model, tokenizer, NUM_UNITS)
    return save_model(model, tokenizer, path)
