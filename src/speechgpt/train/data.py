"""Training rows from the builders' files: block packing (stages 0/1), example packing (stages 2/3), collation.

Stages 0 and 1 are plain causal LM on a stream of sentences or unit sequences: every line becomes
``<s> ... </s>``, the lines are concatenated and cut into blocks (the released recipe's block packing, 1024 tokens
in stage 1), and the loss covers every token.

Stages 2 and 3 train on instruction records whose loss covers the response only. Padding each example to the
batch's longest wastes most of a batch on pad tokens when lengths vary, so several examples are **packed** into
one row instead, without attention between them: each example's position ids restart at 0, and with no
``attention_mask`` the Llama model in transformers turns those restarts into a block-diagonal causal mask (sdpa
and eager) or variable-length attention (flash attention). The first label of each example is masked so the last
token of one example is never trained to predict the next example. A packed row's loss is therefore exactly the
sum of its examples' unpacked losses (``tests/train/test_data.py`` checks this).

The block-diagonal mask still makes sdpa compute a full ``L x L`` score matrix per row, and on a CPU a masked sdpa
is slower than a causal one: long packed rows would cost more attention than the padding they save. So the
trainer switches the model to :data:`SEGMENTED_ATTENTION`, which runs causal sdpa on each example's span of the
row separately (attention cost ``sum(len_i^2)``, the fast unmasked kernel) and is otherwise the same computation.

**Shared prefixes.** Every SpeechInstruct record starts with the same meta instruction, which carries no loss; in
the embedded world it is 68 of a stage-2 record's ~140 tokens. With ``share_prefix``, a packed row holds that
prefix once and then the rest of each example, whose position ids continue from the prefix's length instead of
restarting at 0; the segmented kernel lets each such segment attend to the row's prefix and to itself. Every
example then sees exactly what it would see alone (same positions, same keys and values), so the loss and the
gradients are those of the unpacked examples, while the prefix is computed once per row instead of once per
example (:func:`shared_prefix_length` picks a prefix whose tokens and the first token after it are unlabelled).
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from speechgpt.jsonl import read_jsonl

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from speechgpt.lm.prompts import EncodedExample, PromptEncoder

__all__ = [
    "IGNORE_INDEX",
    "PER_SEGMENT_DEVICES",
    "SEGMENTED_ATTENTION",
    "USEFUL_TOKENS_KEY",
    "DataError",
    "PackingStats",
    "RowCollator",
    "RowDataset",
    "encode_records",
    "encode_text_lines",
    "encode_unit_lines",
    "pack_blocks",
    "pack_examples",
    "pad_examples",
    "read_records",
    "read_text_lines",
    "row_segments",
    "segment_mask",
    "segmented_attention",
    "shared_prefix_length",
    "use_segmented_attention",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of a token that carries no loss (the value Hugging Face losses skip)."""
USEFUL_TOKENS_KEY = "num_useful_tokens"
"""Batch entry (a Python int) counting the non-pad tokens; the trainer pops it before the forward pass."""
RECORD_FIELDS = ("prefix", "plain_text")
"""Fields every stage-2/3 record must hold (``speechgpt.prompt_format.record_text`` layout)."""


class DataError(ValueError):
    """A training file that cannot be used; the message names the file (and line or record) and the reason."""


Row = dict[str, list[int]]
"""One training row: ``input_ids`` and ``labels``, plus ``position_ids`` for packed examples (which restart at 0
for each example, or continue a shared prefix: see :func:`row_segments`)."""


def read_text_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file (stage 0 corpus, stage 1 unit text), without their newline.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataError: if it is not UTF-8 or holds no text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"training data {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines:
        raise DataError(f"{path}: no text (the file is empty or blank)")
    return lines


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a stage-2/3 JSONL file, each checked to hold string ``prefix`` and ``plain_text``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataError: for malformed JSON (with its line number), a record without the fields, or no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"training data {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    records = []
    for number, record in enumerate(read_jsonl(path), start=1):
        missing = [f for f in RECORD_FIELDS if not isinstance(record.get(f), str)]
        if missing:
            raise DataError(
                f"{path}: record {number} lacks string field(s) {', '.join(missing)} (has {', '.join(record) or '-'})"
            )
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def encode_text_lines(lines: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids of plain text lines as ``<s> text </s>`` (stage 0).

    Raises:
        DataError: if the tokenizer has no BOS or EOS token (a causal LM needs both to delimit lines).
    """
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise DataError("the tokenizer needs a bos and an eos token to delimit lines")
    encoded = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] for ids in encoded]


def encode_unit_lines(lines: Sequence[str], encoder: PromptEncoder, *, source: str = "unit text") -> list[list[int]]:
    """Token ids of stage-1 lines (``<sosp><12>...<eosp>``) as ``<s> <sosp> units <eosp> </s>``.

    Raises:
        DataError: for a line that is not a unit string, naming the line number.
    """
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(encoder.encode_unit_text(line.strip(), add_bos=True, add_eos=True))
        except ValueError as e:
            raise DataError(f"{source}: line {number}: {e}") from e
    return out


def encode_records(
    records: Sequence[dict[str, Any]],
    encoder: PromptEncoder,
    *,
    train_on_inputs: bool = False,
    max_length: int | None = None,
    source: str = "records",
) -> list[EncodedExample]:
    """Encode stage-2/3 records with :meth:`PromptEncoder.encode_record` (loss on the response by default).

    Examples without any label left (e.g. truncated before the response) are dropped with a warning.

    Raises:
        DataError: for a record the encoder rejects, naming its position.
    """
    examples = []
    dropped = 0
    for number, record in enumerate(records, start=1):
        try:
            example = encoder.encode_record(record, train_on_inputs=train_on_inputs, max_length=max_length)
        except ValueError as e:
            raise DataError(f"{source}: record {number}: {e}") from e
        if all(label == IGNORE_INDEX for label in example.labels[1:]):
            dropped += 1
            continue
        examples.append(example)
    if dropped:
        logger.warning(
            "%s: dropped %d record(s) with no tokens to learn (response cut by max_length?)", source, dropped
        )
    if not examples:
        raise DataError(f"{source}: no record has a response within max_length={max_length}")
    return examples


def pack_blocks(sequences: Iterable[Sequence[int]], block_size: int) -> list[Row]:
    """Concatenate token sequences and cut the stream into rows of ``block_size`` (the last may be shorter).

    The released stage-1 packing: attention runs across line boundaries within a block (each line carries its own
    ``<s> ... </s>``), and every token is a label.

    Raises:
        ValueError: if ``block_size`` < 2.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    stream = [token for sequence in sequences for token in sequence]
    rows = []
    for start in range(0, len(stream), block_size):
        block = stream[start : start + block_size]
        if len(block) >= 2:  # a single token predicts nothing
            rows.append({"input_ids": block, "labels": list(block)})
    return rows


def _place(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: example indices grouped into bins of at most ``capacity`` tokens, deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted: the tightest fit is found by bisection
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            room -= lengths[i]
        else:
            b = len(bins)
            bins.append([i])
            room = capacity - lengths[i]
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def _fill_in_shuffled_order(lengths: Sequence[int], capacity: int, seed: int) -> list[list[int]]:
    """Example indices in a seeded random order, cut into bins of at most ``capacity`` tokens as they come."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    bins: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and used + lengths[i] > capacity:
            bins.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        bins.append(current)
    return bins


def shared_prefix_length(examples: Sequence[EncodedExample]) -> int:
    """Leading tokens that every example shares and that a packed row may therefore hold once.

    The longest common prefix of the examples' ``input_ids`` such that, in every example, no token of it and not
    the token right after it carries a label, and at least one token follows it. Sharing such a prefix changes no
    loss: the prefix is never a target, and the first token after it (predicted from the prefix in the unpacked
    example, from the previous example in the row) is not one either. 0 when there is nothing to share.
    """
    if not examples:
        return 0
    first = examples[0].input_ids
    length = min(len(e.input_ids) for e in examples) - 1
    for example in examples:
        ids, labels = example.input_ids, example.labels
        common = 0
        while common < length and ids[common] == first[common]:
            common += 1
        length = common
        # Position 0's label is never used (nothing predicts the first token); 1..length must be unlabelled.
        while length > 0 and any(label != IGNORE_INDEX for label in labels[1 : length + 1]):
            length -= 1
        if length == 0:
            return 0
    return length


def pack_examples(
    examples: Sequence[EncodedExample], max_length: int, *, seed: int = 0, share_prefix: bool = False
) -> list[Row]:
    """Pack encoded examples into rows of at most ``max_length`` tokens, with no attention across examples.

    Each row concatenates whole examples (best-fit decreasing, so rows are nearly full); ``position_ids`` restart
    at 0 for each example, and each example's first label is :data:`IGNORE_INDEX` (it would otherwise be
    predicted from the previous example). Rows are shuffled with ``seed`` so that long and short mixes interleave.

    With ``share_prefix``, each row starts with the examples' :func:`shared_prefix_length` tokens once, followed by
    the rest of each example, whose position ids continue from the prefix (train with
    :data:`SEGMENTED_ATTENTION`, which lets those segments attend to the prefix). Such a row is a training step's
    worth of examples rather than a long sequence, so it is filled in a seeded random order, like the batches of a
    shuffled sampler: best-fit grouping put examples of one length together, and the demo's stage 2 then learned
    transcription worse (held-out WER 0.40 against 0.35 in random order; 0.32 padded, 1.7x slower). Without a
    shared prefix of at least 2 tokens the rows are packed as without ``share_prefix``.

    Raises:
        ValueError: if an example is longer than ``max_length`` (encode with ``max_length`` to truncate).
    """
    lengths = [len(e.input_ids) for e in examples]
    too_long = [n for n in lengths if n > max_length]
    if too_long:
        raise ValueError(f"{len(too_long)} example(s) longer than max_length={max_length} (longest {max(too_long)})")
    prefix = shared_prefix_length(examples) if share_prefix else 0
    if prefix < 2:
        prefix = 0
    rows: list[Row] = []
    if prefix:
        groups = _fill_in_shuffled_order([n - prefix for n in lengths], max_length - prefix, seed)
    else:
        groups = [sorted(members) for members in _place(lengths, max_length)]
    for members in groups:
        input_ids: list[int] = list(examples[0].input_ids[:prefix])
        labels: list[int] = [IGNORE_INDEX] * prefix
        positions: list[int] = list(range(prefix))
        for i in members:
            example = examples[i]
            input_ids.extend(example.input_ids[prefix:])
            labels.append(IGNORE_INDEX)
            labels.extend(example.labels[prefix + 1 :])
            positions.extend(range(prefix, len(example.input_ids)))
        rows.append({"input_ids": input_ids, "labels": labels, "position_ids": positions})
    random.Random(seed).shuffle(rows)
    return rows


def pad_examples(examples: Sequence[EncodedExample]) -> list[Row]:
    """One row per example (the padded baseline; :class:`RowCollator` pads each batch to its longest row)."""
    return [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in examples]


@dataclass(frozen=True)
class PackingStats:
    """How full the rows are: useful tokens over the tokens a batch of ``batch_size`` rows would compute."""

    rows: int
    examples: int
    tokens: int
    """Non-pad tokens in all rows."""
    example_tokens: int
    """Tokens of the examples as if unpacked: ``tokens`` plus a shared prefix once more per further example."""
    label_tokens: int
    """Tokens that carry loss."""
    padded_tokens: int
    """Tokens computed when batches of ``batch_size`` consecutive rows are padded to their longest row."""

    @property
    def fill(self) -> float:
        """``tokens / padded_tokens``: 1.0 means no padding at all."""
        return self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    @classmethod
    def of(cls, rows: Sequence[Row], batch_size: int) -> PackingStats:
        """Statistics of ``rows`` batched in order (``tokens`` counts a row's shared prefix once)."""
        lengths = [len(r["input_ids"]) for r in rows]
        padded = sum(
            max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size])
            for i in range(0, len(lengths), batch_size)
        )
        counts = [_examples_and_tokens(r) for r in rows]
        labels = sum(sum(1 for label in r["labels"] if label != IGNORE_INDEX) for r in rows)
        return cls(len(rows), sum(c[0] for c in counts), sum(lengths), sum(c[1] for c in counts), labels, padded)


class RowDataset(Dataset):
    """A map-style dataset of prepared rows (lists of ints; tensors are made per batch by :class:`RowCollator`)."""

    def __init__(self, rows: Sequence[Row]) -> None:
        if not rows:
            raise DataError("no training rows: the data is empty after encoding")
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Row:
        return self.rows[index]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    @property
    def num_tokens(self) -> int:
        """Non-pad tokens in all rows (one epoch)."""
        return sum(len(r["input_ids"]) for r in self.rows)


@dataclass
class RowCollator:
    """Pads a batch of rows to its longest row (rounded up to ``pad_to_multiple_of``) and makes tensors.

    Packed rows (with ``position_ids``) get no ``attention_mask``: the padding becomes one more segment whose
    positions restart at 0, so the block-diagonal mask keeps real tokens from seeing it. Plain rows get an
    ``attention_mask``. Pad tokens are labelled :data:`IGNORE_INDEX`. The batch also carries
    :data:`USEFUL_TOKENS_KEY`, the number of tokens of the examples it trains on (a shared prefix counts once per
    example, as it would unpacked), for throughput reporting.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[Row]) -> dict[str, Any]:
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in rows[0]
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        if packed:
            # Padding positions restart at 0: a segment of its own that no real token attends to.
            positions = torch.arange(width, dtype=torch.long).repeat(len(rows), 1)
            for i, n in enumerate(lengths):
                positions[i, n:] -= n
        else:
            attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(row["labels"], dtype=torch.long)
            if packed:
                positions[i, :n] = torch.tensor(row["position_ids"], dtype=torch.long)
            else:
                attention[i, :n] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
        if packed:
            batch["position_ids"] = positions
        else:
            batch["attention_mask"] = attention
        batch[USEFUL_TOKENS_KEY] = sum(_examples_and_tokens(row)[1] for row in rows)
        return batch


def _examples_and_tokens(row: Row) -> tuple[int, int]:
    """Examples in a row (one per segment) and their tokens as if unpacked: a segment that continues a shared
    prefix counts the prefix again."""
    if "position_ids" not in row:
        return 1, len(row["input_ids"])
    segments = row_segments(row["position_ids"])
    return len(segments), len(row["input_ids"]) + sum(first for _, _, first in segments)


# ------------------------------------------------------------------------------------------- packed attention

SEGMENTED_ATTENTION = "speechgpt_segmented_sdpa"
"""Name of the attention implementation that keeps the examples of a packed row apart (training only)."""


def row_segments(position_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, end, first position)`` of each segment of a packed row.

    A segment begins wherever the position id does not continue the previous one. A segment whose first position
    ``p`` is above 0 continues a shared prefix: the row's first ``p`` tokens, which must have positions ``0..p-1``.
    In a row from ``pack_examples(share_prefix=True)`` the first segment is the prefix with the first example's
    rest, and each further segment is the rest of one more example.

    Raises:
        ValueError: a segment continues a prefix that the row does not start with.
    """
    positions = list(position_ids)
    if not positions:
        return []
    starts = [0] + [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1]
    segments = [(a, b, positions[a]) for a, b in zip(starts, [*starts[1:], len(positions)], strict=True)]
    lead_end, lead_first = segments[0][1], segments[0][2]
    for start, _, first in segments[1:]:
        if first > 0 and (lead_first != 0 or lead_end < first):
            raise ValueError(
                f"packed row: the segment at {start} continues a {first}-token prefix, but the row starts with "
                f"positions {lead_first}..{lead_first + lead_end - 1}"
            )
    return segments


PER_SEGMENT_DEVICES = frozenset({"cpu"})
"""Device types on which :func:`segmented_attention` runs one sdpa call per segment of each row; elsewhere it runs
one call per layer with :func:`segment_mask`. On a GPU the per-segment loop costs far more than the attention the
mask makes it compute: it reads the positions back to the host every layer and launches small kernels per segment,
and the demo's stage 2 took 205.6 s on an H100 with it against 44.0 s with the mask. On 2 CPU cores the loop
skips the masked-out scores: 140 of the demo's stage-2 steps took 126 ms each with it against 133 with the mask
(means of alternating runs), and the demo's stage 2 took 266-303 s in runs with the loop against 330-348 s in
three runs with the mask (in a slower hour: the steps without attention were up to 10% slower too)."""


def segment_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Which keys each query of a packed batch may attend to: ``(B, 1, L, L)`` booleans, the mask form of
    :func:`row_segments` computed on the positions' device without reading them back.

    Query ``i`` sees key ``j <= i`` of its own segment, and every key before its segment's first position (the shared
    prefix a continuing segment attends to; none for a segment that starts at 0). Rows are not checked against
    :func:`row_segments`' rule (the prefix must open the row): the packers write rows that keep it.
    """
    length = position_ids.shape[-1]
    index = torch.arange(length, device=position_ids.device)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    segment = starts.cumsum(dim=-1)
    first = position_ids.gather(-1, torch.where(starts, index, 0).cummax(dim=-1).values)
    causal = index[None, :] <= index[:, None]
    same_segment = segment[:, :, None] == segment[:, None, :]
    in_prefix = index[None, None, :] < first[:, :, None]
    return (causal & (same_segment | in_prefix))[:, None]


def segmented_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each segment of a row (see :func:`row_segments`); a segment that continues a shared
    prefix also attends to all of it, as if the prefix were its own start.

    Shapes: query ``(B, H, L, D)``, key/value ``(B, H_kv, L, D)``; returns ``(B, L, H, D)`` like the
    transformers attention functions. Right padding needs no mask (no real token sees a later one), so a 2-D
    padding mask is ignored; anything else (a 4-D mask, a KV cache, no position ids) falls back to sdpa.

    On the devices of :data:`PER_SEGMENT_DEVICES` each segment is its own sdpa call; elsewhere one call per layer
    takes :func:`segment_mask`.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    if query.device.type not in PER_SEGMENT_DEVICES:
        output = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=segment_mask(position_ids), dropout_p=dropout, scale=scaling
        )
        return output.transpose(1, 2).contiguous(), None
    outputs = []
    for row, positions in enumerate(position_ids.tolist()):
        pieces = []
        for a, b, prefix in row_segments(positions):
            q, k, v = query[row : row + 1, :, a:b], key[row : row + 1, :, a:b], value[row : row + 1, :, a:b]
            mask = None
            if prefix > 0:  # keys: the shared prefix, then the segment itself (causally)
                k = torch.cat([key[row : row + 1, :, :prefix], k], dim=2)
                v = torch.cat([value[row : row + 1, :, :prefix], v], dim=2)
                mask = torch.ones(b - a, prefix + b - a, dtype=torch.bool, device=query.device).tril(prefix)
            pieces.append(
                torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=mask is None and b - a > 1
                )
            )
        outputs.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2))
    return torch.cat(outputs, dim=0).transpose(1, 2).contiguous(), None


def use_segmented_attention(model: torch.nn.Module) -> str:
    """Switch a transformers model (or a peft wrapper of one) to :data:`SEGMENTED_ATTENTION`.

    The mask builder does not know this implementation and builds no mask: rows are right-padded or packed with
    position restarts, which the segments handle. Returns the previous implementation, to restore before saving
    or generating.
    """
    from transformers import AttentionInterface

    if SEGMENTED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(SEGMENTED_ATTENTION, segmented_attention)
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = SEGMENTED_ATTENTION
    return previous
