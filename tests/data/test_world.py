"""The embedded speech world: the text world's answers and held-out split, and the spoken world folder."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechgpt.constants import SAMPLE_RATE
from speechgpt.data import world_speech
from speechgpt.data.tts import VoiceSettings
from speechgpt.data.world import (
    FAMILIES,
    KNOWLEDGE_FAMILIES,
    TextWorld,
    WorldConfig,
    build_text_world,
    family_questions,
    number_to_words,
    spell,
)
from speechgpt.data.world_speech import WorldError, build_world, plan_utterances

# Small enough to speak in about a second, large enough that every family has train and held-out items.
TINY = WorldConfig(questions_per_family=5, heldout_fraction=0.3, train_utterances=30, test_utterances=12)
TRAIN_FIELDS = {"id", "audio", "text", "voice", "kind", "family"}
TEST_FIELDS = TRAIN_FIELDS | {"voice_split", "item_split"}
QA_FIELDS = {"id", "instruction", "input", "output", "family", "split"}

# --- independent number reading (not the module's number_to_words) ------------------------------------------------

_SMALL = {
    w: i
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
    )
}  # fmt: skip
_DECADES = {
    w: 10 * i
    for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], start=2)
}


def read_number(words: str) -> int:
    """'forty two' -> 42, 'one hundred' -> 100, written for these tests only."""
    total = 0
    for word in words.split():
        if word == "hundred":
            total *= 100
        elif word in _DECADES:
            total += _DECADES[word]
        elif word in _SMALL:
            total += _SMALL[word]
        elif word != "and":
            raise ValueError(f"not a number word: {word!r} in {words!r}")
    return total


def numbers_in(text: str) -> list[int]:
    """The numbers written in ``text``, each a run of number words ("and" only right after "hundred")."""
    runs: list[list[str]] = []
    previous = None
    for word in text.split():
        is_number = word in _SMALL or word in _DECADES or word == "hundred" or (word == "and" and previous == "hundred")
        if is_number:
            if previous is None:
                runs.append([])
            runs[-1].append(word)
        previous = word if is_number else None
    return [read_number(" ".join(run)) for run in runs]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def contains_phrase(line: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(phrase)}(?![a-z])", line) is not None


def phrases(lines: list[str], lengths: set[int]) -> set[str]:
    """Every run of ``n`` consecutive words (punctuation dropped) in ``lines``, for each ``n`` in ``lengths``."""
    found = set()
    for line in lines:
        words = re.findall(r"[a-z]+", line)
        for n in lengths:
            found.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return found


# --- the text world --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number, words",
    [(0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"), (100, "one hundred"),
     (115, "one hundred and fifteen"), (999, "nine hundred and ninety nine")],
)  # fmt: skip
def test_number_to_words(number, words):
    assert number_to_words(number) == words
    assert read_number(words) == number


@pytest.mark.parametrize("bad", [-1, 1000, 2.0, True, "3"])
def test_number_to_words_rejects_what_it_cannot_say(bad):
    with pytest.raises(ValueError, match="number must be an int"):
        number_to_words(bad)


def test_spell():
    assert spell("cat") == "c a t"
    with pytest.raises(ValueError, match="only letters"):
        spell("c4t")


@pytest.fixture(scope="module")
def full_world() -> TextWorld:
    return build_text_world(WorldConfig(questions_per_family=None))


def test_every_family_has_items_with_several_phrasings(full_world):
    counts = full_world.question_counts()
    for family in FAMILIES:
        items = [q for q in full_world.questions if q.family == family]
        assert len(items) >= 8, family
        assert all(len(q.phrasings) >= 2 for q in items), family
        assert counts["train"][family] > 0
        if family != "chitchat":
            assert counts["heldout"][family] > 0, family
    assert "chitchat" not in counts["heldout"]


def test_text_is_lowercase_words_with_numbers_spelled_out(full_world):
    texts = [t for q in full_world.questions for t in (*q.phrasings, q.answer, *q.facts)]
    bad = [t for t in texts if not re.fullmatch(r"[a-z]+( [a-z]+)*", t)]
    assert not bad, bad[:5]
    assert all(len(t.split()) <= 12 for t in texts)  # short: espeak speaks each in a few seconds


def test_each_question_text_has_one_answer(full_world):
    answers: dict[str, set[str]] = {}
    for split in ("train", "heldout"):
        for record in full_world.qa_records(split):
            assert set(record) == QA_FIELDS and record["input"] == "" and record["split"] == split
            answers.setdefault(record["instruction"], set()).add(record["output"])
    assert all(len(outputs) == 1 for outputs in answers.values())
    ids = [r["id"] for split in ("train", "heldout") for r in full_world.qa_records(split)]
    assert len(ids) == len(set(ids))


def test_arithmetic_answers_are_right(full_world):
    operations = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    checked = dict.fromkeys(operations, 0)
    for question in (q for q in full_world.questions if q.family == "arithmetic"):
        match = re.fullmatch(r"(.+) (plus|minus|times) (.+) is (.+)", question.answer)
        assert match, question.answer
        a, op, b, c = read_number(match[1]), match[2], read_number(match[3]), read_number(match[4])
        assert operations[op](a, b) == c >= 0, question.answer
        for text in question.phrasings:  # every phrasing asks about the same operands
            assert sorted(numbers_in(text)) == sorted([a, b]), (text, question.answer)
        checked[op] += 1
    assert checked == {"plus": 121, "minus": 91, "times": 100}


def test_spelling_answers_are_right(full_world):
    items = [q for q in full_world.questions if q.family == "spelling"]
    assert len(items) >= 50
    for question in items:
        word = question.key.split(".", 1)[1]
        assert question.answer == " ".join(list(word))
        assert all(word in text.split() for text in question.phrasings)


def test_counting_and_comparison_answers_are_right(full_world):
    counted = compared = 0
    for question in (q for q in full_world.questions if q.family == "counting"):
        for text in question.phrasings:
            start, stop = numbers_in(text)
            # one word per number: counting stays within twenty
            assert [read_number(word) for word in question.answer.split()] == list(range(start, stop + 1))
        counted += 1
    for question in (q for q in full_world.questions if q.family == "comparison"):
        for text in question.phrasings:
            x, y = numbers_in(text)
            big, small = number_to_words(max(x, y)), number_to_words(min(x, y))
            wanted = (
                f"{big} is bigger than {small}"
                if re.search("bigger|larger", text)
                else f"{small} is smaller than {big}"
            )
            assert question.answer == wanted, text
        compared += 1
    assert counted == 60 and compared == 420


def test_chitchat_names_the_assistant():
    answers = {q.key: q.answer for q in family_questions("chitchat")}
    assert answers["chitchat.name"] == "my name is speech gpt"
    assert "fudan university" in answers["chitchat.maker"]


def test_same_seed_same_world_and_another_seed_another_split():
    config = WorldConfig(seed=5)
    first, again = build_text_world(config), build_text_world(config)
    assert first.questions == again.questions and first.corpus == again.corpus
    other = build_text_world(WorldConfig(seed=6))
    assert {q.key for q in other.split("heldout")} != {q.key for q in first.split("heldout")}
    assert other.corpus != first.corpus


def test_held_out_items_keep_their_groups_together(full_world):
    split_of_group: dict[tuple[str, str], set[str]] = {}
    for question in full_world.questions:
        split_of_group.setdefault((question.family, question.group), set()).add(question.split)
    assert all(len(splits) == 1 for splits in split_of_group.values())
    heldout = {q.key for q in full_world.split("heldout")}
    # "three plus four" and "four plus three" share a fact, so they share a split (same for opposites' directions)
    assert ("arithmetic.3-plus-4" in heldout) == ("arithmetic.4-plus-3" in heldout)
    assert ("opposite.hot" in heldout) == ("opposite.cold" in heldout)


@pytest.mark.parametrize("facts_in_corpus", [True, False])
def test_held_out_questions_never_reach_training_text(facts_in_corpus):
    world = build_text_world(WorldConfig(questions_per_family=None, heldout_facts_in_corpus=facts_in_corpus))
    train_lines = [r["instruction"] for r in world.qa_records("train")] + [
        r["output"] for r in world.qa_records("train")
    ]
    train_lines += list(world.corpus)
    heldout = world.split("heldout")
    assert len(heldout) > 50
    lengths = {len(text.split()) for q in heldout for text in q.phrasings}
    seen = phrases(train_lines, lengths)
    for question in heldout:
        for text in question.phrasings:
            assert text not in seen, text
        assert question.answer not in {line.rstrip(".") for line in train_lines}
        stated = {f"{fact}." for fact in question.facts} & set(world.corpus)
        # Skill facts never leak; knowledge facts are read in prose only when the config says so.
        assert stated == ({f"{f}." for f in question.facts} if facts_in_corpus and question.family in
                          KNOWLEDGE_FAMILIES else set())  # fmt: skip


def test_corpus_states_facts_and_question_answer_pairs(full_world):
    corpus = set(full_world.corpus)
    assert len(corpus) == len(full_world.corpus) > 3000
    assert "paris is the capital of france." in corpus or any(q.key == "capital.france" and q.split == "heldout"
                                                              for q in full_world.questions)  # fmt: skip
    train = full_world.split("train")[0]
    assert f"{train.phrasings[0]}? {train.answer}." in corpus


def test_size_caps_and_phrasing_limits():
    world = build_text_world(WorldConfig(questions_per_family=10, max_phrasings=2))
    for family, count in world.question_counts()["train"].items():
        assert count + world.question_counts()["heldout"].get(family, 0) <= 10
    assert all(len(q.phrasings) == 2 for q in world.questions)
    only = build_text_world(WorldConfig(families=("arithmetic",), questions_per_family=None))
    assert {q.family for q in only.questions} == {"arithmetic"}
    assert len(only.questions) == 121 + 91 + 100


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"families": ("capital", "astrology")}, "families must be"),
        ({"families": ()}, "families must be"),
        ({"questions_per_family": 0}, "questions_per_family must be"),
        ({"heldout_fraction": 1.0}, "heldout_fraction must be in"),
        ({"speech_mix": (0.5, 0.5, 0.5)}, "sum to 1"),
        ({"train_voices": ("en-us", "en-us")}, "lists a voice twice"),
        ({"heldout_voices": ("en-us",)}, "in both train_voices and heldout_voices"),
        ({"rate_bounds": (200, 100)}, "rate_bounds must be"),
        ({"pitch_bounds": (0, 101)}, "pitch_bounds must be"),
        ({"train_utterances": 0}, "train_utterances must be"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**fields)


def test_config_round_trips_through_json_and_presets():
    config = WorldConfig.from_preset("small", seed=3)
    assert config.seed == 3 and config.train_utterances == 800
    assert WorldConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown world size 'huge'"):
        WorldConfig.from_preset("huge")
    with pytest.raises(ValueError, match=r"unknown WorldConfig field\(s\) \['colour'\]"):
        WorldConfig.from_dict({"colour": "red"})


# --- the utterance plan ---------------------------------------------------------------------------------------------


def test_plan_mixes_kinds_and_balances_voices_within_bounds():
    config = WorldConfig(questions_per_family=20, train_utterances=600, test_utterances=90)
    plan = plan_utterances(build_text_world(config))
    train = [u for u in plan if u.split == "train"]
    test = [u for u in plan if u.split == "test"]
    assert len(train) == 600 and len(test) == 90
    kinds = {k: sum(u.kind == k for u in train) for k in ("question", "answer", "sentence")}
    assert kinds == {"question": 300, "answer": 150, "sentence": 150}
    per_voice = [sum(u.voice_name == v for u in train) for v in config.train_voices]
    assert max(per_voice) - min(per_voice) <= 1
    assert {(u.voice_split, u.item_split) for u in test} == {("heldout", "train"), ("heldout", "heldout"),
                                                             ("train", "heldout")}  # fmt: skip
    for utterance in plan:
        assert config.rate_bounds[0] <= utterance.voice.rate <= config.rate_bounds[1]
        assert config.pitch_bounds[0] <= utterance.voice.pitch <= config.pitch_bounds[1]
    assert len({u.voice.rate for u in train}) > 20  # varied per utterance, not per voice
    assert len({u.id for u in plan}) == len(plan)


def test_plan_refuses_test_speech_with_nothing_to_test():
    world = build_text_world(WorldConfig(heldout_fraction=0, heldout_voices=(), test_utterances=5))
    with pytest.raises(WorldError, match="no held-out voices and no held-out questions"):
        plan_utterances(world)


# --- the spoken world folder ----------------------------------------------------------------------------------------


def files_of(root: Path) -> dict[str, bytes]:
    """Every file's bytes, world.json without its timing field."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    document = json.loads(files.pop("world.json"))
    assert isinstance(document.pop("seconds_to_build"), float)
    files["world.json"] = json.dumps(document, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    summary = build_world(TINY, out, num_workers=0)
    assert not summary.already_built and summary.synthesized == 42 and summary.reused == 0
    return out


def test_folder_layout_and_world_json(built):
    document = json.loads((built / "world.json").read_text())
    assert document["format"] == "speechgpt-speech-world" and document["version"] == 1
    assert document["seed"] == 0 and document["config"] == TINY.to_dict()
    assert [v["name"] for v in document["voices"]["train"]] == list(TINY.train_voices)
    assert [v["name"] for v in document["voices"]["heldout"]] == list(TINY.heldout_voices)
    for voice in document["voices"]["train"] + document["voices"]["heldout"]:
        name = voice.pop("name")
        assert VoiceSettings(**voice).voice == name
    assert document["counts"]["speech_train"]["total"] == 30 and document["counts"]["speech_test"]["total"] == 12
    assert not (built / "world.json.partial").exists()
    for name in ("text/corpus.txt", "qa/train.jsonl", "qa/heldout.jsonl", "speech_train.jsonl", "speech_test.jsonl"):
        assert (built / name).is_file(), name
    wavs = sorted(p.name for p in (built / "audio").rglob("*") if p.is_file())
    assert len(wavs) == 42 and all(name.endswith(".wav") for name in wavs)


def test_the_word_list_holds_every_word_the_world_says(built):
    words = (built / "text/vocabulary.txt").read_text().splitlines()
    assert words == sorted(set(words)) and all(re.fullmatch(r"[a-z']+", w) for w in words)
    said = (built / "text/corpus.txt").read_text().lower()
    said += "".join(
        json.loads(line)["text"] + "\n"
        for f in ("speech_train", "speech_test")
        for line in (built / f"{f}.jsonl").read_text().splitlines()
    )
    said += "".join(
        f"{r['instruction']} {r['output']}\n"
        for f in ("train", "heldout")
        for r in map(json.loads, (built / f"qa/{f}.jsonl").read_text().splitlines())
    )
    assert set(re.findall(r"[a-z']+", said)) <= set(words)
    # The language, not the sample: a world of other questions has the same words.
    other = build_text_world(dataclasses.replace(TINY, seed=5, questions_per_family=3))
    assert other.vocabulary() == words
    assert {"paris", "france", "seventeen", "mammal", "b"} <= set(words)


def test_every_recording_exists_is_16k_mono_speech_and_hours_add_up(built):
    document = json.loads((built / "world.json").read_text())
    for split, fields in (("train", TRAIN_FIELDS), ("test", TEST_FIELDS)):
        rows = read_jsonl(built / f"speech_{split}.jsonl")
        seconds = 0.0
        for row in rows:
            assert set(row) == fields
            assert row["audio"] == f"audio/{split}/{row['id']}.wav"
            info = sf.info(built / row["audio"])
            assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
            wave, _ = sf.read(built / row["audio"], dtype="float32")
            assert 0.3 < wave.size / SAMPLE_RATE < 8.0, row
            assert np.abs(wave).max() > 0.05 and np.sqrt(np.mean(wave**2)) > 0.01, row  # speech, not silence
            assert row["kind"] in ("question", "answer", "sentence") and row["family"] in FAMILIES
            seconds += wave.size / SAMPLE_RATE
        assert document["hours"][split] == pytest.approx(seconds / 3600, abs=1e-5)


def test_held_out_voices_and_questions_stay_out_of_training_speech(built):
    train_rows = read_jsonl(built / "speech_train.jsonl")
    test_rows = read_jsonl(built / "speech_test.jsonl")
    qa_train, qa_heldout = read_jsonl(built / "qa/train.jsonl"), read_jsonl(built / "qa/heldout.jsonl")
    heldout_texts = {r["instruction"] for r in qa_heldout} | {r["output"] for r in qa_heldout}
    train_texts = {r["instruction"] for r in qa_train} | {r["output"] for r in qa_train}
    assert qa_heldout and not heldout_texts & train_texts
    assert not {r["voice"] for r in train_rows} & set(TINY.heldout_voices)
    assert {r["voice"] for r in train_rows} <= set(TINY.train_voices)
    assert not {r["text"] for r in train_rows} & heldout_texts
    corpus_text = (built / "text/corpus.txt").read_text()
    corpus = corpus_text.splitlines()
    for record in qa_heldout:
        assert not contains_phrase(corpus_text, record["instruction"]), record
        assert f"{record['instruction']}? {record['output']}." not in corpus
    for row in test_rows:
        assert row["voice"] in (TINY.heldout_voices if row["voice_split"] == "heldout" else TINY.train_voices)
        assert row["text"] in (heldout_texts if row["item_split"] == "heldout" else train_texts), row
        assert (row["voice_split"], row["item_split"]) != ("train", "train")
    groups = {(r["voice_split"], r["item_split"]) for r in test_rows}
    assert groups == {("heldout", "train"), ("heldout", "heldout"), ("train", "heldout")}


def test_spoken_questions_are_qa_instructions(built):
    instructions = {r["instruction"] for name in ("train", "heldout") for r in read_jsonl(built / f"qa/{name}.jsonl")}
    rows = read_jsonl(built / "speech_train.jsonl") + read_jsonl(built / "speech_test.jsonl")
    questions = [r for r in rows if r["kind"] == "question"]
    assert questions and all(r["text"] in instructions for r in questions)


def test_same_seed_gives_identical_files_whatever_the_workers(built, tmp_path):
    again = build_world(TINY, tmp_path / "again", num_workers=2)
    assert not again.already_built
    assert files_of(tmp_path / "again") == files_of(built)


def test_another_seed_gives_another_world(built, tmp_path):
    build_world(TINY.from_dict({**TINY.to_dict(), "seed": 1}), tmp_path / "other", num_workers=0)
    ours, theirs = files_of(built), files_of(tmp_path / "other")
    for name in ("qa/heldout.jsonl", "text/corpus.txt", "speech_train.jsonl", "audio/train/train-00000.wav"):
        assert ours[name] != theirs[name], name


def test_a_finished_world_is_not_rebuilt(built):
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    summary = build_world(TINY, built, num_workers=0)
    assert summary.already_built and summary.synthesized == 0
    assert summary.hours == json.loads((built / "world.json").read_text())["hours"]
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before


def test_another_config_is_refused_unless_overwrite(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    other = WorldConfig.from_dict({**TINY.to_dict(), "train_utterances": 20, "seed": 2})
    with pytest.raises(WorldError, match=r"another config \(differs in: seed, train_utterances\)"):
        build_world(other, copy, num_workers=0)
    summary = build_world(other, copy, num_workers=0, overwrite=True)
    assert not summary.already_built and summary.reused == 0
    assert json.loads((copy / "world.json").read_text())["seed"] == 2
    assert len(list((copy / "audio" / "train").iterdir())) == 20


def test_an_interrupted_build_resumes_to_the_same_files(built, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    monkeypatch.setattr(world_speech, "BATCH_SIZE", 8)
    calls = []
    synthesize_many = world_speech.synthesize_many

    def killed_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return synthesize_many(*args, **kwargs)

    monkeypatch.setattr(world_speech, "synthesize_many", killed_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_world(TINY, out, num_workers=0)
    monkeypatch.setattr(world_speech, "synthesize_many", synthesize_many)
    assert (out / "world.json.partial").exists() and not (out / "world.json").exists()
    assert not (out / "speech_train.jsonl").exists()
    written = sorted((out / "audio" / "train").glob("*.wav"))
    assert len(written) == 16  # the two batches synthesized before the kill
    # A kill can leave a temporary file; a later edit can break a WAV: both are cleaned up or redone.
    (out / "audio" / "train" / ".train-00003.wav.abc.tmp").write_bytes(b"torn")
    written[0].write_bytes(b"RIFF broken")
    written[1].unlink()
    with pytest.raises(WorldError, match=r"unfinished world built with another config \(differs in: seed\)"):
        build_world(TINY.from_dict({**TINY.to_dict(), "seed": 9}), out, num_workers=0)
    reports: list[tuple[int, int]] = []
    summary = build_world(TINY, out, num_workers=0, progress=lambda done, total: reports.append((done, total)))
    assert summary.reused == len(written) - 2 and summary.synthesized == 42 - summary.reused
    assert reports[0] == (summary.reused, 42) and reports[-1] == (42, 42)
    assert files_of(out) == files_of(built)


def test_a_world_with_missing_files_is_completed_without_speaking_again(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    (copy / "speech_test.jsonl").unlink()
    (copy / "qa" / "heldout.jsonl").unlink()
    (copy / "text" / "vocabulary.txt").unlink()
    summary = build_world(TINY, copy, num_workers=0)
    assert not summary.already_built and summary.reused == 42 and summary.synthesized == 0
    assert files_of(copy) == files_of(built)


def test_silent_synthesis_is_an_error_naming_the_utterance(tmp_path, monkeypatch):
    monkeypatch.setattr(
        world_speech, "synthesize_many", lambda texts, voices, **_: [np.zeros(800, np.float32)] * len(texts)
    )
    with pytest.raises(WorldError, match=r"train-00000: espeak-ng produced silence for '.+' with voice"):
        build_world(TINY, tmp_path / "w", num_workers=0)
    assert not (tmp_path / "w" / "world.json").exists()


def test_a_folder_that_is_not_a_world_is_left_alone(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "mine.wav").write_bytes(b"user data")
    for overwrite in (False, True):
        with pytest.raises(WorldError, match=r"holds audio but no world\.json"):
            build_world(TINY, tmp_path, num_workers=0, overwrite=overwrite)
    assert (tmp_path / "audio" / "mine.wav").read_bytes() == b"user data"
    (tmp_path / "file").write_text("x")
    with pytest.raises(WorldError, match="exists and is not a folder"):
        build_world(TINY, tmp_path / "file")


def test_unknown_voice_is_refused_before_anything_is_written(tmp_path):
    config = WorldConfig.from_dict({**TINY.to_dict(), "heldout_voices": ["en-us+nosuchvariant"]})
    with pytest.raises(ValueError, match="unknown espeak voice 'en-us\\+nosuchvariant'"):
        build_world(config, tmp_path / "w", num_workers=0)
    assert not (tmp_path / "w").exists()
