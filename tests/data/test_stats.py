"""Build statistics: power-of-two length histograms, totals, derived rates and their table."""

import io
import json

import pytest
from rich.console import Console

from speechgpt.data.stats import BuildStats, LengthHistogram, bucket_bounds, bucket_of, render_table


def _text(table) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize(("length", "bucket"), [(0, 0), (1, 1), (2, 2), (3, 2), (4, 3), (7, 3), (8, 4), (1023, 10)])
def test_buckets_are_powers_of_two(length, bucket):
    assert bucket_of(length) == bucket
    low, high = bucket_bounds(bucket)
    assert low <= length <= high


def test_bucket_of_rejects_bad_lengths():
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="length must be an int >= 0"):
            bucket_of(bad)


def test_histogram_counts_and_summary():
    histogram = LengthHistogram()
    for length in (3, 5, 6, 7, 20, 21):
        histogram.add(length)
    assert histogram.count == 6 and histogram.total == 62
    assert (histogram.minimum, histogram.maximum) == (3, 21)
    assert histogram.mean == pytest.approx(62 / 6)
    # 2–3: one, 4–7: three, 8–15: none (still listed, so gaps show), 16–31: two.
    assert histogram.buckets() == [(2, 3, 1), (4, 7, 3), (8, 15, 0), (16, 31, 2)]
    assert histogram.to_dict() == {
        "count": 6,
        "min": 3,
        "mean": 10.333,
        "max": 21,
        "buckets": [[2, 3, 1], [4, 7, 3], [8, 15, 0], [16, 31, 2]],
    }


def test_histogram_render_scales_bars_to_the_largest_bucket():
    histogram = LengthHistogram()
    for length in [5] * 8 + [20] * 2:
        histogram.add(length)
    assert histogram.render(width=8).splitlines() == ["  4–7 ████████ 8", " 8–15          0", "16–31 ██       2"]
    histogram.add(7)  # 9 in the top bucket: the 2 of 16–31 is 16/9 = 1.78 blocks, drawn with an eighth-block end
    assert histogram.render(width=8).splitlines()[2] == "16–31 █▊       2"
    assert LengthHistogram().render() == "(none)"


def test_histogram_merge_equals_adding_everything_to_one():
    lengths_a, lengths_b = [1, 9, 100], [0, 9, 40, 2000]
    a, b, whole = LengthHistogram(), LengthHistogram(), LengthHistogram()
    for n in lengths_a:
        a.add(n)
        whole.add(n)
    for n in lengths_b:
        b.add(n)
        whole.add(n)
    a.merge(b)
    assert a == whole
    empty = LengthHistogram()
    empty.merge(LengthHistogram())
    assert empty.minimum is None and empty.buckets() == []


def test_build_stats_totals_and_rates():
    stats = BuildStats(stage=2)
    stats.add_audio(3.0, 75)
    stats.add_audio(1.5, 30)
    stats.add_record("asr", units=75, chars=400)
    stats.add_record("tts", units=75, chars=380)
    stats.add_record("asr", units=30, chars=200)
    stats.elapsed = 2.25
    assert stats.records == 3 and stats.tasks == {"asr": 2, "tts": 1}
    assert stats.audio_seconds == 4.5 and stats.units == 105
    assert stats.hours == pytest.approx(4.5 / 3600)
    assert stats.units_per_second == pytest.approx(105 / 4.5)
    assert stats.speed == pytest.approx(2.0)
    assert stats.unit_lengths.buckets() == [(16, 31, 1), (32, 63, 0), (64, 127, 2)]
    assert BuildStats().units_per_second == 0.0 and BuildStats().speed == 0.0
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        stats.add_audio(-1.0, 3)
    with pytest.raises(ValueError, match="num_units must be >= 0"):
        stats.add_audio(1.0, -3)


def test_build_stats_merge_adds_shards():
    first, second = BuildStats(stage=1, items=3, failed=1), BuildStats(stage=1, items=2, resumed=4)
    first.add_audio(2.0, 50)
    first.add_record("units", units=50, chars=300)
    second.add_audio(1.0, 20)
    second.add_record("units", units=20, chars=120)
    first.elapsed, second.elapsed = 1.0, 0.5
    first.merge(second)
    assert (first.items, first.records, first.failed, first.resumed) == (5, 2, 1, 4)
    assert first.audio_seconds == 3.0 and first.units == 70 and first.elapsed == 1.5
    assert first.tasks == {"units": 2} and first.char_lengths.count == 2


def test_to_dict_is_json_and_complete():
    stats = BuildStats(stage=3, items=2, skipped=1)
    stats.add_audio(7200.0, 180_000)
    stats.add_record("com-speech2text", units=60, chars=500)
    stats.elapsed = 10.0
    summary = json.loads(json.dumps(stats.to_dict()))
    assert summary["stage"] == 3 and summary["hours"] == 2.0
    assert summary["units_per_second"] == 25.0 and summary["speed_x_realtime"] == 720.0
    assert summary["tasks"] == {"com-speech2text": 1} and summary["skipped"] == 1
    assert summary["units_per_record"]["buckets"] == [[32, 63, 1]]
    assert summary["chars_per_record"]["max"] == 500


def test_render_table_shows_the_numbers_and_histograms():
    stats = BuildStats(stage=2, items=4, failed=1, resumed=2)
    stats.add_audio(90.0, 2250)
    for units, chars in ((40, 300), (45, 320), (200, 900)):
        stats.add_record("asr", units=units, chars=chars)
    stats.elapsed = 3.0
    text = _text(render_table(stats))
    assert "stage 2 build" in text
    for expected in ("records written", "3", "2 (resumed)", "asr", "0.025 h", "25.0 units/s", "30.0× real time"):
        assert expected in text, expected
    assert "min 40 · mean 95.0 · max 200" in text
    assert "32–63" in text and "128–255" in text and "█" in text
    assert "skipped" not in text  # only shown when something was skipped
    assert "my title" in _text(render_table(BuildStats(), title="my title"))
