"""The evaluation report: ``report.md`` (tables, plots, how to read them), ``report.json`` (numbers for scripts), PNGs.

Each evaluation (:mod:`~speechgpt.eval.asr`, :mod:`~speechgpt.eval.tts`, :mod:`~speechgpt.eval.qa`,
:mod:`~speechgpt.eval.latency`) returns a result whose ``to_dict()`` is what this module reads, so a report can
be written straight from results or later from their JSON files (:func:`save_result` / :func:`load_results`, the
layout ``speechgpt eval ... -o DIR`` writes). ``report.json`` always holds the headline keys of
:data:`HEADLINE_KEYS` (``null`` for a part that was not run), so runs can be compared by scripts. Plots are drawn
with matplotlib's Agg canvas (no display, no global pyplot state); every file is written atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speechgpt.fileio import atomic_output, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = [
    "HEADLINE_KEYS",
    "PLOT_FILES",
    "REPORT_JSON",
    "REPORT_MD",
    "RESULT_FILES",
    "dumps_result",
    "headline_numbers",
    "load_results",
    "save_result",
    "write_report",
]

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_FORMAT = "speechgpt-eval-report"
REPORT_VERSION = 1
RESULT_FILES = {
    "asr": "asr.json",
    "tts": "tts.json",
    "resynthesis": "resynthesis.json",
    "qa": "qa.json",
    "latency": "latency.json",
}
"""Where each evaluation's result lives in a results folder (``speechgpt eval ... -o DIR``)."""
PLOT_FILES = {
    "wer_per_voice": "wer_per_voice.png",
    "qa_families": "qa_accuracy_per_family.png",
    "qa_combos": "qa_accuracy_per_combo.png",
    "latency": "latency.png",
    "training": "training_loss.png",
}
HEADLINE_KEYS = (
    "asr_wer",
    "asr_cer",
    "tts_judge_wer",
    "tts_judge_cer",
    "vocoder_judge_wer",
    "vocoder_ceiling_wer",
    "vocoder_judge_wer_greedy",
    "vocoder_ceiling_wer_greedy",
    "qa_text_accuracy",
    "qa_speech_accuracy",
    "latency_first_audio_s",
    "latency_full_reply_s",
    "seconds_total",
)
"""Top-level numbers of ``report.json``; ``seconds_total`` comes from ``extra`` (the caller timed the run)."""
DEMO_TARGETS = {
    "asr_wer": ("<=", 0.10),
    "vocoder_judge_wer": ("<=", 0.20),
    "qa_text_accuracy": (">=", 0.80),
    "qa_speech_accuracy": (">=", 0.70),
}
"""Acceptance targets of the embedded demo on held-out voices (issue 8); shown beside the numbers."""
LOSS_FILE = "loss.json"
EXAMPLES = 5
"""Worst items shown per section."""
CELL_CHARS = 90
LATENCY_STAGE_LABELS = {
    "speech_to_units": "speech → units",
    "prefill": "prefill",
    "decode": "decode",
    "vocoder": "vocoder",
}
FIGURE_DPI = 100

Section = Mapping[str, Any]


# --- results files ----------------------------------------------------------------------------------------------


def _as_dict(result: Any, name: str) -> dict[str, Any] | None:
    if result is None:
        return None
    if isinstance(result, Mapping):
        return dict(result)
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"{name} must be a result (with to_dict()) or a dict, got {type(result).__name__}")


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has neither); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def dumps_result(result: Any) -> str:
    """A result (object or dict) as indented JSON text, NaN and infinities written as null."""
    return json.dumps(_json_safe(_as_dict(result, "result")), indent=1, ensure_ascii=False)


def save_result(out_dir: str | os.PathLike, name: str, result: Any) -> Path:
    """Write one evaluation's result as ``out_dir/{RESULT_FILES[name]}`` (atomically) and return the path.

    Raises:
        ValueError: ``name`` is not one of :data:`RESULT_FILES`.
    """
    if name not in RESULT_FILES:
        raise ValueError(f"unknown result {name!r}; valid: {', '.join(RESULT_FILES)}")
    path = Path(out_dir) / RESULT_FILES[name]
    atomic_write_text(path, dumps_result(result) + "\n")
    return path


def load_results(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The results found in a results folder, by name (only the files that exist).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: a results file is not a JSON object (naming it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such results folder")
    found = {}
    for name, file_name in RESULT_FILES.items():
        path = folder / file_name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        found[name] = data
    return found


def _read_loss(path: str | os.PathLike) -> list[tuple[float, float]]:
    """``(step, loss)`` points of a training stage's ``loss.json`` (a file, or a run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOSS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such loss file (training writes {LOSS_FILE} into its output folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    log = data.get("log") if isinstance(data, dict) else None
    if not isinstance(log, list):
        raise ValueError(f"{path}: expected {{'log': [{{'step': ..., 'loss': ...}}, ...]}} as training writes it")
    points = []
    for entry in log:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("step"), int | float)
            and isinstance(entry.get("loss"), int | float)
        ):
            points.append((float(entry["step"]), float(entry["loss"])))
    return sorted(points)


# --- numbers ----------------------------------------------------------------------------------------------------


def _get(section: Section | None, *keys: str) -> Any:
    value: Any = section
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def headline_numbers(
    *,
    asr: Section | None = None,
    tts: Section | None = None,
    resynthesis: Section | None = None,
    qa: Section | None = None,
    latency: Section | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The :data:`HEADLINE_KEYS` of result dicts (``None`` for parts not run), then ``extra``'s own keys."""
    numbers: dict[str, Any] = {
        "asr_wer": _get(asr, "wer"),
        "asr_cer": _get(asr, "cer"),
        "tts_judge_wer": _get(tts, "wer"),
        "tts_judge_cer": _get(tts, "cer"),
        "vocoder_judge_wer": _get(resynthesis, "wer"),
        "vocoder_ceiling_wer": _get(resynthesis, "ceiling_wer"),
        "vocoder_judge_wer_greedy": _get(resynthesis, "greedy", "wer"),
        "vocoder_ceiling_wer_greedy": _get(resynthesis, "greedy", "ceiling_wer"),
        "qa_text_accuracy": _get(qa, "text_accuracy"),
        "qa_speech_accuracy": _get(qa, "speech_accuracy"),
        "latency_first_audio_s": _get(latency, "first_audio_s"),
        "latency_full_reply_s": _get(latency, "full_reply_s"),
        "seconds_total": None,
    }
    for key, value in (extra or {}).items():
        if key in numbers and key != "seconds_total":
            raise ValueError(f"extra[{key!r}] would replace a measured number; give it another name")
        numbers[str(key)] = value
    return numbers


# --- plots ------------------------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _grouped_bars(
    path: Path, series: list[tuple[str, dict[str, float | None]]], *, title: str, ylabel: str, percent: bool
) -> Path:
    """Bars per category (x) and series (colour); missing values leave a gap."""
    categories = list(dict.fromkeys(c for _, values in series for c in values))
    figure = _figure(max(6.0, 0.6 * len(categories) * max(1, len(series)) + 2), 4.0)
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    scale = 100.0 if percent else 1.0
    highest = 0.0
    for index, (label, values) in enumerate(series):
        xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(categories))]
        heights = [values.get(c) for c in categories]
        highest = max([highest, *(h * scale for h in heights if _known(h))])
        axis.bar(
            [x for x, h in zip(xs, heights, strict=True) if _known(h)],
            [h * scale for h in heights if _known(h)],
            width,
            label=label,
        )
    axis.set_xticks(range(len(categories)))
    axis.set_xticklabels(
        categories, rotation=30 if len(categories) > 4 else 0, ha="right" if len(categories) > 4 else "center"
    )
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    # Room above the bars for the legend, so it never hides one.
    axis.set_ylim(0, max(105.0 if percent else 0.0, highest) * (1.25 if len(series) > 1 else 1.05) or 1.0)
    if len(series) > 1:
        axis.legend(loc="upper center", ncol=len(series), fontsize="small")
    return _save(figure, path)


def _group_rates(section: Section | None, key: str = "wer", nested: str | None = None) -> dict[str, float | None]:
    source = _get(section, nested) if nested else section
    groups = _get(source, "groups") or {}
    if groups:
        return {str(name): _get(values, key) for name, values in sorted(groups.items())}
    overall = _get(source, key)
    return {"all": overall} if overall is not None else {}


def _plot_wer(path: Path, asr: Section | None, resynthesis: Section | None) -> Path | None:
    series = []
    if asr is not None:
        series.append(("model ASR", _group_rates(asr)))
    if resynthesis is not None:
        series.append(("vocoder resynthesis (judge)", _group_rates(resynthesis)))
        series.append(("original audio (judge)", _group_rates(resynthesis, nested="ceiling")))
    series = [(label, values) for label, values in series if values]
    if not series:
        return None
    return _grouped_bars(path, series, title="Word error rate per voice", ylabel="WER (%)", percent=True)


def _plot_qa_families(path: Path, qa: Section) -> Path | None:
    families = _get(qa, "families") or {}
    if not families:
        return None
    series = [("text answer", {f: _get(v, "text") for f, v in families.items()})]
    if any(_get(v, "speech") is not None for v in families.values()):
        series.append(("spoken answer (judge)", {f: _get(v, "speech") for f, v in families.items()}))
    return _grouped_bars(path, series, title="Spoken-question accuracy per family", ylabel="accuracy (%)", percent=True)


def _plot_qa_combos(path: Path, qa: Section) -> Path | None:
    combos = _get(qa, "combos") or {}
    if not combos:
        return None
    series = [
        ("text answer (contains)", {c: _get(v, "text_contains", "accuracy") for c, v in combos.items()}),
        ("spoken answer (contains)", {c: _get(v, "speech_contains", "accuracy") for c, v in combos.items()}),
        ("parse rate", {c: _get(v, "parse_rate") for c, v in combos.items()}),
    ]
    title = "QA per input-output combination"
    return _grouped_bars(path, series, title=title, ylabel="share (%)", percent=True)


def _plot_latency(path: Path, latency: Section) -> Path | None:
    stages = [(label, _get(latency, f"{stage}_s")) for stage, label in LATENCY_STAGE_LABELS.items()]
    stages = [(label, value) for label, value in stages if _known(value)]
    if not stages:
        return None
    figure = _figure(7.0, 3.2)
    axis = figure.add_subplot(1, 1, 1)
    left = 0.0
    for label, value in stages:
        axis.barh(["full reply"], [value], left=left, label=label)
        left += value
    for key, label in (("first_text_s", "first text"), ("first_audio_s", "first audio")):
        value = _get(latency, key)
        if _known(value):
            axis.barh([f"{label} (streaming)"], [value], color="grey")
    axis.set_xlabel("seconds (median)")
    axis.set_title("Latency of one spoken turn")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axis.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _plot_training(path: Path, curves: dict[str, list[tuple[float, float]]]) -> Path | None:
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return None
    figure = _figure()
    axis = figure.add_subplot(1, 1, 1)
    for name, points in curves.items():
        axis.plot([p[0] for p in points], [p[1] for p in points], label=name)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title("Training curves")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


# --- markdown ---------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A table cell: one line, pipes escaped, long text cut."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _known(value: Any) -> bool:
    """A number to show (not missing, not NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if _known(value) else "—"


def _secs(value: Any) -> str:
    return f"{value:.3f} s" if _known(value) else "—"


def _num(value: Any, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if _known(value) else "—"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _target(key: str, value: Any) -> str:
    if key not in DEMO_TARGETS:
        return ""
    op, limit = DEMO_TARGETS[key]
    text = f"{op.replace('<=', '≤').replace('>=', '≥')} {100 * limit:.0f}%"
    if not _known(value):
        return text
    met = value <= limit if op == "<=" else value >= limit
    return f"{text} ({'met' if met else 'not met'})"


def _failures_line(section: Section) -> list[str]:
    failures = section.get("failures") or []
    if not failures:
        return []
    shown = "; ".join(f"{_cell(f.get('id'))}: {_cell(f.get('error'))}" for f in failures[:3])
    return [f"{len(failures)} item(s) could not be run and are not scored ({shown}).", ""]


def _summary_md(numbers: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            "ASR word error rate (model, speech → text)",
            _pct(numbers["asr_wer"]),
            _target("asr_wer", numbers["asr_wer"]),
        ],
        ["ASR character error rate", _pct(numbers["asr_cer"]), ""],
        ["TTS intelligibility: judge WER (model, text → speech)", _pct(numbers["tts_judge_wer"]), ""],
        [
            "vocoder intelligibility: judge WER on resynthesis",
            _pct(numbers["vocoder_judge_wer"]),
            _target("vocoder_judge_wer", numbers["vocoder_judge_wer"]),
        ],
        ["judge WER on the original recordings (ceiling)", _pct(numbers["vocoder_ceiling_wer"]), ""],
        *(
            [
                [
                    "the same two, the judge decoding greedily (no lexicon)",
                    f"{_pct(numbers['vocoder_judge_wer_greedy'])} / {_pct(numbers['vocoder_ceiling_wer_greedy'])}",
                    "",
                ]
            ]
            if numbers.get("vocoder_judge_wer_greedy") is not None
            else []
        ),
        [
            "spoken questions: text answer accuracy",
            _pct(numbers["qa_text_accuracy"]),
            _target("qa_text_accuracy", numbers["qa_text_accuracy"]),
        ],
        [
            "spoken questions: spoken answer accuracy (judge)",
            _pct(numbers["qa_speech_accuracy"]),
            _target("qa_speech_accuracy", numbers["qa_speech_accuracy"]),
        ],
        ["time to first audio (streaming)", _secs(numbers["latency_first_audio_s"]), ""],
        ["full spoken reply (non-streaming)", _secs(numbers["latency_full_reply_s"]), ""],
        ["total run time", _secs(numbers["seconds_total"]), ""],
    ]
    return ["## Summary", "", *_table(["metric", "value", "target (embedded demo)"], rows)]


HOW_TO_READ = """\
## How to read this

- **WER / CER** (lower is better): word (character) edits needed to turn the reference into the output, divided
  by the reference's words (characters), summed over all utterances (corpus level). Both sides are normalised
  first: lowercase, numbers as words, punctuation removed (`speechgpt.eval.text_norm`). 10% WER is about one word
  wrong in ten.
- **ASR** asks the model to transcribe each recording with one of its speech→text instructions
  (`{instruction} This is input: <sosp>…<eosp>`); it measures how well the model hears.
- **TTS** asks the model to speak each text (`{instruction} This is input: {text}`); the judge ASR, trained on other
  voices and never on this model's output, transcribes the waveform. A high judge WER means unintelligible speech
  (or a weak judge: compare with the ceiling below).
- **Vocoder resynthesis** turns real held-out recordings into units and back into audio. The judge's WER on the
  original recordings is the **ceiling**: the vocoder's score cannot beat it; the gap is what the units and the
  vocoder lose.
- **The judge** spells the words it hears from a word list of the language when it has one (`lexicon.txt` in its
  folder: every word of the embedded world, weighted by how often its text says it), as a listener knows the words
  of a language; it has no model of which sentence to expect. The greedy numbers beside it decode character by
  character, where any slip of the small judge's acoustics makes a wrong word.
- **Spoken QA** asks each question four ways (speech or text in, speech or text out). An answer counts as right when
  it *contains* the gold answer as whole words after normalisation ("exact" requires equality). Spoken answers are
  transcribed by the judge first, so their accuracy includes the judge's errors. The **parse rate** is the share of
  replies holding every part their combination needs (transcript for spoken questions, text answer, units for
  spoken answers). Headline accuracies use the spoken questions.
- **Latency** times one spoken turn (medians): stages of a non-streaming reply, and time to the first text / audio
  when streaming. RTF (real-time factor) is seconds of work per second of audio; below 1 is faster than real time.
- Targets in the summary are those of the embedded CPU demo on held-out voices; other bundles have their own.
"""


def _asr_md(asr: Section, plot: str | None) -> list[str]:
    lines = [
        "## Speech recognition (model, speech → text)",
        "",
        f"WER **{_pct(asr.get('wer'))}**, CER {_pct(asr.get('cer'))} on {asr.get('utterances')} utterance(s) "
        f"({_num(asr.get('audio_seconds'), 1)} s of audio in {_num(asr.get('seconds'), 1)} s; "
        f"{asr.get('truncated', 0)} reply(ies) cut at the token limit).",
        "",
        *_failures_line(asr),
    ]
    if plot:
        lines += [f"![WER per voice]({plot})", ""]
    groups = asr.get("groups") or {}
    if groups:
        rows = [[name, g.get("utterances"), _pct(g.get("wer")), _pct(g.get("cer"))] for name, g in groups.items()]
        lines += _table(["voice", "utterances", "WER", "CER"], rows)
    worst = sorted((r for r in asr.get("rows") or [] if r.get("wer")), key=lambda r: -r["wer"])[:EXAMPLES]
    if worst:
        lines += ["Worst utterances:", ""]
        lines += _table(
            ["id", "voice", "reference", "model wrote", "WER"],
            [[r["id"], r.get("group", ""), r["ref"], r["hyp"], _pct(r["wer"])] for r in worst],
        )
    return lines


def _tts_md(tts: Section) -> list[str]:
    lines = [
        "## Text-to-speech intelligibility (model, text → speech, judged)",
        "",
        f"Judge WER **{_pct(tts.get('wer'))}**, CER {_pct(tts.get('cer'))} on {tts.get('utterances')} sentence(s); "
        f"{_pct(tts.get('spoken_rate'))} of replies held speech ({_num(tts.get('audio_seconds'), 1)} s produced in "
        f"{_num(tts.get('seconds'), 1)} s).",
        "",
        *_judge_lines(tts),
        *_failures_line(tts),
    ]
    groups = tts.get("groups") or {}
    if len(groups) > 1:
        rows = [[name, g.get("utterances"), _pct(g.get("wer")), _pct(g.get("cer"))] for name, g in groups.items()]
        lines += _table(["group", "sentences", "judge WER", "judge CER"], rows)
    worst = sorted((r for r in tts.get("rows") or [] if r.get("wer")), key=lambda r: -r["wer"])[:EXAMPLES]
    if worst:
        lines += ["Least intelligible:", ""]
        lines += _table(
            ["id", "text", "judge heard", "WER"], [[r["id"], r["text"], r["hyp"], _pct(r["wer"])] for r in worst]
        )
    return lines


def _judge_lines(section: Section) -> list[str]:
    """How the judge decoded, and for a lexicon judge the greedy numbers beside it."""
    judge = section.get("judge")
    if not judge:
        return []
    line = f"Judge decoding: {judge}."
    greedy = section.get("greedy")
    if isinstance(greedy, Mapping):
        line += (
            f" Decoding greedily instead (character by character, no word list), the judge's WER is "
            f"{_pct(greedy.get('wer'))} on the resynthesis and {_pct(greedy.get('ceiling_wer'))} on the originals."
        )
    return [line, ""]


def _resynthesis_md(resynthesis: Section) -> list[str]:
    lines = [
        "## Vocoder intelligibility (real units → vocoder, judged)",
        "",
        f"Judge WER on resynthesised audio **{_pct(resynthesis.get('wer'))}** (CER {_pct(resynthesis.get('cer'))}); "
        f"on the original recordings {_pct(resynthesis.get('ceiling_wer'))} (the ceiling), "
        f"{resynthesis.get('utterances')} recording(s), {resynthesis.get('durations', 'predicted')} durations, "
        f"vocoder RTF {_num(resynthesis.get('vocoder_rtf'), 3)}.",
        "",
        *_judge_lines(resynthesis),
        *_failures_line(resynthesis),
    ]
    groups = resynthesis.get("groups") or {}
    ceiling_groups = _get(resynthesis, "ceiling", "groups") or {}
    if groups:
        rows = [
            [name, g.get("utterances"), _pct(g.get("wer")), _pct(_get(ceiling_groups, name, "wer"))]
            for name, g in groups.items()
        ]
        lines += _table(["voice", "recordings", "resynthesis WER", "original WER"], rows)
    return lines


def _qa_md(qa: Section, families_plot: str | None, combos_plot: str | None) -> list[str]:
    lines = [
        "## Spoken question answering",
        "",
        f"Spoken questions: text answers right **{_pct(qa.get('text_accuracy'))}**, spoken answers right "
        f"**{_pct(qa.get('speech_accuracy'))}** (contains match; spoken answers transcribed by the judge).",
        "",
    ]
    combos = qa.get("combos") or {}
    rows = [
        [
            name,
            c.get("questions"),
            _pct(_get(c, "text_exact", "accuracy")),
            _pct(_get(c, "text_contains", "accuracy")),
            _pct(_get(c, "speech_exact", "accuracy")),
            _pct(_get(c, "speech_contains", "accuracy")),
            _pct(c.get("parse_rate")),
            _pct(_get(c, "transcript", "wer")),
        ]
        for name, c in combos.items()
    ]
    header = ["input-output", "questions", "text exact", "text contains", "spoken exact", "spoken contains"]
    lines += _table([*header, "parse rate", "question transcript WER"], rows)
    for combo in combos.values():
        lines += _failures_line(combo)
    if combos_plot:
        lines += [f"![QA per combination]({combos_plot})", ""]
    families = qa.get("families") or {}
    if families:
        lines += ["Per question family (spoken questions):", ""]
        lines += _table(
            ["family", "text answer", "spoken answer"],
            [[name, _pct(v.get("text")), _pct(v.get("speech"))] for name, v in families.items()],
        )
    if families_plot:
        lines += [f"![QA per family]({families_plot})", ""]
    wrong = [r for c in combos.values() for r in c.get("rows") or [] if not r.get("text_contains")][:EXAMPLES]
    if wrong:
        lines += ["Some wrong text answers:", ""]
        lines += _table(
            ["id", "input-output", "question", "gold", "model answered"],
            [[r["id"], r["combo"], r["question"], r["gold"], r["text"]] for r in wrong],
        )
    return lines


def _latency_md(latency: Section, plot: str | None) -> list[str]:
    lines = [
        "## Latency",
        "",
        f"One spoken question of {_num(latency.get('question_seconds'), 2)} s, median of "
        f"{latency.get('repeats')} turn(s) per mode.",
        "",
    ]
    rows = [
        [
            "speech → units",
            _secs(latency.get("speech_to_units_s")),
            f"RTF {_num(latency.get('speech_to_units_rtf'), 3)}",
        ],
        [
            "prefill",
            _secs(latency.get("prefill_s")),
            f"{_num(latency.get('prompt_tokens'), 0)} tokens, {_num(latency.get('prefill_tokens_per_s'), 0)} tokens/s",
        ],
        [
            "decode",
            _secs(latency.get("decode_s")),
            f"{_num(latency.get('completion_tokens'), 0)} tokens, "
            f"{_num(latency.get('decode_tokens_per_s'), 1)} tokens/s",
        ],
        [
            "vocoder",
            _secs(latency.get("vocoder_s")),
            f"{_num(latency.get('answer_audio_s'), 2)} s of audio, RTF {_num(latency.get('vocoder_rtf'), 3)}",
        ],
        ["full reply (non-streaming)", _secs(latency.get("full_reply_s")), f"RTF {_num(latency.get('reply_rtf'), 3)}"],
        ["first token", _secs(latency.get("first_token_s")), "speech → units + prefill"],
        ["first text (streaming)", _secs(latency.get("first_text_s")), ""],
        ["first audio (streaming)", _secs(latency.get("first_audio_s")), ""],
        [
            "full reply (streaming)",
            _secs(latency.get("stream_total_s")),
            f"vocoder RTF {_num(latency.get('stream_vocoder_rtf'), 3)}",
        ],
    ]
    lines += _table(["step", "time", "detail"], rows)
    if plot:
        lines += [f"![Latency]({plot})", ""]
    return lines


def _training_md(curves: dict[str, list[tuple[float, float]]], plot: str | None) -> list[str]:
    lines = ["## Training curves", ""]
    rows = [
        [name, _num(points[-1][0], 0), _num(points[0][1], 4), _num(points[-1][1], 4)]
        for name, points in curves.items()
        if points
    ]
    lines += _table(["stage", "steps", "first loss", "last loss"], rows)
    if plot:
        lines += [f"![Training loss]({plot})", ""]
    return lines


def _extra_md(extra: Mapping[str, Any]) -> list[str]:
    if not extra:
        return []
    rows = [[key, json.dumps(_json_safe(value), ensure_ascii=False)] for key, value in extra.items()]
    return ["## Run information", "", *_table(["key", "value"], rows)]


# --- the report ---------------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | os.PathLike,
    *,
    asr: Any = None,
    tts: Any = None,
    resynthesis: Any = None,
    qa: Any = None,
    latency: Any = None,
    training_curves: Mapping[str, str | os.PathLike] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out_dir``; return the Markdown file's path.

    Args:
        out_dir: Folder to write into (created).
        asr, tts, resynthesis, qa, latency: Results of the evaluations (the objects, or their ``to_dict()``
            as read back by :func:`load_results`); None for a part not run.
        training_curves: Stage name → that stage's ``loss.json`` (or its run folder), plotted together.
        extra: More top-level numbers for ``report.json`` (e.g. ``seconds_total``), also listed in the Markdown.

    Returns:
        The path of ``report.md``.

    Raises:
        TypeError: a result is neither a result object nor a dict.
        FileNotFoundError: a training curve's ``loss.json`` is missing.
        ValueError: a ``loss.json`` is malformed, or ``extra`` repeats a measured key.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = {
        "asr": _as_dict(asr, "asr"),
        "tts": _as_dict(tts, "tts"),
        "resynthesis": _as_dict(resynthesis, "resynthesis"),
        "qa": _as_dict(qa, "qa"),
        "latency": _as_dict(latency, "latency"),
    }
    extra = dict(extra or {})
    numbers = headline_numbers(**sections, extra=extra)
    curves = {str(name): _read_loss(path) for name, path in (training_curves or {}).items()}

    plots: dict[str, str] = {}

    def plot(name: str, made: Path | None) -> str | None:
        if made is None:
            return None
        plots[name] = made.name
        return made.name

    wer_plot = plot(
        "wer_per_voice", _plot_wer(out / PLOT_FILES["wer_per_voice"], sections["asr"], sections["resynthesis"])
    )
    families_plot = combos_plot = latency_plot = training_plot = None
    if sections["qa"] is not None:
        families_plot = plot("qa_families", _plot_qa_families(out / PLOT_FILES["qa_families"], sections["qa"]))
        combos_plot = plot("qa_combos", _plot_qa_combos(out / PLOT_FILES["qa_combos"], sections["qa"]))
    if sections["latency"] is not None:
        latency_plot = plot("latency", _plot_latency(out / PLOT_FILES["latency"], sections["latency"]))
    if curves:
        training_plot = plot("training", _plot_training(out / PLOT_FILES["training"], curves))

    lines = ["# SpeechGPT evaluation report", "", *_summary_md(numbers), HOW_TO_READ]
    if sections["asr"] is not None:
        lines += _asr_md(sections["asr"], wer_plot)
    if sections["tts"] is not None:
        lines += _tts_md(sections["tts"])
    if sections["resynthesis"] is not None:
        lines += _resynthesis_md(sections["resynthesis"])
        if wer_plot and sections["asr"] is None:
            lines += [f"![WER per voice]({wer_plot})", ""]
    if sections["qa"] is not None:
        lines += _qa_md(sections["qa"], families_plot, combos_plot)
    if sections["latency"] is not None:
        lines += _latency_md(sections["latency"], latency_plot)
    if curves:
        lines += _training_md(curves, training_plot)
    lines += _extra_md(extra)
    not_run = [name for name, section in sections.items() if section is None]
    if not_run:
        lines += [f"Not run: {', '.join(not_run)}.", ""]

    document = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        **numbers,
        "plots": plots,
        "training_curves": {name: str(path) for name, path in (training_curves or {}).items()},
        "sections": sections,
    }
    atomic_write_text(out / REPORT_JSON, json.dumps(_json_safe(document), indent=1, ensure_ascii=False) + "\n")
    report = atomic_write_text(out / REPORT_MD, "\n".join(lines).rstrip() + "\n")
    logger.info("wrote %s (%d plot(s))", report, len(plots))
    return report
