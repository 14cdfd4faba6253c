"""Rows for training: block packing, example packing without cross-attention, masking token by token, collation."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from speechgpt.jsonl import JsonlError
from speechgpt.lm import EncodedExample, PromptEncoder, create_model, load_model, tiny_llama_config
from speechgpt.prompt_format import EOA, META_INSTRUCTION, RESPONSE_OPEN
from speechgpt.train.data import (
    IGNORE_INDEX,
    SEGMENTED_ATTENTION,
    USEFUL_TOKENS_KEY,
    DataError,
    PackingStats,
    RowCollator,
    encode_records,
    encode_unit_lines,
    pack_blocks,
    pack_examples,
    pad_examples,
    read_records,
    read_text_lines,
    row_segments,
    segment_mask,
    shared_prefix_length,
    use_segmented_attention,
)
from tests.train import (
    TINY_MODEL,
    chain_of_modality_records,
    cross_modal_records,
    make_base_model,
    unit_lines,
    write_lines,
    write_records,
)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> PromptEncoder:
    path = make_base_model(tmp_path_factory.mktemp("base") / "model", expanded=True)
    _, tokenizer = load_model(path, device="cpu")
    return PromptEncoder(tokenizer)


def test_pack_blocks_concatenates_and_cuts() -> None:
    rows = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert [r["input_ids"] for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the lone last token predicts nothing
    assert all(r["labels"] == r["input_ids"] for r in rows)
    assert "position_ids" not in rows[0]
    with pytest.raises(ValueError, match="block_size"):
        pack_blocks([[1, 2]], 1)


def _examples() -> list[EncodedExample]:
    lengths = [7, 3, 5, 9, 2, 6, 4, 8]
    examples = []
    start = 10
    for n in lengths:
        ids = list(range(start, start + n))
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]
        examples.append(EncodedExample(input_ids=ids, labels=labels))
        start += n
    return examples


def test_pack_examples_places_every_example_once_with_restarts() -> None:
    examples = _examples()
    rows = pack_examples(examples, 12, seed=0)
    assert all(len(r["input_ids"]) <= 12 for r in rows)
    # Best-fit decreasing fills 44 tokens into 4 rows of 12 (a padded batch would need 8 rows).
    assert len(rows) == 4
    found = []
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in itertools.pairwise(starts):
            segment = row["input_ids"][a:b]
            original = next(e for e in examples if e.input_ids == segment)
            assert row["position_ids"][a:b] == list(range(b - a))
            # The first label of every example is masked: it would be predicted from the previous example.
            assert row["labels"][a:b] == [IGNORE_INDEX, *original.labels[1:]]
            found.append(segment[0])
    assert sorted(found) == sorted(e.input_ids[0] for e in examples)
    assert pack_examples(examples, 12, seed=0) == rows  # deterministic
    with pytest.raises(ValueError, match="longer than max_length=8"):
        pack_examples(examples, 8)


def test_packing_stats_and_fill() -> None:
    examples = _examples()
    padded = PackingStats.of(pad_examples(examples), batch_size=4)
    packed = PackingStats.of(pack_examples(examples, 12), batch_size=4)
    assert padded.tokens == packed.tokens == 44
    assert (padded.examples, packed.examples) == (8, 8)
    # Padded batches in order: [7,3,5,9] -> 4*9, [2,6,4,8] -> 4*8.
    assert padded.padded_tokens == 36 + 32
    assert packed.fill > padded.fill
    assert packed.label_tokens == sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in examples)


def test_collator_pads_plain_rows_with_an_attention_mask() -> None:
    batch = RowCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX], [8, 9, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert "position_ids" not in batch
    assert batch[USEFUL_TOKENS_KEY] == 5


def test_collator_gives_packed_padding_its_own_segment() -> None:
    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, 6, IGNORE_INDEX, 8], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [9, 10], "labels": [IGNORE_INDEX, 10], "position_ids": [0, 1]},
    ]
    batch = RowCollator(pad_token_id=3)(rows)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 3, 3]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 10, IGNORE_INDEX, IGNORE_INDEX]
    assert batch[USEFUL_TOKENS_KEY] == 6


def test_response_masking_token_by_token(encoder: PromptEncoder) -> None:
    record = cross_modal_records(2)[1]  # text -> speech: the response is a unit string
    example = encode_records([record], encoder, source="test")[0]
    response = record["plain_text"].split(RESPONSE_OPEN, 1)[1]
    learned = [(i, token) for i, (token, label) in enumerate(zip(example.input_ids, example.labels, strict=True))]
    labelled = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    # Labels are the input ids themselves (the model shifts them), and exactly a contiguous tail is learned.
    assert all(example.labels[i] == example.input_ids[i] for i in labelled)
    assert labelled == list(range(labelled[0], len(example.input_ids)))
    # That tail is the response through <eoa>, then the tokenizer's eos; nothing of the prompt.
    tail = [token for i, token in learned if i in set(labelled)]
    assert tail[-1] == encoder.eos_id
    assert encoder.decode(tail, stop_at_eos=True) == response
    assert response.endswith(EOA) and response.startswith("<sosp>")
    prompt = encoder.decode(example.input_ids[: labelled[0]], stop_at_eos=False)
    assert prompt == META_INSTRUCTION + record["plain_text"].split(RESPONSE_OPEN, 1)[0] + RESPONSE_OPEN

    everything = encode_records([record], encoder, train_on_inputs=True, source="test")[0]
    assert everything.input_ids == example.input_ids
    assert everything.labels[0] == IGNORE_INDEX  # only the bos carries no loss
    assert everything.labels[1:] == everything.input_ids[1:]


def test_records_cut_before_the_response_are_dropped(encoder: PromptEncoder) -> None:
    records = chain_of_modality_records(3)
    full = [len(e.input_ids) for e in encode_records(records, encoder, source="test")]
    prompt_length = len(encoder.encode_trusted(META_INSTRUCTION)) + 5
    kept = encode_records(records, encoder, max_length=max(full), source="test")
    assert [len(e.input_ids) for e in kept] == full
    with pytest.raises(DataError, match="no record has a response within max_length"):
        encode_records(records, encoder, max_length=prompt_length, source="test")


def _segments(position_ids: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return list(itertools.pairwise(starts))


def test_segment_mask_is_the_mask_of_row_segments() -> None:
    rows = [[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 2, 3, 2, 3, 0], list(range(9))]
    mask = segment_mask(torch.tensor(rows))
    assert mask.shape == (3, 1, 9, 9) and mask.dtype == torch.bool
    for r, positions in enumerate(rows):
        expected = torch.zeros(9, 9, dtype=torch.bool)
        for a, b, prefix in row_segments(positions):
            for query in range(a, b):
                expected[query, :prefix] = True  # the shared prefix the segment continues
                expected[query, a : query + 1] = True  # its own segment, causally
        assert torch.equal(mask[r, 0], expected)
    # Row 2 by hand: the second example continues a 2-token prefix; the last token (padding) sees only itself.
    assert mask[1, 0, 5].tolist() == [True, True, False, False, True, True, False, False, False]
    assert mask[1, 0, 8].tolist() == [False] * 8 + [True]


def _one_masked_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the segmented kernel take its accelerator path (one sdpa call with :func:`segment_mask`) on the CPU."""
    monkeypatch.setattr("speechgpt.train.data.PER_SEGMENT_DEVICES", frozenset())


@pytest.mark.parametrize("attention", ["sdpa", "eager", "segmented", "segmented_one_mask"])
def test_packed_loss_equals_unpacked_loss(
    encoder: PromptEncoder, attention: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_llama_config(len(encoder.tokenizer), **TINY_MODEL, max_position_embeddings=512)
    config.initializer_range = 0.2  # a random model whose outputs depend clearly on the context
    model = create_model(config, seed=3, attn_implementation="eager" if attention == "eager" else "sdpa").eval()
    model.config.use_cache = False
    if attention == "segmented_one_mask":
        _one_masked_call(monkeypatch)
    if attention.startswith("segmented"):
        assert use_segmented_attention(model) == "sdpa"
        assert model.config._attn_implementation == SEGMENTED_ATTENTION
    records = cross_modal_records(6) + chain_of_modality_records(3)
    examples = encode_records(records, encoder, source="test")
    rows = pack_examples(examples, 512, seed=0)
    assert len(rows) < len(examples)  # several examples share a row
    collate = RowCollator(pad_token_id=encoder.tokenizer.pad_token_id, pad_to_multiple_of=8)

    with torch.no_grad():
        packed = collate(rows)
        packed.pop(USEFUL_TOKENS_KEY)
        packed_out = model(**packed)
        padded = collate(pad_examples(examples))
        padded.pop(USEFUL_TOKENS_KEY)
        padded_loss = model(**padded).loss.item()
        alone_logits = {tuple(e.input_ids): model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in examples}
        leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
        leaky_logits = model(**leaky).logits

    # Every token's logits in a packed row are those of its example run alone.
    worst, worst_leaky = 0.0, 0.0
    for r, row in enumerate(rows):
        for a, b in _segments(row["position_ids"]):
            alone = alone_logits[tuple(row["input_ids"][a:b])]
            worst = max(worst, (packed_out.logits[r, a:b] - alone).abs().max().item())
            if a > 0:
                worst_leaky = max(worst_leaky, (leaky_logits[r, a:b] - alone).abs().max().item())
    assert worst < 1e-4
    # Without the position restarts examples would attend to the ones before them: clearly different logits.
    assert worst_leaky > 1e-2

    # The loss: the sum of the examples' token losses over their count, packed, padded or alone.
    total, count = 0.0, 0
    for example in examples:
        targets = torch.tensor(example.labels[1:])
        keep = targets != IGNORE_INDEX
        logits = alone_logits[tuple(example.input_ids)][:-1]
        total += torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum").item()
        count += int(keep.sum())
    assert packed_out.loss.item() == pytest.approx(total / count, abs=1e-5)
    assert padded_loss == pytest.approx(total / count, abs=1e-5)


def _ignored(n: int) -> list[int]:
    return [IGNORE_INDEX] * n


def test_shared_prefix_length_stops_at_labels_and_differences() -> None:
    def example(ids: list[int], learned_from: int) -> EncodedExample:
        return EncodedExample(ids, _ignored(learned_from) + ids[learned_from:])

    same_start = [example([1, 2, 3, 4, 5, 6], 5), example([1, 2, 3, 4, 7, 8, 9], 5), example([1, 2, 3, 9, 9, 9], 4)]
    assert shared_prefix_length(same_start) == 3  # the third differs at index 3
    # The token right after the prefix must be unlabelled too (it is predicted from the previous example when packed).
    assert shared_prefix_length([example([1, 2, 3, 4, 5], 3), example([1, 2, 3, 4, 6], 5)]) == 2
    # At least one token stays after the prefix, and position 0's label is never used.
    assert shared_prefix_length([EncodedExample([1, 2, 3], [1, *_ignored(2)])] * 2) == 2
    assert shared_prefix_length([example([1, 2, 3], 1), example([1, 2, 4], 1)]) == 0
    assert shared_prefix_length([example([5, 2, 3], 3), example([1, 2, 3], 3)]) == 0
    assert shared_prefix_length([]) == 0


def test_shared_prefix_rows_hold_the_prefix_once() -> None:
    prefix = [50, 51, 52, 53]
    tails = [[10, 11, 12], [20, 21], [30, 31, 32, 33], [40, 41, 42]]
    examples = [EncodedExample(prefix + t, _ignored(len(prefix) + 1) + t[1:]) for t in tails]
    rows = pack_examples(examples, 12, seed=0, share_prefix=True)
    # Filled in a seeded random order (tails 4, 3 | 2, 3 with seed 0), each row within 12 tokens.
    assert sorted(len(r["input_ids"]) for r in rows) == [9, 11]
    assert pack_examples(examples, 12, seed=0, share_prefix=True) == rows
    assert pack_examples(examples, 12, seed=1, share_prefix=True) != rows
    seen = []
    for row in rows:
        assert row["input_ids"][:4] == prefix and row["labels"][:4] == _ignored(4)
        segments = row_segments(row["position_ids"])
        # The first example's rest runs on from the prefix; each further one continues it at position 4.
        assert segments[0][0] == 0 and segments[0][2] == 0
        seen.append(row["input_ids"][4 : segments[0][1]])
        for a, b, first in segments[1:]:
            tail = row["input_ids"][a:b]
            assert first == 4 and row["position_ids"][a:b] == list(range(4, 4 + len(tail)))
            assert row["labels"][a:b] == [IGNORE_INDEX, *tail[1:]]
            seen.append(tail)
    assert sorted(seen) == sorted(tails)
    stats = PackingStats.of(rows, batch_size=2)
    assert (stats.examples, stats.tokens, stats.example_tokens) == (4, 20, 4 * 4 + 12)
    batch = RowCollator(pad_token_id=0)(rows)
    assert batch[USEFUL_TOKENS_KEY] == 4 * 4 + 12  # the tokens of the examples as if unpacked
    # Without a shared prefix of 2+ tokens the rows are ordinary packed rows.
    assert pack_examples(examples, 12, share_prefix=False) != rows
    lone = [EncodedExample([9, *t], [IGNORE_INDEX, *t]) for t in tails]
    assert all(r["position_ids"][0] == 0 for r in pack_examples(lone, 12, share_prefix=True))


def test_row_segments_rejects_a_prefix_the_row_lacks() -> None:
    assert row_segments([0, 1, 2, 0, 1, 0]) == [(0, 3, 0), (3, 5, 0), (5, 6, 0)]
    assert row_segments([]) == []
    assert row_segments([0, 1, 2, 3, 2, 3, 3]) == [(0, 4, 0), (4, 6, 2), (6, 7, 3)]
    with pytest.raises(ValueError, match="continues a 3-token prefix"):
        row_segments([0, 1, 3, 4])
    with pytest.raises(ValueError, match="continues a 2-token prefix"):
        row_segments([1, 2, 2])


@pytest.mark.parametrize("one_mask", [False, True], ids=["per_segment", "one_mask"])
def test_shared_prefix_packing_gives_the_unpacked_logits_loss_and_gradients(
    encoder: PromptEncoder, one_mask: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if one_mask:
        _one_masked_call(monkeypatch)
    config = tiny_llama_config(len(encoder.tokenizer), **TINY_MODEL, max_position_embeddings=1024)
    config.initializer_range = 0.2
    model = create_model(config, seed=3, attn_implementation="sdpa")
    model.config.use_cache = False
    use_segmented_attention(model)
    records = cross_modal_records(6) + chain_of_modality_records(3)
    examples = encode_records(records, encoder, source="test")
    prefix = shared_prefix_length(examples)
    assert prefix >= len(encoder.encode_trusted(META_INSTRUCTION))  # the meta instruction at least
    rows = pack_examples(examples, 1024, seed=0, share_prefix=True)
    assert len(rows) < len(examples)
    collate = RowCollator(pad_token_id=encoder.tokenizer.pad_token_id, pad_to_multiple_of=8)
    shared = collate(rows)
    assert shared.pop(USEFUL_TOKENS_KEY) == sum(len(e.input_ids) for e in examples)
    assert shared["input_ids"].numel() < 0.75 * sum(len(e.input_ids) for e in examples)
    padded = collate(pad_examples(examples))
    padded.pop(USEFUL_TOKENS_KEY)

    def loss_and_grads(batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out.loss.detach(), out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    shared_loss, shared_logits, shared_grads = loss_and_grads(shared)
    padded_loss, padded_logits, padded_grads = loss_and_grads(padded)
    assert shared_loss.item() == pytest.approx(padded_loss.item(), abs=1e-5)
    worst = max((shared_grads[n] - padded_grads[n]).abs().max().item() for n in padded_grads)
    scale = max(g.abs().max().item() for g in padded_grads.values())
    assert worst < 1e-4 * scale
    # Each example's tokens get the logits they get padded (a continued segment's prefix is computed once).
    by_ids = {tuple(e.input_ids): i for i, e in enumerate(examples)}
    checked = 0
    for r, row in enumerate(rows):
        for a, b, first in row_segments(row["position_ids"]):
            i = by_ids[tuple(row["input_ids"][:first] + row["input_ids"][a:b])]
            difference = (shared_logits[r, a:b] - padded_logits[i, first : first + b - a]).abs().max().item()
            assert difference < 1e-4
            checked += 1
    assert checked == len(examples)
    # Without the continuation the segments would not see the prefix: clearly different logits.
    with torch.no_grad():
        alone = dict(
            shared, position_ids=shared["position_ids"] - torch.where(shared["position_ids"] >= prefix, prefix, 0)
        )
        cut_logits = model(**alone).logits
    a, b, _ = row_segments(rows[0]["position_ids"])[1]
    assert (cut_logits[0, a:b] - shared_logits[0, a:b]).abs().max().item() > 1e-2


def test_read_records_names_the_bad_record(tmp_path) -> None:
    good = cross_modal_records(2)
    path = write_records(tmp_path / "data.jsonl", [*good, {"id": "x", "prefix": META_INSTRUCTION}])
    with pytest.raises(DataError, match=r"data\.jsonl: record 3 lacks string field\(s\) plain_text"):
        read_records(path)
    path.write_text(json.dumps(good[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(JsonlError, match=r"data\.jsonl:2: not valid JSON"):
        read_records(path)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        read_records(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl does not exist"):
        read_records(tmp_path / "missing.jsonl")
    assert read_records(write_records(tmp_path / "ok.jsonl", good)) == good


def test_read_text_lines_and_unit_lines(tmp_path, encoder: PromptEncoder) -> None:
    path = write_lines(tmp_path / "units.txt", ["", *unit_lines(3), "  "])
    lines = read_text_lines(path)
    assert lines == unit_lines(3)
    sequences = encode_unit_lines(lines, encoder)
    vocab = encoder.vocab
    for sequence in sequences:
        assert sequence[:2] == [encoder.bos_id, vocab.sosp_id]
        assert sequence[-2:] == [vocab.eosp_id, encoder.eos_id]
        assert all(vocab.is_unit(t) for t in sequence[2:-2])
    with pytest.raises(DataError, match=r"units\.txt: line 2: stage-1 line"):
        encode_unit_lines([lines[0], "hello world"], encoder, source="units.txt")
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        read_text_lines(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_text_lines(tmp_path / "latin1.txt")
