"""A small byte-level BPE text tokenizer trained from a corpus, for the embedded world (nothing to download).

It behaves like a Llama tokenizer where the rest of the package looks: ``<unk>``, ``<s>``, ``</s>`` at ids 0, 1,
2 (LlamaConfig's default bos/eos ids) plus ``<pad>`` at 3, a bos prepended by ``tokenizer(text)``, no eos
appended. Byte-level means every string encodes without ``<unk>`` and decodes back exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "UNK_TOKEN", "train_text_tokenizer"]

logger = logging.getLogger(__name__)

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
"""In id order: 0, 1, 2, 3 (Llama's unk/bos/eos ids, then a pad token Llama lacks)."""
_BYTE_ALPHABET_SIZE = 256


def _checked_lines(lines: Iterable[str], counter: list[int]) -> Iterator[str]:
    """Yield the non-blank lines, raising on anything that is not a string; counts what it yields."""
    if isinstance(lines, str):
        raise TypeError("lines must be an iterable of strings, not one string")
    for position, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"line {position} is {type(line).__name__}, not str")
        if line.strip():
            counter[0] += 1
            yield line


def train_text_tokenizer(
    lines: Iterable[str], *, vocab_size: int = 512, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on text lines.

    The same lines give the same tokenizer. ``decode(encode(x)) == x`` for any text (bytes are the alphabet, and
    no prefix space is added).

    Args:
        lines: Training text, one sentence or document per item; blank lines are skipped.
        vocab_size: Target size including the 256 byte tokens and the 4 special tokens (the result may be
            smaller if the corpus has too few pairs to merge).
        min_frequency: A pair must occur this often to be merged.

    Returns:
        A fast Hugging Face tokenizer with ``<unk>``, ``<s>`` (bos), ``</s>`` (eos) and ``<pad>``.

    Raises:
        ValueError: ``vocab_size`` cannot hold the byte alphabet and special tokens, ``min_frequency`` < 1, or
            no line holds any text.
        TypeError: ``lines`` is a string or yields a non-string.
    """
    smallest = _BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be an integer >= {smallest} (256 bytes + 4 special tokens), got {vocab_size!r}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive integer, got {min_frequency!r}")
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    counter = [0]
    backend.train_from_iterator(_checked_lines(lines, counter), trainer)
    if counter[0] == 0:
        raise ValueError("lines hold no text to train a tokenizer on")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, backend.token_to_id(BOS_TOKEN))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    logger.info("trained a byte-level BPE tokenizer of %d tokens on %d lines", len(tokenizer), counter[0])
    return tokenizer
