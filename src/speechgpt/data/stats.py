"""What a dataset build reports: records, hours of speech, units per second and length histograms.

Builders fill one :class:`BuildStats` as they go; the CLI shows it with :func:`render_table` (stderr) and prints
:meth:`BuildStats.to_dict` as JSON (stdout). Lengths go into power-of-two buckets, so a build of millions of
records keeps a few integers per histogram, and shards' statistics merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

BAR_WIDTH = 24
"""Characters of the longest bar in a rendered histogram."""
_BLOCKS = " ▏▎▍▌▋▊▉█"
"""Eighth-block characters: a bar's fractional end, so short bars still differ visibly."""


def bucket_of(length: int) -> int:
    """The histogram bucket of a length: 0 holds 0, bucket ``b >= 1`` holds ``2**(b-1) .. 2**b - 1``."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    return length.bit_length()


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """Smallest and largest length in ``bucket`` (both inclusive)."""
    return (0, 0) if bucket == 0 else (2 ** (bucket - 1), 2**bucket - 1)


@dataclass
class LengthHistogram:
    """Counts of lengths in power-of-two buckets, with count, total, minimum and maximum.

    Attributes:
        counts: ``{bucket: count}``; see :func:`bucket_of`.
        count: Lengths added.
        total: Sum of the lengths added.
        minimum: Smallest length added (None while empty).
        maximum: Largest length added (None while empty).
    """

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: int = 0
    minimum: int | None = None
    maximum: int | None = None

    def add(self, length: int) -> None:
        """Count one length."""
        bucket = bucket_of(length)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        self.total += length
        self.minimum = length if self.minimum is None else min(self.minimum, length)
        self.maximum = length if self.maximum is None else max(self.maximum, length)

    def merge(self, other: LengthHistogram) -> None:
        """Add another histogram's counts to this one (e.g. the statistics of another shard)."""
        for bucket, count in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + count
        self.count += other.count
        self.total += other.total
        for value in (other.minimum, other.maximum):
            if value is not None:
                self.minimum = value if self.minimum is None else min(self.minimum, value)
                self.maximum = value if self.maximum is None else max(self.maximum, value)

    @property
    def mean(self) -> float:
        """Mean length; 0.0 while empty."""
        return self.total / self.count if self.count else 0.0

    def buckets(self) -> list[tuple[int, int, int]]:
        """``(low, high, count)`` for every bucket from the smallest to the largest seen (empty ones included)."""
        if not self.counts:
            return []
        return [(*bucket_bounds(b), self.counts.get(b, 0)) for b in range(min(self.counts), max(self.counts) + 1)]

    def render(self, width: int = BAR_WIDTH) -> str:
        """A compact text histogram, one line per bucket: ``  16–31 ██████▍ 12``."""
        rows = self.buckets()
        if not rows:
            return "(none)"
        peak = max(count for _, _, count in rows)
        labels = [str(low) if low == high else f"{low}–{high}" for low, high, _ in rows]
        label_width = max(map(len, labels))
        count_width = len(str(peak))
        lines = []
        for label, (_, _, count) in zip(labels, rows, strict=True):
            eighths = round(8 * width * count / peak)
            bar = _BLOCKS[-1] * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")
            lines.append(f"{label:>{label_width}} {bar:<{width}} {count:>{count_width}}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: count, min, mean, max and the buckets as ``[low, high, count]`` triples."""
        return {
            "count": self.count,
            "min": self.minimum,
            "mean": round(self.mean, 3),
            "max": self.maximum,
            "buckets": [list(row) for row in self.buckets()],
        }


@dataclass
class BuildStats:
    """Running totals of one build (this run's work; what an earlier run finished is counted in ``resumed``).

    Attributes:
        stage: Which SpeechInstruct stage was built (1, 2 or 3), if known.
        items: Input items processed in this run (written, failed or skipped).
        records: Records (lines) written in this run.
        resumed: Records found already written by an earlier, interrupted run.
        failed: Items or records that failed (bad audio, invalid record) and were not written.
        skipped: Items left out on purpose (e.g. text too long to speak).
        audio_seconds: Seconds of speech encoded into units.
        units: Units (after removing repeats) encoded from that speech.
        tasks: Records written per task (``"asr"``, ``"tts"``, ``"com-speech2text"``, ...).
        unit_lengths: Histogram of units per record.
        char_lengths: Histogram of characters per record (the unit line, or the record's ``plain_text``).
        elapsed: Wall-clock seconds the build took.
    """

    stage: int | None = None
    items: int = 0
    records: int = 0
    resumed: int = 0
    failed: int = 0
    skipped: int = 0
    audio_seconds: float = 0.0
    units: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    unit_lengths: LengthHistogram = field(default_factory=LengthHistogram)
    char_lengths: LengthHistogram = field(default_factory=LengthHistogram)
    elapsed: float = 0.0

    def add_audio(self, seconds: float, num_units: int) -> None:
        """Count one recording encoded into ``num_units`` units."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        if num_units < 0:
            raise ValueError(f"num_units must be >= 0, got {num_units!r}")
        self.audio_seconds += float(seconds)
        self.units += int(num_units)

    def add_record(self, task: str, *, units: int, chars: int) -> None:
        """Count one written record of ``task`` holding ``units`` unit tokens and ``chars`` characters."""
        self.records += 1
        self.tasks[task] = self.tasks.get(task, 0) + 1
        self.unit_lengths.add(units)
        self.char_lengths.add(chars)

    def merge(self, other: BuildStats) -> None:
        """Add another build's totals (e.g. another shard's); elapsed times add up too."""
        for name in ("items", "records", "resumed", "failed", "skipped", "units"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.audio_seconds += other.audio_seconds
        self.elapsed += other.elapsed
        for task, count in other.tasks.items():
            self.tasks[task] = self.tasks.get(task, 0) + count
        self.unit_lengths.merge(other.unit_lengths)
        self.char_lengths.merge(other.char_lengths)

    @property
    def hours(self) -> float:
        """Hours of speech encoded."""
        return self.audio_seconds / 3600.0

    @property
    def units_per_second(self) -> float:
        """Units per second of speech (after removing repeats; at most the 50 frames/s); 0.0 without speech."""
        return self.units / self.audio_seconds if self.audio_seconds > 0 else 0.0

    @property
    def speed(self) -> float:
        """Seconds of speech processed per wall-clock second (× real time); 0.0 before timing."""
        return self.audio_seconds / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (floats rounded for reading; histograms as bucket lists)."""
        return {
            "stage": self.stage,
            "items": self.items,
            "records": self.records,
            "resumed": self.resumed,
            "failed": self.failed,
            "skipped": self.skipped,
            "tasks": dict(sorted(self.tasks.items())),
            "audio_seconds": round(self.audio_seconds, 3),
            "hours": round(self.hours, 6),
            "units": self.units,
            "units_per_second": round(self.units_per_second, 3),
            "elapsed_seconds": round(self.elapsed, 3),
            "speed_x_realtime": round(self.speed, 3),
            "units_per_record": self.unit_lengths.to_dict(),
            "chars_per_record": self.char_lengths.to_dict(),
        }


def _length_summary(histogram: LengthHistogram) -> str:
    if not histogram.count:
        return "(none)"
    head = f"min {histogram.minimum} · mean {histogram.mean:.1f} · max {histogram.maximum}"
    return f"{head}\n{histogram.render()}"


def render_table(stats: BuildStats, title: str | None = None) -> Table:
    """The stats as a two-column rich table, with text histograms of units and characters per record."""
    default_title = f"stage {stats.stage} build" if stats.stage is not None else "build"
    table = Table(title=title if title is not None else default_title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("records written", f"{stats.records:,}")
    if stats.resumed:
        table.add_row("already done", f"{stats.resumed:,} (resumed)")
    for task, count in sorted(stats.tasks.items()):
        table.add_row(f"  {task}", f"{count:,}")
    table.add_row("items", f"{stats.items:,}")
    table.add_row("failed", f"{stats.failed:,}")
    if stats.skipped:
        table.add_row("skipped", f"{stats.skipped:,}")
    table.add_row("speech", f"{stats.hours:.3f} h ({stats.audio_seconds:,.1f} s)")
    table.add_row("units", f"{stats.units:,} ({stats.units_per_second:.1f} units/s of speech)")
    table.add_row("time", f"{stats.elapsed:.1f} s ({stats.speed:.1f}× real time)")
    table.add_row("units/record", _length_summary(stats.unit_lengths))
    table.add_row("chars/record", _length_summary(stats.char_lengths))
    return table
