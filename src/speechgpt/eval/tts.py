"""Intelligibility of generated speech: text→speech through the model, and unit→speech through the vocoder alone.

Both are scored the same way: a **judge** ASR that never trained on the speech it judges transcribes the
waveform, and the WER/CER of that transcript against the text that should have been spoken is the score (lower is
more intelligible). Any object with ``transcribe(waves, *, sample_rate=None) -> list[str]`` is a judge
(:class:`Transcriber`): the embedded world's :class:`~speechgpt.eval.judge.JudgeASR`, or a local Hugging Face CTC
checkpoint through :class:`HFCTCJudge`; :func:`load_judge` opens either from a folder.

* :func:`evaluate_tts`: the model's cross-modal text→speech path, ``{template} This is input: {text}`` answered by
  ``<sosp>...<eosp>`` (template chosen per item from the packaged text→speech templates), then the bundle's vocoder.
  A reply without units counts as silence: every reference word is then a deletion.
* :func:`evaluate_resynthesis`: real held-out recordings → units (speech tokenizer) → vocoder → judge. The judge's
  WER on the original recordings is reported alongside as the **ceiling**: the vocoder cannot be judged better
  than the judge hears real speech.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from speechgpt.audio import AudioError, load_audio, write_wav
from speechgpt.constants import SAMPLE_RATE, WINDOW_LENGTH
from speechgpt.data.templates import Direction, load_templates, pick_template
from speechgpt.eval.asr import EvalItem, ProgressFn, cross_modal_options, sample_items
from speechgpt.eval.metrics import ErrorReport, error_rates
from speechgpt.eval.text_norm import normalize_text
from speechgpt.jsonl import read_jsonl
from speechgpt.manifest import ManifestError
from speechgpt.prompt_format import cross_modal_question

if TYPE_CHECKING:
    from speechgpt.infer import GenerationOptions, SpeechGPT
    from speechgpt.units.tokenizer import SpeechTokenizer
    from speechgpt.vocoder.base import Vocoder

logger = logging.getLogger(__name__)

__all__ = [
    "TTS_MAX_NEW_TOKENS",
    "HFCTCJudge",
    "ResynthesisResult",
    "ResynthesisRow",
    "TextItem",
    "Transcriber",
    "TtsResult",
    "TtsRow",
    "default_tts_options",
    "describe_judge",
    "evaluate_resynthesis",
    "evaluate_tts",
    "judge_transcripts",
    "load_judge",
    "read_text_items",
]

TTS_MAX_NEW_TOKENS = 512
"""Default generation budget of one spoken sentence (deduplicated units run at roughly 25-50 per second)."""
TTS_KEY_SUFFIX = "-tts"
"""Template choice key ``{item id}-tts``, as the SpeechInstruct builders key an item's TTS record."""
HF_CONFIG_NAME = "config.json"


@runtime_checkable
class Transcriber(Protocol):
    """A judge ASR: recordings in, normalised transcripts out (one per recording, in order)."""

    def transcribe(self, waves: Sequence[Any], *, sample_rate: int | None = None) -> list[str]: ...


class HFCTCJudge:
    """A local Hugging Face CTC checkpoint (``AutoModelForCTC`` + ``AutoProcessor``) with the judge's interface.

    Transcripts are greedy CTC decodes passed through :func:`normalize_text`, so they score like the embedded judge.

    Args:
        model: A CTC model (``logits`` of ``[B, T, vocab]``).
        processor: Its processor (feature extractor + CTC tokenizer).
        device: Where to run; CUDA when present, else CPU, when None.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, *, device: str | torch.device | None = None) -> None:
        from speechgpt.devices import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        extractor = getattr(processor, "feature_extractor", processor)
        self.sample_rate = int(getattr(extractor, "sampling_rate", SAMPLE_RATE))
        # Without an attention mask, padding changes what a model like wav2vec2-base hears: run items one by one.
        self.batchable = bool(getattr(extractor, "return_attention_mask", False))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device | None = None) -> HFCTCJudge:
        """Load a folder saved by ``save_pretrained`` of a CTC model and its processor (never downloads).

        Raises:
            FileNotFoundError: the folder or its ``config.json`` is missing.
            ValueError: the folder is not a loadable CTC model with a processor.
        """
        from transformers import AutoModelForCTC, AutoProcessor
        from transformers.utils import logging as hf_logging

        directory = Path(directory)
        if not (directory / HF_CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory}: no {HF_CONFIG_NAME}; not a Hugging Face model folder")
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
            model = AutoModelForCTC.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{directory}: not a loadable Hugging Face CTC model with a processor ({e})") from e
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return cls(model, processor, device=device)

    @torch.inference_mode()
    def _logits_ids(self, waves: list[np.ndarray]) -> list[list[int]]:
        inputs = self.processor(waves, sampling_rate=self.sample_rate, return_tensors="pt", padding=True)
        values = inputs["input_values"].to(self.device)
        mask = inputs.get("attention_mask")
        if mask is not None:
            logits = self.model(values, attention_mask=mask.to(self.device)).logits
            frames = getattr(self.model, "_get_feat_extract_output_lengths", None)
            lengths = frames(mask.sum(-1)).tolist() if frames else [logits.shape[1]] * len(waves)
        else:
            logits = self.model(values).logits
            lengths = [logits.shape[1]] * len(waves)
        best = logits.argmax(-1).cpu()
        return [best[i, : int(n)].tolist() for i, n in enumerate(lengths)]

    def transcribe(self, waves: Sequence[Any], *, sample_rate: int | None = None, batch_size: int = 8) -> list[str]:
        """Normalised transcripts of recordings (paths, file bytes, or arrays at ``sample_rate``, 16 kHz if None).

        Raises:
            AudioError: unreadable, empty or NaN audio (naming the item).
        """
        loaded = []
        for index, wave in enumerate(waves):
            rate = sample_rate
            if rate is None and isinstance(wave, np.ndarray | torch.Tensor):
                rate = SAMPLE_RATE  # arrays are 16 kHz unless told otherwise, as everywhere in the package
            loaded.append(load_audio(wave, sample_rate=rate, target_rate=self.sample_rate, name=f"item {index}"))
        size = batch_size if self.batchable else 1
        texts: list[str] = []
        for start in range(0, len(loaded), size):
            ids = self._logits_ids(loaded[start : start + size])
            decoded = self.processor.batch_decode(ids, skip_special_tokens=True)
            texts.extend(normalize_text(text) for text in decoded)
        return texts


def load_judge(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Transcriber:
    """Open a judge folder: our :class:`~speechgpt.eval.judge.JudgeASR`, or a Hugging Face CTC checkpoint.

    Raises:
        FileNotFoundError: no folder, or no ``config.json`` in it.
        ValueError: ``config.json`` is neither a judge's nor a Hugging Face model's.
    """
    from speechgpt.eval.judge import JUDGE_FORMAT, JudgeASR

    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such judge folder")
    config_path = directory / HF_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {HF_CONFIG_NAME}; expected a judge folder or a Hugging Face CTC model"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    if isinstance(config, dict) and config.get("format") == JUDGE_FORMAT:
        return JudgeASR.from_pretrained(directory, device=device)
    if isinstance(config, dict) and "model_type" in config:
        return HFCTCJudge.from_pretrained(directory, device=device)
    raise ValueError(
        f"{config_path}: neither a judge ('format': {JUDGE_FORMAT!r}) nor a Hugging Face model ('model_type')"
    )


def describe_judge(judge: Transcriber) -> str:
    """How a judge decodes, for reports: a :class:`~speechgpt.eval.judge.JudgeASR` says (greedy or lexicon beam
    search), other judges are named by their class."""
    describe = getattr(judge, "describe_decoding", None)
    if callable(describe):
        return str(describe())
    return f"{type(judge).__name__} (greedy CTC)" if isinstance(judge, HFCTCJudge) else type(judge).__name__


def _greedy_view(judge: Transcriber) -> Transcriber | None:
    """The same judge decoding greedily, when it decodes with a lexicon (None otherwise): reports show both."""
    if getattr(judge, "decoding", None) != "lexicon":
        return None

    class Greedy:
        def transcribe(self, waves: Sequence[Any], *, sample_rate: int | None = None) -> list[str]:
            return judge.transcribe(waves, sample_rate=sample_rate, decoding="greedy")  # type: ignore[call-arg]

    return Greedy()


def judge_transcripts(judge: Transcriber, waves: Sequence[np.ndarray | None]) -> list[str]:
    """The judge's transcripts of 16 kHz waveforms; ``""`` for a missing one or one shorter than a 25 ms window.

    A waveform the judge rejects (e.g. NaN samples) is logged and scored as ``""`` rather than stopping the run.
    """
    texts = [""] * len(waves)
    usable = [i for i, wave in enumerate(waves) if wave is not None and np.asarray(wave).size >= WINDOW_LENGTH]
    if not usable:
        return texts
    try:
        heard = judge.transcribe([waves[i] for i in usable], sample_rate=SAMPLE_RATE)
    except AudioError:
        heard = []
        for i in usable:  # find the bad one(s); the others still count
            try:
                heard.extend(judge.transcribe([waves[i]], sample_rate=SAMPLE_RATE))
            except AudioError as e:
                logger.warning("judge could not read waveform %d: %s", i, e)
                heard.append("")
    if len(heard) != len(usable):
        raise ValueError(f"the judge returned {len(heard)} transcripts for {len(usable)} recordings")
    for i, text in zip(usable, heard, strict=True):
        texts[i] = text
    return texts


# --- text items -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextItem:
    """A sentence to speak: its id, the text, and a group label (e.g. question family) for the breakdown."""

    id: str
    text: str
    group: str = ""


def read_text_items(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    unique: bool = True,
    where: Mapping[str, str] | None = None,
) -> list[TextItem]:
    """Sentences to synthesize: a ``.txt`` file (one a line; blank and ``#`` lines skipped) or a ``.jsonl``
    manifest with a ``text`` field (``id`` and ``family``/``group`` optional; e.g. ``speech_test.jsonl``).

    Args:
        path: The file.
        limit: Keep at most this many, a seeded random sample (see :func:`~speechgpt.eval.asr.sample_items`).
        unique: Keep each text once (a test manifest says the same sentence in several voices).
        where: For ``.jsonl``: keep only records whose fields equal these values.

    Raises:
        FileNotFoundError: the file is missing.
        ManifestError: another suffix, a record without a ``text`` string, an empty line of text, or no text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    suffix = path.suffix.lower()
    items: list[TextItem] = []
    if suffix == ".txt":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                items.append(TextItem(f"line-{number}", text))
    elif suffix == ".jsonl":
        filters = {str(k): str(v) for k, v in (where or {}).items()}
        for number, record in enumerate(read_jsonl(path), start=1):
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ManifestError(f"{path}: record {number} has no non-empty 'text' string")
            if any(str(record.get(key)) != value for key, value in filters.items()):
                continue
            item_id = record.get("id") if isinstance(record.get("id"), str) and record.get("id") else f"line-{number}"
            group = next((str(record[k]) for k in ("group", "family") if record.get(k) not in (None, "")), "")
            items.append(TextItem(item_id, text.strip(), group))
    else:
        raise ManifestError(f"{path}: expected a .txt file (one sentence a line) or a .jsonl manifest with 'text'")
    if unique:
        first: dict[str, TextItem] = {}
        for item in items:
            first.setdefault(item.text, item)
        items = list(first.values())
    if not items:
        raise ManifestError(f"{path}: no text to synthesize")
    return sample_items(items, limit)


def _as_text_items(texts: Sequence[str | TextItem]) -> list[TextItem]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a sequence of strings or TextItem, got {type(texts).__name__}")
    items = []
    for index, value in enumerate(texts):
        if isinstance(value, TextItem):
            items.append(value)
        elif isinstance(value, str):
            items.append(TextItem(f"text-{index}", value))
        else:
            raise TypeError(f"texts[{index}] must be a str or TextItem, got {type(value).__name__}")
        if not items[-1].text.strip():
            raise ValueError(f"texts[{index}] is empty; there is nothing to speak")
    if not items:
        raise ValueError("no texts to evaluate (texts is empty)")
    return items


# --- text -> speech through the model ---------------------------------------------------------------------------


def default_tts_options(max_new_tokens: int = TTS_MAX_NEW_TOKENS) -> GenerationOptions:
    """Greedy decoding with the cross-modal layout (no output cue), long enough for a spoken sentence."""
    from speechgpt.eval.asr import default_options

    return default_options(max_new_tokens)


@dataclass(frozen=True)
class TtsRow:
    """One synthesized sentence: the text, what the judge heard, their WER/CER, and how much was spoken."""

    id: str
    group: str
    text: str
    hyp: str
    wer: float
    cer: float
    units: int
    audio_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TtsResult:
    """What :func:`evaluate_tts` measured.

    Attributes:
        report: Judge WER/CER of the spoken replies against their texts (groups: per item group).
        rows: One :class:`TtsRow` per item, in input order.
        spoken: Replies that held units (the others count as silence).
        failures: ``(item id, reason)`` of items that could not be run.
        truncated: Replies that hit ``max_new_tokens`` (their unit span may be cut short).
        seconds: Wall time of the whole evaluation.
        audio_seconds: Speech produced, in seconds.
        judge: How the judge decoded (:func:`describe_judge`).
    """

    report: ErrorReport
    rows: list[TtsRow]
    spoken: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    judge: str = ""

    @property
    def wer(self) -> float:
        return self.report.wer

    @property
    def cer(self) -> float:
        return self.report.cer

    @property
    def spoken_rate(self) -> float:
        """Share of scored items whose reply held speech."""
        return self.spoken / max(len(self.rows), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "tts",
            **self.report.to_dict(),
            "spoken": self.spoken,
            "spoken_rate": self.spoken_rate,
            "truncated": self.truncated,
            "failures": [{"id": i, "error": e} for i, e in self.failures],
            "seconds": self.seconds,
            "audio_seconds": self.audio_seconds,
            "judge": self.judge,
            "rows": [row.to_dict() for row in self.rows],
        }


def evaluate_tts(
    pipeline: SpeechGPT,
    texts: Sequence[str | TextItem],
    judge: Transcriber,
    *,
    options: GenerationOptions | None = None,
    template_seed: int = 0,
    progress: ProgressFn | None = None,
    audio_dir: str | os.PathLike | None = None,
) -> TtsResult:
    """Have the model speak every text through its text→speech instruction, then score the judge's transcripts.

    Args:
        pipeline: A loaded :class:`~speechgpt.infer.SpeechGPT` with a vocoder.
        texts: Sentences (strings, or :class:`TextItem` for ids and groups).
        judge: The judge ASR (:class:`Transcriber`); it must not have trained on this model's output.
        options: Generation options; greedy with :data:`TTS_MAX_NEW_TOKENS` when None; ``output_modality`` must be
            ``auto`` (the cross-modal layout has no output cue).
        template_seed: Changes which packaged text→speech template each item gets (reproducibly).
        progress: Called as ``progress(done, total)`` after each item's generation.
        audio_dir: Also save each reply as ``{id}.wav`` here (atomically), to listen to.

    Returns:
        A :class:`TtsResult`.

    Raises:
        ValueError: no texts, an empty text, non-auto ``output_modality``, a pipeline without a vocoder, or no
            item could be run.
    """
    items = _as_text_items(texts)
    if pipeline.vocoder is None:
        raise ValueError("the pipeline has no vocoder, so it cannot speak; TTS needs a bundle with one")
    options = cross_modal_options(options, TTS_MAX_NEW_TOKENS, "TTS")
    templates = load_templates(Direction.TEXT_TO_SPEECH)
    started = time.perf_counter()
    kept: list[TextItem] = []
    waves: list[np.ndarray | None] = []
    unit_counts: list[int] = []
    failures: list[tuple[str, str]] = []
    truncated = 0
    for done, item in enumerate(items, start=1):
        template = pick_template(templates, key=f"{item.id}{TTS_KEY_SUFFIX}", seed=template_seed)
        question = cross_modal_question(template, item.text)
        try:
            reply = pipeline.chat([{"role": "user", "content": question}], options)
        except ValueError as e:
            logger.warning("TTS item %s skipped: %s", item.id, e)
            failures.append((item.id, str(e)))
        else:
            truncated += reply.finish_reason == "length"
            kept.append(item)
            waves.append(reply.waveform if reply.units else None)
            unit_counts.append(len(reply.units))
            if audio_dir is not None and reply.waveform is not None:
                write_wav(Path(audio_dir) / f"{item.id}.wav", reply.waveform, reply.sample_rate)
        if progress is not None:
            progress(done, len(items))
    if not kept:
        raise ValueError(f"none of the {len(items)} text(s) could be evaluated; first error: {failures[0][1]}")
    hyps = judge_transcripts(judge, waves)
    refs = [item.text for item in kept]
    report = error_rates(refs, hyps, groups=[item.group for item in kept])
    rows = []
    for item, hyp, wave, count in zip(kept, hyps, waves, unit_counts, strict=True):
        own = error_rates([item.text], [hyp])
        seconds = 0.0 if wave is None else len(wave) / SAMPLE_RATE
        rows.append(TtsRow(item.id, item.group, item.text, hyp, own.wer, own.cer, count, seconds))
    return TtsResult(
        report=report,
        rows=rows,
        spoken=sum(wave is not None for wave in waves),
        failures=failures,
        truncated=truncated,
        seconds=time.perf_counter() - started,
        audio_seconds=sum(row.audio_seconds for row in rows),
        judge=describe_judge(judge),
    )


# --- units -> speech through the vocoder alone ------------------------------------------------------------------


@dataclass(frozen=True)
class ResynthesisRow:
    """One resynthesized recording: reference, what the judge heard in the resynthesis and in the original."""

    id: str
    group: str
    ref: str
    hyp: str
    original_hyp: str
    wer: float
    original_wer: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ResynthesisResult:
    """What :func:`evaluate_resynthesis` measured.

    Attributes:
        report: Judge WER/CER of the vocoder's resynthesis (groups: per voice/speaker).
        ceiling: Judge WER/CER of the original recordings: the best the resynthesis can score.
        rows: One :class:`ResynthesisRow` per scored item.
        failures: ``(item id, reason)`` of recordings that could not be read.
        seconds: Wall time of the whole evaluation.
        vocoder_seconds: Time spent in the vocoder.
        audio_seconds: Duration of the resynthesized audio.
        durations: ``"predicted"`` (the vocoder's duration predictor, as in conversation) or ``"true"``.
        judge: How the judge decoded (:func:`describe_judge`).
        greedy: For a judge with a lexicon, the same judge decoding greedily (character by character):
            ``{"wer", "ceiling_wer"}``; None otherwise.
    """

    report: ErrorReport
    ceiling: ErrorReport
    rows: list[ResynthesisRow]
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    vocoder_seconds: float = 0.0
    audio_seconds: float = 0.0
    durations: str = "predicted"
    judge: str = ""
    greedy: dict[str, float] | None = None

    @property
    def wer(self) -> float:
        return self.report.wer

    @property
    def vocoder_rtf(self) -> float:
        """Vocoder seconds per second of audio produced."""
        return self.vocoder_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "resynthesis",
            **self.report.to_dict(),
            "ceiling": self.ceiling.to_dict(),
            "ceiling_wer": self.ceiling.wer,
            "ceiling_cer": self.ceiling.cer,
            "durations": self.durations,
            "failures": [{"id": i, "error": e} for i, e in self.failures],
            "seconds": self.seconds,
            "vocoder_seconds": self.vocoder_seconds,
            "audio_seconds": self.audio_seconds,
            "vocoder_rtf": self.vocoder_rtf,
            "judge": self.judge,
            "greedy": self.greedy,
            "rows": [row.to_dict() for row in self.rows],
        }


def evaluate_resynthesis(
    vocoder: Vocoder,
    speech_tokenizer: SpeechTokenizer,
    items: Sequence[EvalItem],
    judge: Transcriber,
    *,
    true_durations: bool = False,
    progress: ProgressFn | None = None,
) -> ResynthesisResult:
    """Vocoder intelligibility: real recordings → units → vocoder → judge WER, with the judge's WER on the originals.

    Args:
        vocoder: Units → 16 kHz waveform.
        speech_tokenizer: Audio → units (the same one the LM's units come from).
        items: Held-out recordings with transcripts (voices neither the vocoder nor the judge trained on).
        judge: The judge ASR.
        true_durations: Give the vocoder each unit's measured duration instead of its own prediction (what the LM
            path uses); isolates the waveform generator from the duration predictor.
        progress: Called as ``progress(done, total)`` after each recording.

    Returns:
        A :class:`ResynthesisResult`.

    Raises:
        ValueError: no items, or no recording could be read.
    """
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence of EvalItem, got {type(items).__name__}")
    if not items:
        raise ValueError("no items to evaluate (items is empty)")
    started = time.perf_counter()
    kept: list[EvalItem] = []
    originals: list[np.ndarray] = []
    resynthesized: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    vocoder_seconds = 0.0
    for done, item in enumerate(items, start=1):
        try:
            wave = load_audio(item.audio, name=item.audio)
            units = speech_tokenizer.encode(wave, sample_rate=SAMPLE_RATE, name=item.audio)
        except AudioError as e:
            logger.warning("resynthesis item %s skipped: %s", item.id, e)
            failures.append((item.id, str(e)))
        else:
            t0 = time.perf_counter()
            with torch.inference_mode():
                if true_durations:
                    out = vocoder.synthesize(units.ids, dur_prediction=False, durations=units.durations)
                else:
                    out = vocoder.synthesize(units.ids)
            vocoder_seconds += time.perf_counter() - t0
            kept.append(item)
            originals.append(wave)
            resynthesized.append(out.detach().to("cpu", torch.float32).numpy().reshape(-1))
        if progress is not None:
            progress(done, len(items))
    if not kept:
        raise ValueError(f"none of the {len(items)} recording(s) could be read; first error: {failures[0][1]}")
    refs = [item.text for item in kept]
    groups = [item.group for item in kept]
    hyps = judge_transcripts(judge, resynthesized)
    original_hyps = judge_transcripts(judge, originals)
    greedy = None
    if (greedy_judge := _greedy_view(judge)) is not None:
        greedy = {
            "wer": error_rates(refs, judge_transcripts(greedy_judge, resynthesized)).wer,
            "ceiling_wer": error_rates(refs, judge_transcripts(greedy_judge, originals)).wer,
        }
    rows = [
        ResynthesisRow(
            item.id, item.group, ref, hyp, orig, error_rates([ref], [hyp]).wer, error_rates([ref], [orig]).wer
        )
        for item, ref, hyp, orig in zip(kept, refs, hyps, original_hyps, strict=True)
    ]
    return ResynthesisResult(
        report=error_rates(refs, hyps, groups=groups),
        ceiling=error_rates(refs, original_hyps, groups=groups),
        rows=rows,
        failures=failures,
        seconds=time.perf_counter() - started,
        vocoder_seconds=vocoder_seconds,
        audio_seconds=sum(w.size for w in resynthesized) / SAMPLE_RATE,
        durations="true" if true_durations else "predicted",
        judge=describe_judge(judge),
        greedy=greedy,
    )
