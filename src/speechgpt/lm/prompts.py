"""Turning SpeechGPT conversations into token ids and generated ids back into replies, by id.

The layout is :mod:`speechgpt.prompt_format`'s (meta instruction, ``[Human]: …<eoh>. [SpeechGPT]: …<eoa>``); this
module only decides which characters become which ids, with one rule used everywhere (training records, prompts
for generation, stage-1 unit lines):

* control and unit ids come only from the exact control strings (``<sosp>``, ``[Human]``, ``<12>``…) that our own
  splitter finds in trusted text: the layout, builder records, unit spans made from integers;
* every piece of text between them is encoded on its own with the tokenizer's special-token matching turned off,
  and any speech, control, bos or eos id that a piece still yields (say, an added token matched after the
  tokenizer's normalisation) is removed;
* text a user typed is first passed through :func:`~speechgpt.prompt_format.neutralize_user_text`, so it holds no
  control strings for the splitter to find: it can never open a speech span, end a turn or speak as SpeechGPT.

Encoding text pieces separately is also what the released training did with its (legacy) Llama tokenizer, which
encoded the text between added tokens chunk by chunk. Because :meth:`PromptEncoder.build_prompt` and
:meth:`PromptEncoder.encode_record` go through the same splitter, a prompt for generation has exactly the token
ids of the prompt part of the corresponding training record.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from speechgpt.lm.vocab import SpeechVocab
from speechgpt.prompt_format import (
    ADDED_CONTROL_TOKENS,
    EOA,
    EOSP,
    META_INSTRUCTION,
    RESPONSE_OPEN,
    SOSP,
    Modality,
    ParsedResponse,
    chain_of_modality_question,
    cross_modal_question,
    human_turn,
    neutralize_user_text,
    parse_response,
    record_text,
)
from speechgpt.units import units_to_string

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["IGNORE_INDEX", "EncodedExample", "PromptEncoder", "Turn"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a position that carries no loss (PyTorch's cross-entropy ``ignore_index``)."""
_SEGMENT_CACHE_SIZE = 4096
# A unit token as the splitter accepts it: canonical digits (no sign, no leading zeros), ten at most.
_UNIT_PATTERN = r"<(?:0|[1-9][0-9]{0,9})>"
_UNIT_LINE = re.compile(re.escape(SOSP) + r"((?:" + _UNIT_PATTERN + r")+)" + re.escape(EOSP))
_UNIT_DIGITS = re.compile(r"<([0-9]+)>")


@dataclass
class Turn:
    """One turn of a conversation.

    A user turn is text, speech units, or both (an instruction about a speech input, laid out as
    :func:`~speechgpt.prompt_format.cross_modal_question`). An assistant turn in the history is its full response
    text as the model wrote it (``transcript; [ta] …; [ua] <sosp>…<eosp>``); it is our own output and trusted.

    Attributes:
        role: ``"user"`` or ``"assistant"``.
        text: What was typed (user) or the response (assistant).
        units: Unit ids of a spoken user turn.
    """

    role: Literal["user", "assistant"]
    text: str = ""
    units: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ValueError(f"turn role must be 'user' or 'assistant', got {self.role!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"turn text must be a string, got {type(self.text).__name__}")
        has_units = self.units is not None and len(self.units) > 0
        if self.role == "assistant" and has_units:
            raise ValueError("an assistant turn is its response text; put its units in the text as <sosp>...<eosp>")
        if self.role == "user" and not has_units and not self.text.strip():
            raise ValueError("a user turn needs text or speech units; this one has neither")


@dataclass
class EncodedExample:
    """A tokenized training example.

    Attributes:
        input_ids: Token ids.
        labels: Same length; the target id where the position is learned, :data:`IGNORE_INDEX` elsewhere.
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptEncoder:
    """Encodes records, prompts and unit lines for one expanded tokenizer, and decodes what a model generates.

    Args:
        tokenizer: A Hugging Face tokenizer expanded with :func:`~speechgpt.lm.vocab.expand_vocabulary`.
        vocab: Its speech vocabulary; found in the tokenizer when None.
        meta_instruction: The system text that starts every prompt (the released one by default).

    Raises:
        VocabularyError: The tokenizer holds no (or a malformed) speech vocabulary.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vocab: SpeechVocab | None = None,
        *,
        meta_instruction: str = META_INSTRUCTION,
    ) -> None:
        if not isinstance(meta_instruction, str):
            raise TypeError(f"meta_instruction must be a string, got {type(meta_instruction).__name__}")
        self.tokenizer = tokenizer
        self.vocab = vocab if vocab is not None else SpeechVocab.from_tokenizer(tokenizer)
        self.meta_instruction = meta_instruction
        self._control_ids = dict(zip(ADDED_CONTROL_TOKENS, self.vocab.control_ids, strict=True))
        self._speech_token_strings = [*(f"<{k}>" for k in range(self.vocab.num_units)), *ADDED_CONTROL_TOKENS]
        self._splitter = re.compile("|".join(re.escape(t) for t in ADDED_CONTROL_TOKENS) + "|" + _UNIT_PATTERN)
        self._forbidden = self._forbidden_ids()
        self._segments: dict[str, tuple[int, ...]] = {}

    # ----------------------------------------------------------------------------------------------- ids
    def _forbidden_ids(self) -> frozenset[int]:
        """Ids a text piece must never produce: speech tokens and every special token except ``<unk>``."""
        tokenizer = self.tokenizer
        ids = set(range(self.vocab.unit_offset, self.vocab.end))
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None)
        for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(token, "special", False):
                ids.add(int(token_id))
        ids.discard(tokenizer.unk_token_id)
        return frozenset(ids)

    @property
    def bos_id(self) -> int | None:
        """The tokenizer's beginning-of-sequence id, if it has one."""
        return self.tokenizer.bos_token_id

    @property
    def eos_id(self) -> int:
        """The id that ends a training example: the tokenizer's eos, else ``<eos>``."""
        eos = self.tokenizer.eos_token_id
        return self.vocab.eos_id if eos is None else int(eos)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end generation: the tokenizer's eos, ``<eos>``, and ``<eoa>`` when it is a single token."""
        ids = [self.eos_id, self.vocab.eos_id]
        eoa = self._encode_text(EOA)
        if len(eoa) == 1:
            ids.append(eoa[0])
        return list(dict.fromkeys(ids))

    def _bos(self, add_bos: bool) -> list[int]:
        return [int(self.bos_id)] if add_bos and self.bos_id is not None else []

    # ------------------------------------------------------------------------------------------ encoding
    def _encode_text(self, piece: str) -> list[int]:
        """Encode text holding no control strings; the result never holds a forbidden id."""
        if not piece:
            return []
        cached = self._segments.get(piece)
        if cached is not None:
            return list(cached)
        ids = self._tokenize(piece)
        if any(i in self._forbidden for i in ids):
            # The tokenizer matched an added token after its own normalisation (e.g. NFKC on look-alikes):
            # try the normalised, neutralised text, then drop whatever still slips through.
            ids = self._tokenize(neutralize_user_text(unicodedata.normalize("NFKC", piece)))
            leaked = [i for i in ids if i in self._forbidden]
            if leaked:
                logger.warning("dropped ids %s that the tokenizer produced from text %r", leaked, piece[:80])
                ids = [i for i in ids if i not in self._forbidden]
        if len(self._segments) >= _SEGMENT_CACHE_SIZE:
            self._segments.clear()
        self._segments[piece] = tuple(ids)
        return ids

    def _tokenize(self, piece: str) -> list[int]:
        encoded = self.tokenizer(piece, add_special_tokens=False, split_special_tokens=True)
        return [int(i) for i in encoded["input_ids"]]

    def _speech_token_id(self, token: str) -> int:
        control = self._control_ids.get(token)
        if control is not None:
            return control
        unit = int(token[1:-1])
        if unit >= self.vocab.num_units:
            raise ValueError(f"unit token {token} is outside the vocabulary's {self.vocab.num_units} units")
        return self.vocab.unit_offset + unit

    def encode_trusted(self, text: str) -> list[int]:
        """Encode trusted text (layout, builder data): its control strings and unit tokens become their ids.

        Raises:
            ValueError: A unit token is beyond the vocabulary's units.
        """
        ids: list[int] = []
        position = 0
        for match in self._splitter.finditer(text):
            ids += self._encode_text(text[position : match.start()])
            ids.append(self._speech_token_id(match.group(0)))
            position = match.end()
        ids += self._encode_text(text[position:])
        return ids

    def encode_user_text(self, text: str) -> list[int]:
        """Encode text a user typed; it never yields a speech, control, bos or eos id.

        Raises:
            TypeError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"user text must be a string, got {type(text).__name__}")
        return self._encode_text(neutralize_user_text(text))

    def encode_units(self, units: Sequence[int]) -> list[int]:
        """``<sosp>``, the unit ids, ``<eosp>`` — straight from the integers, no text involved.

        Raises:
            ValueError: ``units`` is empty or holds a value outside ``[0, num_units)``.
        """
        if len(units) == 0:
            raise ValueError("units are empty: a speech span needs at least one unit")
        return [self.vocab.sosp_id, *self.vocab.unit_ids(units), self.vocab.eosp_id]

    def encode_unit_text(self, line: str, *, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        """Encode a stage-1 line ``<sosp><12><7>…<eosp>`` (surrounding whitespace ignored).

        Raises:
            ValueError: The line is not exactly one unit span, or a unit is beyond the vocabulary.
        """
        match = _UNIT_LINE.fullmatch(line.strip()) if isinstance(line, str) else None
        if match is None:
            shown = line[:60] if isinstance(line, str) else line
            raise ValueError(f"stage-1 line is not one {SOSP}<k>...{EOSP} span: {shown!r}")
        units = [int(k) for k in _UNIT_DIGITS.findall(match.group(1))]
        eos = [self.eos_id] if add_eos else []
        return [*self._bos(add_bos), *self.encode_units(units), *eos]

    def encode_record(
        self,
        record: Mapping[str, Any],
        *,
        train_on_inputs: bool = False,
        max_length: int | None = None,
        add_bos: bool = True,
    ) -> EncodedExample:
        """Encode a builder record ``{"prefix", "plain_text"}`` (trusted data) for training.

        The input is bos + prefix + plain_text + the tokenizer's eos. The response is everything after the last
        ``". [SpeechGPT]: "`` (through its ``<eoa>``) plus the eos; only it is learned unless ``train_on_inputs``,
        which learns every position but the bos. Truncation to ``max_length`` keeps the left part (an example whose
        prompt fills ``max_length`` keeps no learned position; callers may drop it).

        Raises:
            TypeError: ``record`` is not a mapping or its fields are not strings.
            ValueError: ``plain_text`` is missing or has no response marker, ``max_length`` < 1, or a unit token
                is beyond the vocabulary.
        """
        if not isinstance(record, Mapping):
            raise TypeError(f"record must be a mapping with 'prefix' and 'plain_text', got {type(record).__name__}")
        name = f"record {record['id']!r}" if "id" in record else "record"
        plain_text = record.get("plain_text")
        prefix = record.get("prefix", "")
        if not isinstance(plain_text, str) or not isinstance(prefix, str):
            raise TypeError(f"{name}: 'plain_text' (required) and 'prefix' must be strings")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        cut = plain_text.rfind(RESPONSE_OPEN)
        if cut < 0:
            raise ValueError(f"{name}: plain_text has no {RESPONSE_OPEN!r}, so it has no response to learn")
        cut += len(RESPONSE_OPEN)
        bos = self._bos(add_bos)
        prompt = self.encode_trusted(prefix + plain_text[:cut])
        response = [*self.encode_trusted(plain_text[cut:]), self.eos_id]
        input_ids = [*bos, *prompt, *response]
        prompt_labels = prompt if train_on_inputs else [IGNORE_INDEX] * len(prompt)
        labels = [IGNORE_INDEX] * len(bos) + prompt_labels + response
        if max_length is not None:
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        return EncodedExample(input_ids=input_ids, labels=labels)

    # ------------------------------------------------------------------------------------------- prompts
    def _question(self, turn: Turn, output_modality: Modality | None) -> str:
        """The human side of a user turn as layout text, with typed text neutralised."""
        has_units = turn.units is not None and len(turn.units) > 0
        if has_units:
            # Validated (and made plain ints) before the units become text.
            question = units_to_string(self.vocab.units_from_ids(self.vocab.unit_ids(turn.units)))
            if turn.text.strip():
                question = cross_modal_question(neutralize_user_text(turn.text), question)
        else:
            question = neutralize_user_text(turn.text)
        if output_modality is not None:
            input_modality = Modality.SPEECH if has_units else Modality.TEXT
            question = chain_of_modality_question(question, input_modality, Modality(output_modality))
        return question

    @staticmethod
    def _response(turn: Turn) -> str:
        """An assistant turn's text without its closing ``<eoa>`` (the layout adds it back)."""
        return turn.text[: -len(EOA)] if turn.text.endswith(EOA) else turn.text

    def prompt_text(self, turns: Sequence[Turn], *, output_modality: Modality | None = None) -> str:
        """The layout text that :meth:`build_prompt` encodes (user text already neutralised).

        Raises:
            ValueError: ``turns`` is empty, does not alternate user/assistant starting with the user, or does not
                end with a user turn.
        """
        turns = list(turns)
        if not turns:
            raise ValueError("turns are empty: a prompt needs at least one user turn")
        for index, turn in enumerate(turns):
            if not isinstance(turn, Turn):
                raise TypeError(f"turn {index} is {type(turn).__name__}, not Turn")
            expected = "user" if index % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(f"turn {index} is from the {turn.role}, expected the {expected} (turns alternate)")
        if turns[-1].role != "user":
            raise ValueError("the last turn must be the user's: the prompt asks SpeechGPT to answer it")
        parts = [self.meta_instruction]
        for question, answer in zip(turns[:-1:2], turns[1:-1:2], strict=True):
            parts.append(record_text(self._question(question, None), self._response(answer)))
        parts.append(human_turn(self._question(turns[-1], output_modality)) + RESPONSE_OPEN)
        return "".join(parts)

    def build_prompt(
        self, turns: Sequence[Turn], *, output_modality: Modality | None = None, add_bos: bool = True
    ) -> list[int]:
        """Token ids of a conversation ready for generation: meta instruction, history, the last user turn, then
        ``". [SpeechGPT]: "``.

        Args:
            turns: Alternating user and assistant turns, ending with the user.
            output_modality: Ask for a text or spoken answer (the chain-of-modality cue when it differs from the
                last turn's input modality); no cue when None.
            add_bos: Start with the tokenizer's bos.

        Raises:
            ValueError: Bad turn order, or units outside the vocabulary.
        """
        return [*self._bos(add_bos), *self.encode_trusted(self.prompt_text(turns, output_modality=output_modality))]

    # ------------------------------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Text of token ids: speech tokens as their strings, other runs through the tokenizer.

        Runs between speech tokens are decoded separately, the inverse of how they were encoded. Special tokens
        other than the speech vocabulary (bos, pad) are dropped; decoding stops at the first eos or ``<eos>``
        when ``stop_at_eos``.
        """
        stops = {self.eos_id, self.vocab.eos_id} if stop_at_eos else set()
        pieces: list[str] = []
        run: list[int] = []

        def flush() -> None:
            if run:
                pieces.append(self.tokenizer.decode(run, skip_special_tokens=True, clean_up_tokenization_spaces=False))
                run.clear()

        for value in ids:
            token_id = int(value)
            if token_id in stops:
                break
            if self.vocab.is_speech_token(token_id):
                flush()
                pieces.append(self._speech_token_strings[token_id - self.vocab.unit_offset])
            else:
                run.append(token_id)
        flush()
        return "".join(pieces)

    def decode_response(self, ids: Sequence[int]) -> ParsedResponse:
        """Split generated ids (the tokens after the prompt) into transcript, text answer and unit string."""
        return parse_response(self.decode(ids))
