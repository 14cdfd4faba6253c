"""Speech recognition through the model itself: WER/CER of SpeechGPT's cross-modal speech→text path.

SpeechGPT learns ASR from SpeechInstruct's cross-modal records, ``{template} This is input: <sosp>...<eosp>``
answered by the transcript. :func:`evaluate_asr` asks exactly that: for every test recording, one user turn made of
a speech→text instruction (one of the packaged templates, chosen per item by a stable hash, so two runs ask the
same thing) and the audio, which the pipeline turns into units. The hypothesis is the reply's text (the layout has
no ``[ta]``, so the whole response is the text); scores are corpus-level WER and CER after
:func:`speechgpt.eval.text_norm.normalize_text`, overall and per voice (or speaker), with one row per utterance
kept for the report.

Test sets are JSON Lines manifests (:func:`read_eval_manifest`); the speech world's ``speech_test.jsonl`` is one.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from speechgpt.audio import AudioError, audio_duration
from speechgpt.data.templates import Direction, load_templates, pick_template
from speechgpt.eval.metrics import ErrorReport, error_rates
from speechgpt.jsonl import read_jsonl
from speechgpt.manifest import ManifestError

if TYPE_CHECKING:
    from speechgpt.infer import GenerationOptions, Reply, SpeechGPT

logger = logging.getLogger(__name__)

__all__ = [
    "ASR_MAX_NEW_TOKENS",
    "AsrResult",
    "AsrRow",
    "EvalItem",
    "ProgressFn",
    "evaluate_asr",
    "read_eval_manifest",
    "sample_items",
    "select_evenly",
]

ASR_MAX_NEW_TOKENS = 200
"""Default generation budget of one transcript (the world's sentences are well under 100 tokens)."""
GROUP_FIELDS = ("voice", "speaker")
"""Manifest fields that name who speaks, tried in this order, for the per-voice breakdown."""
SAMPLE_SEED = 0
"""Seed of :func:`sample_items`: ``--limit N`` picks the same items on every run."""
ASR_KEY_SUFFIX = "-asr"
"""Template choice key ``{item id}-asr``: the key the SpeechInstruct builders use for an item's ASR record."""

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``, called after every item."""

T = TypeVar("T")


@dataclass(frozen=True)
class EvalItem:
    """One test recording and what is said in it.

    Attributes:
        id: Unique name within the test set.
        audio: Path of the recording.
        text: The reference transcript.
        group: Who speaks (voice or speaker name) for the per-group breakdown; ``""`` when unknown.
        extra: The manifest's other fields (``kind``, ``family``, ``voice_split``, ...), kept as given.
    """

    id: str
    audio: str
    text: str
    group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AsrRow:
    """One scored utterance: the reference, what the model wrote, and their own WER/CER."""

    id: str
    group: str
    ref: str
    hyp: str
    wer: float
    cer: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "group": self.group, "ref": self.ref, "hyp": self.hyp, "wer": self.wer, "cer": self.cer}


@dataclass
class AsrResult:
    """What :func:`evaluate_asr` measured.

    Attributes:
        report: Corpus-level WER/CER, with ``report.groups`` per voice/speaker.
        rows: One :class:`AsrRow` per scored item, in input order.
        failures: ``(item id, reason)`` of items that could not be run (unreadable audio, prompt too long).
        truncated: Replies that hit ``max_new_tokens`` before ending.
        seconds: Wall time of the whole evaluation.
        audio_seconds: Duration of the scored recordings.
    """

    report: ErrorReport
    rows: list[AsrRow]
    failures: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0

    @property
    def wer(self) -> float:
        return self.report.wer

    @property
    def cer(self) -> float:
        return self.report.cer

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``kind``, ``wer``, ``cer``, counts, ``groups``, ``rows``, ``failures`` and timing."""
        return {
            "kind": "asr",
            **self.report.to_dict(),
            "truncated": self.truncated,
            "failures": [{"id": i, "error": e} for i, e in self.failures],
            "seconds": self.seconds,
            "audio_seconds": self.audio_seconds,
            "rows": [row.to_dict() for row in self.rows],
        }


def select_evenly(items: Sequence[T], limit: int | None) -> list[T]:
    """At most ``limit`` items, every ``len / limit``-th one, in their order.

    Keeps the proportions of a list sorted by a category (e.g. QA records by family). For test manifests that cycle
    through voices prefer :func:`sample_items`, which cannot alias with the cycle.

    Raises:
        ValueError: ``limit`` is below 1.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit is None or limit >= len(items):
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def sample_items(items: Sequence[T], limit: int | None, *, seed: int = SAMPLE_SEED) -> list[T]:
    """At most ``limit`` of ``items``: a seeded random sample (the same on every run), kept in manifest order.

    Test manifests are ordered (by split, by family) and often cycle through voices, so the first ``limit`` items
    would test one split, and every ``len / limit``-th item could hit the same voice every time; a random sample
    does neither.

    Raises:
        ValueError: ``limit`` is below 1.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit is None or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def read_eval_manifest(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    where: Mapping[str, str] | None = None,
) -> list[EvalItem]:
    """The test items of a JSON Lines manifest with ``audio`` and ``text`` fields (``voice`` or ``speaker``, ``id``
    optional).

    Relative audio paths are resolved against the manifest's folder. Items without ``id`` are named by their
    ``audio`` field.

    Args:
        path: The manifest (e.g. the speech world's ``speech_test.jsonl``).
        limit: Keep at most this many: a seeded random sample of the (filtered) manifest (:func:`sample_items`).
        where: Keep only records whose fields equal these values, e.g. ``{"voice_split": "heldout"}``.

    Raises:
        FileNotFoundError: the manifest is missing.
        JsonlError: a line is not a JSON object (naming the line).
        ManifestError: a record lacks ``audio`` or ``text``, repeats an id, or no record is left.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    filters = {str(k): str(v) for k, v in (where or {}).items()}
    for number, record in enumerate(read_jsonl(path), start=1):
        audio, text = record.get("audio"), record.get("text")
        if not isinstance(audio, str) or not audio:
            raise ManifestError(f"{path}: record {number} has no 'audio' path string")
        if not isinstance(text, str):
            raise ManifestError(f"{path}: record {number} has no 'text' string")
        if any(str(record.get(key)) != value for key, value in filters.items()):
            continue
        item_id = record.get("id")
        item_id = item_id if isinstance(item_id, str) and item_id else audio
        if item_id in seen:
            raise ManifestError(f"{path}: record {number} repeats id {item_id!r} of record {seen[item_id]}")
        seen[item_id] = number
        group = next((str(record[k]) for k in GROUP_FIELDS if record.get(k) not in (None, "")), "")
        resolved = Path(audio).expanduser()
        resolved = resolved if resolved.is_absolute() else path.parent / resolved
        extra = {k: v for k, v in record.items() if k not in ("id", "audio", "text")}
        items.append(EvalItem(id=item_id, audio=str(resolved), text=text, group=group, extra=extra))
    if not items:
        detail = f" matching {filters}" if filters else ""
        raise ManifestError(f"{path}: no records{detail}")
    return sample_items(items, limit)


def default_options(max_new_tokens: int = ASR_MAX_NEW_TOKENS) -> GenerationOptions:
    """Greedy decoding (scores must not depend on a sampler's luck) with the cross-modal layout (no output cue)."""
    from speechgpt.infer import GenerationOptions

    return GenerationOptions(temperature=0.0, max_new_tokens=max_new_tokens, output_modality="auto", seed=0)


def cross_modal_options(options: GenerationOptions | None, max_new_tokens: int, task: str) -> GenerationOptions:
    """``options`` checked for a cross-modal task: those records carry no output cue, so the modality must be auto.

    Raises:
        ValueError: ``options.output_modality`` is not ``auto``.
    """
    from speechgpt.infer import OutputModality

    if options is None:
        return default_options(max_new_tokens)
    if OutputModality(options.output_modality) != OutputModality.AUTO:
        raise ValueError(
            f"{task} evaluation asks with the cross-modal instruction layout, which has no output cue; "
            f"options.output_modality must be 'auto', got {OutputModality(options.output_modality).value!r}"
        )
    return options


def asr_messages(item: EvalItem, template: str) -> list[dict[str, Any]]:
    """The one user turn of an ASR request: the instruction text, then the recording."""
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": template}, {"type": "audio", "audio": Path(item.audio)}],
        }
    ]


def reply_text(reply: Reply) -> str:
    """The reply's text answer, or its transcript when the model put everything before a ``[ta]``."""
    return reply.text if reply.text.strip() else reply.transcript


def evaluate_asr(
    pipeline: SpeechGPT,
    items: Sequence[EvalItem],
    *,
    options: GenerationOptions | None = None,
    template_seed: int = 0,
    progress: ProgressFn | None = None,
) -> AsrResult:
    """Transcribe every item with the model's cross-modal speech→text instruction and score the transcripts.

    Args:
        pipeline: A loaded :class:`~speechgpt.infer.SpeechGPT` with a speech tokenizer.
        items: The test recordings (see :func:`read_eval_manifest`).
        options: Generation options; greedy with :data:`ASR_MAX_NEW_TOKENS` when None. ``output_modality`` must
            be ``auto`` (the cross-modal layout has no output cue).
        template_seed: Changes which packaged speech→text template each item gets (reproducibly).
        progress: Called as ``progress(done, total)`` after each item.

    Returns:
        An :class:`AsrResult`; items whose audio cannot be read are listed in ``failures`` and not scored.

    Raises:
        ValueError: no items, non-auto ``output_modality``, or no item could be run at all.
    """
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence of EvalItem, got {type(items).__name__}")
    if not items:
        raise ValueError("no items to evaluate (items is empty)")
    options = cross_modal_options(options, ASR_MAX_NEW_TOKENS, "ASR")
    templates = load_templates(Direction.SPEECH_TO_TEXT)
    started = time.perf_counter()
    refs: list[str] = []
    hyps: list[str] = []
    kept: list[EvalItem] = []
    failures: list[tuple[str, str]] = []
    truncated = 0
    audio_seconds = 0.0
    for done, item in enumerate(items, start=1):
        template = pick_template(templates, key=f"{item.id}{ASR_KEY_SUFFIX}", seed=template_seed)
        try:
            reply = pipeline.chat(asr_messages(item, template), options)
            audio_seconds += audio_duration(item.audio)
        except (AudioError, ValueError) as e:
            logger.warning("ASR item %s skipped: %s", item.id, e)
            failures.append((item.id, str(e)))
        else:
            truncated += reply.finish_reason == "length"
            kept.append(item)
            refs.append(item.text)
            hyps.append(reply_text(reply))
        if progress is not None:
            progress(done, len(items))
    if not kept:
        raise ValueError(f"none of the {len(items)} item(s) could be evaluated; first error: {failures[0][1]}")
    report = error_rates(refs, hyps, groups=[item.group for item in kept])
    rows = []
    for item, ref, hyp in zip(kept, refs, hyps, strict=True):
        own = error_rates([ref], [hyp])
        rows.append(AsrRow(item.id, item.group, ref, hyp, own.wer, own.cer))
    return AsrResult(
        report=report,
        rows=rows,
        failures=failures,
        truncated=truncated,
        seconds=time.perf_counter() - started,
        audio_seconds=audio_seconds,
    )
