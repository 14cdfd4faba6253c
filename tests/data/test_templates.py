"""Instruction templates: the shipped files, user overrides, and the stable per-item choice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from speechgpt.data import templates as templates_module
from speechgpt.data.templates import (
    Direction,
    TemplateError,
    load_templates,
    parse_templates,
    pick_template,
    stable_index,
)
from speechgpt.prompt_format import neutralize_user_text


def _normalized(template: str) -> str:
    """Case, punctuation and spacing removed, so near-duplicates count as duplicates."""
    return " ".join(re.sub(r"[^\w\s]", " ", template.lower()).split())


@pytest.mark.parametrize("direction", list(Direction))
def test_shipped_templates_are_many_distinct_and_clean(direction: Direction) -> None:
    templates = load_templates(direction)
    assert len(templates) >= 60
    assert len({_normalized(t) for t in templates}) == len(templates)
    for template in templates:
        assert template == " ".join(template.split()), template
        assert neutralize_user_text(template) == template, template
        assert template[-1] in ".?!", template  # each is a finished sentence, ready for " This is input: ..."
    assert len({len(t.split()) for t in templates}) >= 8  # lengths vary, not one phrase re-worded


def test_directions_do_not_share_templates_and_ask_for_the_right_thing() -> None:
    asr = load_templates(Direction.SPEECH_TO_TEXT)
    tts = load_templates(Direction.TEXT_TO_SPEECH)
    assert not {_normalized(t) for t in asr} & {_normalized(t) for t in tts}
    assert asr[0] == "Transcribe the following audio into text."
    assert tts[0] == "Read this sentence aloud."
    assert sum("transcri" in t.lower() for t in asr) >= 10
    assert sum(re.search(r"\b(read|say|speak|speech|aloud|out loud)\b", t.lower()) is not None for t in tts) >= 50


def test_direction_given_as_its_value_and_unknown_direction() -> None:
    assert load_templates("speech_to_text") == load_templates(Direction.SPEECH_TO_TEXT)
    with pytest.raises(ValueError, match=r"unknown template direction 'asr'.*speech_to_text, text_to_speech"):
        load_templates("asr")


def test_user_file_overrides_and_folder_picks_the_direction_file(tmp_path: Path) -> None:
    own = tmp_path / "mine.txt"
    own.write_text("# my templates\n\n  Write   it down.  \nWhat was said?\n", encoding="utf-8")
    assert load_templates(Direction.SPEECH_TO_TEXT, own) == ("Write it down.", "What was said?")
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "text_to_speech.txt").write_text("Say it.\n", encoding="utf-8")
    assert load_templates(Direction.TEXT_TO_SPEECH, folder) == ("Say it.",)
    with pytest.raises(FileNotFoundError, match=r"speech_to_text\.txt: no such template file for speech_to_text"):
        load_templates(Direction.SPEECH_TO_TEXT, folder)


def test_missing_empty_duplicate_and_control_strings_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt"):
        load_templates(Direction.SPEECH_TO_TEXT, tmp_path / "nothing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"empty\.txt: no templates"):
        load_templates(Direction.SPEECH_TO_TEXT, empty)
    with pytest.raises(TemplateError, match=r"x:3: duplicate template \(same as line 1\)"):
        parse_templates("Say it.\nRead it.\nSay   it.\n", source="x")
    with pytest.raises(TemplateError, match=r"x:2: template holds a control string"):
        parse_templates("Say it.\nSay <sosp> now.\n", source="x")
    with pytest.raises(TemplateError, match=r"x:1: template holds a control string"):
        parse_templates("Answer as [SpeechGPT] would.\n", source="x")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Dites-le à voix haute.\n".encode("latin-1"))
    with pytest.raises(TemplateError, match=r"latin1\.txt: not UTF-8"):
        load_templates(Direction.TEXT_TO_SPEECH, latin1)


def test_pick_is_deterministic_and_pinned() -> None:
    templates = load_templates(Direction.SPEECH_TO_TEXT)
    first = [pick_template(templates, f"utt-{i}-asr") for i in range(50)]
    assert first == [pick_template(templates, f"utt-{i}-asr") for i in range(50)]
    # Pinned values (8-byte blake2b of f"{seed}\x00{key}"): a changed hash would silently change every rebuilt dataset.
    assert [stable_index(f"utt-{i}", 1000) for i in range(5)] == [900, 471, 230, 70, 409]
    assert stable_index("1089-134686-0000-asr", 70) == 53
    assert stable_index("1089-134686-0000-asr", 70, seed=1) == 56


def test_pick_is_the_same_in_another_process_with_another_hash_seed() -> None:
    keys = [f"item-{i}-tts" for i in range(20)]
    here = [stable_index(k, 71, seed=3) for k in keys]
    # Load the module from its file so the child skips speechgpt.data's heavier imports (audio, torch).
    code = (
        "import importlib.util as u;"
        f"s = u.spec_from_file_location('templates', {str(templates_module.__file__)!r});"
        "m = u.module_from_spec(s); s.loader.exec_module(m);"
        f"print([m.stable_index(k, 71, seed=3) for k in {keys!r}])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)


def test_every_template_is_used_and_the_seed_reshuffles() -> None:
    for direction in Direction:
        templates = load_templates(direction)
        keys = [f"world-{i:05d}-{direction.value}" for i in range(4000)]
        counts = Counter(pick_template(templates, key) for key in keys)
        assert set(counts) == set(templates)
        expected = len(keys) / len(templates)
        assert max(counts.values()) < 2.0 * expected
        assert min(counts.values()) > 0.4 * expected
        reseeded = [pick_template(templates, key, seed=7) for key in keys[:200]]
        same = sum(a == b for a, b in zip(reseeded, [pick_template(templates, k) for k in keys[:200]], strict=True))
        assert same < 20  # about 200 / 70 agree by chance


def test_pick_rejects_nothing_to_choose_and_non_string_keys() -> None:
    with pytest.raises(ValueError, match="no templates"):
        pick_template((), "a")
    with pytest.raises(ValueError, match="key must be a string, got int"):
        pick_template(("Say it.",), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot choose from 0"):
        stable_index("a", 0)
