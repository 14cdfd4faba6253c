"""The speech vocabulary of SpeechGPT: unit tokens and control tokens appended to a text LLM's vocabulary.

Released order (``../shared/DESIGN.md``): ``<0>`` … ``<N-1>``, then ``<sosp>``, ``<eosp>``, ``[Human]``,
``[SpeechGPT]``, ``<eoh>``, ``<eos>``, all appended after the base vocabulary of size ``V``, so ``<k>`` has id
``V + k`` and the control tokens follow at ``V + N`` … ``V + N + 5``. A released checkpoint's ids are only usable
if ours are the same, so :func:`expand_vocabulary` adds exactly this order and refuses anything else.

New embedding rows start at the mean of the existing rows: the model's next-token distribution barely moves at
first, and no new token starts with a huge or tiny logit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import AddedToken

from speechgpt.constants import RELEASED_NUM_UNITS
from speechgpt.prompt_format import ADDED_CONTROL_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["INIT_METHODS", "SpeechVocab", "VocabularyError", "expand_vocabulary", "speech_tokens"]

logger = logging.getLogger(__name__)

INIT_METHODS = ("mean", "mean_noise")
"""How new embedding rows start: the mean of the old rows, or that mean plus small seeded Gaussian noise."""
NOISE_SCALE = 1e-3
"""Standard deviation of the ``"mean_noise"`` init, relative to the old rows' per-dimension standard deviation."""


class VocabularyError(ValueError):
    """A tokenizer or model whose speech vocabulary is missing, partial, out of order or out of step."""


def _unit_token(k: int) -> str:
    return f"<{k}>"


def speech_tokens(num_units: int = RELEASED_NUM_UNITS) -> list[str]:
    """The tokens SpeechGPT appends to a text vocabulary, in the released order.

    Args:
        num_units: Number of speech units (k-means clusters).

    Returns:
        ``["<0>", …, "<N-1>", "<sosp>", "<eosp>", "[Human]", "[SpeechGPT]", "<eoh>", "<eos>"]``.

    Raises:
        ValueError: ``num_units`` is not a positive integer.
    """
    if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
        raise ValueError(f"num_units must be a positive integer, got {num_units!r}")
    return [_unit_token(k) for k in range(num_units)] + list(ADDED_CONTROL_TOKENS)


@dataclass(frozen=True)
class SpeechVocab:
    """Where the speech tokens sit in an expanded tokenizer: everything prompt code needs to work by id.

    Attributes:
        unit_offset: Id of ``<0>`` (the size of the base vocabulary); unit ``k`` has id ``unit_offset + k``.
        num_units: Number of unit tokens.
        sosp_id, eosp_id, human_id, speechgpt_id, eoh_id, eos_id: Ids of the control tokens, in released order.
    """

    unit_offset: int
    num_units: int
    sosp_id: int
    eosp_id: int
    human_id: int
    speechgpt_id: int
    eoh_id: int
    eos_id: int

    def __post_init__(self) -> None:
        if self.unit_offset < 0 or self.num_units < 1:
            raise ValueError(f"bad SpeechVocab: unit_offset={self.unit_offset}, num_units={self.num_units}")
        expected = list(range(self.unit_offset + self.num_units, self.unit_offset + self.num_units + 6))
        if list(self.control_ids) != expected:
            raise ValueError(
                f"bad SpeechVocab: control ids {list(self.control_ids)} must be {expected} (released order)"
            )

    @classmethod
    def at(cls, unit_offset: int, num_units: int) -> SpeechVocab:
        """The vocabulary of ``num_units`` units appended at ``unit_offset`` in the released order."""
        first = unit_offset + num_units
        return cls(unit_offset, num_units, *range(first, first + len(ADDED_CONTROL_TOKENS)))

    @property
    def control_ids(self) -> tuple[int, ...]:
        """Ids of ``<sosp>``, ``<eosp>``, ``[Human]``, ``[SpeechGPT]``, ``<eoh>``, ``<eos>``."""
        return (self.sosp_id, self.eosp_id, self.human_id, self.speechgpt_id, self.eoh_id, self.eos_id)

    @property
    def end(self) -> int:
        """One past the last speech-vocabulary id (the expanded vocabulary size when nothing follows)."""
        return self.eos_id + 1

    def token_to_id(self) -> dict[str, int]:
        """Every speech token string mapped to its id."""
        return {token: self.unit_offset + i for i, token in enumerate(speech_tokens(self.num_units))}

    def is_unit(self, token_id: int) -> bool:
        """Whether ``token_id`` is a unit token ``<k>``."""
        return self.unit_offset <= token_id < self.unit_offset + self.num_units

    def is_speech_token(self, token_id: int) -> bool:
        """Whether ``token_id`` is any token this vocabulary added (unit or control)."""
        return self.unit_offset <= token_id < self.end

    def unit_ids(self, units: Sequence[int]) -> list[int]:
        """Token ids of unit ids.

        Raises:
            ValueError: A unit is not an integer in ``[0, num_units)``.
        """
        out = []
        for position, unit in enumerate(units):
            try:
                value = int(unit)
                valid = value == unit and 0 <= value < self.num_units
            except (TypeError, ValueError):
                valid = False
            if not valid:
                raise ValueError(f"unit {unit!r} at position {position} is not an integer in [0, {self.num_units})")
            out.append(self.unit_offset + value)
        return out

    def units_from_ids(self, ids: Iterable[int]) -> list[int]:
        """The unit ids among token ids, in order; every other id is skipped."""
        return [int(i) - self.unit_offset for i in ids if self.is_unit(int(i))]

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, num_units: int | None = None) -> SpeechVocab:
        """Find the speech vocabulary in an expanded tokenizer.

        Args:
            tokenizer: A Hugging Face tokenizer expanded by :func:`expand_vocabulary` (or the released one).
            num_units: Expected number of units; inferred from the consecutive ``<k>`` tokens when None.

        Raises:
            VocabularyError: The tokenizer is not expanded, only partly, in another order, or with another
                number of units than ``num_units``.
        """
        vocab = tokenizer.get_vocab()
        offset = vocab.get(_unit_token(0))
        if offset is None:
            present = [t for t in ADDED_CONTROL_TOKENS if t in vocab]
            detail = f" (it has {present} but no unit tokens)" if present else ""
            raise VocabularyError(
                f"tokenizer has no speech vocabulary: token '<0>' is missing{detail}; call expand_vocabulary first"
            )
        inferred = 0
        while vocab.get(_unit_token(inferred)) == offset + inferred:
            inferred += 1
        if num_units is not None and inferred != num_units:
            raise VocabularyError(
                f"tokenizer holds {inferred} consecutive unit tokens from id {offset}, expected {num_units}"
            )
        result = cls.at(offset, inferred)
        _check_ids(vocab, result)
        return result


def _check_ids(vocab: dict[str, int], speech_vocab: SpeechVocab) -> None:
    """Raise unless every speech token has its released id."""
    for token, expected in speech_vocab.token_to_id().items():
        actual = vocab.get(token)
        if actual != expected:
            where = "missing" if actual is None else f"at id {actual}"
            raise VocabularyError(
                f"tokenizer speech vocabulary is out of the released order: {token!r} is {where}, expected id "
                f"{expected} (units <0>..<{speech_vocab.num_units - 1}> at {speech_vocab.unit_offset}, then "
                f"{', '.join(ADDED_CONTROL_TOKENS)})"
            )
    # A unit token right after the last one would mean the vocabulary holds more units than we think.
    extra = vocab.get(_unit_token(speech_vocab.num_units))
    if extra is not None:
        raise VocabularyError(
            f"tokenizer holds unit token <{speech_vocab.num_units}> (id {extra}) beyond the {speech_vocab.num_units} "
            f"units of its released-order block"
        )


def expand_vocabulary(
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    num_units: int = RELEASED_NUM_UNITS,
    *,
    init: str = "mean",
    seed: int = 0,
) -> SpeechVocab:
    """Append the speech vocabulary to a tokenizer (and resize a model's embeddings to match), idempotently.

    The tokens are added as special tokens (never normalised, never split) in the released order, unit tokens
    first. Embedding rows that exist are kept bit-identical; new rows of the input embeddings (and of an untied
    output head) start at the mean of the old rows of that matrix. A tied head stays tied. Calling it again on
    an expanded tokenizer and model changes nothing.

    Args:
        model: A causal LM whose embeddings follow the tokenizer, or None to expand the tokenizer only.
        tokenizer: A Hugging Face tokenizer; modified in place.
        num_units: Number of speech units.
        init: ``"mean"`` or ``"mean_noise"`` (the mean plus Gaussian noise of :data:`NOISE_SCALE` times the old
            rows' per-dimension std, drawn from a generator seeded with ``seed``; the global RNG is untouched).
        seed: Seed of the ``"mean_noise"`` init.

    Returns:
        The speech vocabulary's ids.

    Raises:
        ValueError: ``init`` or ``num_units`` is invalid.
        VocabularyError: The tokenizer holds some speech tokens but not all, in another order, or with another
            number of units.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    tokens = speech_tokens(num_units)
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present:
        try:
            existing = SpeechVocab.from_tokenizer(tokenizer)
        except VocabularyError:
            existing = None
        if existing is not None and existing.num_units != num_units:
            raise VocabularyError(
                f"tokenizer already holds a speech vocabulary of {existing.num_units} consecutive unit tokens, "
                f"asked for {num_units}"
            )
    if present and len(present) != len(tokens):
        missing = [t for t in tokens if t not in vocab]
        raise VocabularyError(
            f"tokenizer holds {len(present)} of the {len(tokens)} speech tokens (e.g. {present[:3]}) but lacks "
            f"{len(missing)} (e.g. {missing[:3]}): a partial expansion cannot be completed in the released order"
        )
    if present:
        speech_vocab = SpeechVocab.from_tokenizer(tokenizer, num_units)
    else:
        base_size = len(tokenizer)
        ids = sorted(set(vocab.values()))
        if ids and ids[-1] != base_size - 1:
            raise VocabularyError(
                f"tokenizer ids are not contiguous (largest id {ids[-1]}, {base_size} tokens): new tokens would not "
                f"get the released ids"
            )
        added = tokenizer.add_tokens(
            [
                AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
                for t in tokens
            ],
            special_tokens=True,
        )
        if added != len(tokens):
            raise VocabularyError(f"tokenizer added {added} of {len(tokens)} speech tokens")
        speech_vocab = SpeechVocab.at(base_size, num_units)
        _check_ids(tokenizer.get_vocab(), speech_vocab)
        logger.info("added %d speech tokens at ids %d..%d", len(tokens), base_size, speech_vocab.end - 1)
    if model is not None:
        _resize_embeddings(model, speech_vocab.end, init=init, seed=seed)
    return speech_vocab


def _new_rows(old: torch.Tensor, count: int, *, init: str, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows at the mean of ``old`` (computed in float32), optionally with small seeded noise."""
    old32 = old.detach().float()
    rows = old32.mean(dim=0, keepdim=True).expand(count, -1).clone()
    if init == "mean_noise":
        std = old32.std(dim=0, keepdim=True) if old32.shape[0] > 1 else torch.ones_like(rows[:1])
        noise = torch.randn(rows.shape, generator=generator, dtype=torch.float32, device="cpu").to(rows.device)
        rows = rows + NOISE_SCALE * std * noise
    return rows.to(old.dtype)


def _resize_embeddings(model: Any, size: int, *, init: str, seed: int) -> None:
    """Grow the input (and untied output) embeddings to ``size`` rows, new rows at the old mean."""
    input_embeddings = model.get_input_embeddings()
    old_rows = input_embeddings.weight.shape[0]
    if old_rows >= size:
        if old_rows > size:
            logger.info("model has %d embedding rows, more than the %d tokens; left as is", old_rows, size)
        return
    output_embeddings = model.get_output_embeddings()
    tied = output_embeddings is not None and output_embeddings.weight is input_embeddings.weight
    old_input = input_embeddings.weight.detach().clone()
    old_output = None if output_embeddings is None or tied else output_embeddings.weight.detach().clone()
    if old_output is not None and old_output.shape[0] != old_rows:
        raise VocabularyError(
            f"model's input embeddings have {old_rows} rows but its output head has {old_output.shape[0]}"
        )
    # transformers draws the new rows from the global RNG; fork it so expansion leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]):
        model.resize_token_embeddings(size, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    count = size - old_rows
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[:old_rows] = old_input
        weight[old_rows:] = _new_rows(old_input, count, init=init, generator=generator)
        if old_output is not None:
            head = model.get_output_embeddings().weight
            head[:old_rows] = old_output
            head[old_rows:] = _new_rows(old_output, count, init=init, generator=generator)
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise VocabularyError("tied input and output embeddings came apart while resizing")
    logger.info(
        "resized embeddings from %d to %d rows (%s init, %s head)", old_rows, size, init, "tied" if tied else "untied"
    )
