"""evaluate_qa in the four input/output combinations with scripted replies; questions from a real tiny world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechgpt.data.world import WorldConfig
from speechgpt.data.world_speech import WorldError, build_world
from speechgpt.eval.qa import COMBOS, Combo, QaItem, evaluate_qa, load_world_questions
from speechgpt.infer import SpeechGPT
from speechgpt.prompt_format import OUTPUT_MODALITY_CUES, Modality
from speechgpt.units import units_to_string
from tests.eval.test_asr import prompt_text, scripted
from tests.eval.test_tts import ScriptedJudge
from tests.infer import build_tiny_bundle
from tests.synth import SAMPLE_RATE, random_utterance


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tiny = build_tiny_bundle(tmp_path_factory.mktemp("bundle"))
    return SpeechGPT.from_pretrained(tiny.path, device="cpu")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    folder = tmp_path_factory.mktemp("questions")
    specs = [
        ("q0", "what colour is grass", "grass is green", "colour"),
        ("q1", "what colour is snow", "snow is white", "colour"),
        ("q2", "what is the capital of france", "the capital of france is paris", "capital"),
    ]
    items = []
    for index, (item_id, question, answer, family) in enumerate(specs):
        sf.write(folder / f"{item_id}.wav", random_utterance(40 + index), SAMPLE_RATE)
        items.append(QaItem(item_id, question, answer, family, str(folder / f"{item_id}.wav"), "v"))
    return items


U = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15]]


def test_four_combinations_scored_against_hand_counts(base, questions):
    q = [item.question for item in questions]
    a = [item.answer for item in questions]
    responses = [
        # speech-speech: right; wrong text answer + one misheard question word; right text but no units
        f"{q[0]}; [ta] {a[0]}; [ua] {units_to_string(U[0])}",
        f"what colour is snot; [ta] snow is blue; [ua] {units_to_string(U[1])}",
        f"{q[2]}; [ta] {a[2]}",
        # speech-text: right; right inside extra words (contains, not exact); right but no transcript
        f"{q[0]}; [ta] {a[0]}",
        f"{q[1]}; [ta] well, {a[1]} indeed",
        f"[ta] {a[2]}",
        # text-speech: all text right, all spoken
        f"[ta] {a[0]}; [ua] {units_to_string(U[0])}",
        f"[ta] {a[1]}; [ua] {units_to_string(U[2])}",
        f"[ta] {a[2]}; [ua] {units_to_string(U[3])}",
        # text-text: right, right, wrong
        f"[ta] {a[0]}",
        f"[ta] {a[1]}",
        "[ta] no idea",
    ]
    pipeline, _ = scripted(base, responses)
    # What the judge hears in each spoken answer, in order: speech-speech (2 spoken), then text-speech (3).
    judge = ScriptedJudge([a[0], a[1], a[0], "something else", f"{a[2]} ok"])
    done = []
    result = evaluate_qa(pipeline, questions, judge, progress=lambda d, t: done.append((d, t)))
    assert list(result.combos) == list(COMBOS) and done[-1] == (12, 12) and len(done) == 12

    ss, st, ts, tt = (result.combos[name] for name in COMBOS)
    assert [r.text_exact for r in ss.rows] == [True, False, True]
    assert [r.speech_contains for r in ss.rows] == [True, True, False]
    assert ss.text_exact.accuracy == pytest.approx(2 / 3) and ss.speech_exact.accuracy == pytest.approx(2 / 3)
    assert ss.parse_rate == pytest.approx(2 / 3) and [r.parsed for r in ss.rows] == [True, True, False]
    question_words = sum(len(x.split()) for x in q)
    assert ss.transcript.wer == pytest.approx(1 / question_words)

    assert st.text_exact.accuracy == pytest.approx(2 / 3) and st.text_contains.accuracy == 1.0
    assert st.speech_exact is None and st.speech_contains is None and st.rows[0].spoken is None
    assert st.parse_rate == pytest.approx(2 / 3)  # the third has no transcript
    assert st.transcript.wer == pytest.approx(len(q[2].split()) / question_words)

    assert ts.text_exact.accuracy == 1.0 and ts.parse_rate == 1.0 and ts.transcript is None
    assert ts.speech_exact.accuracy == pytest.approx(1 / 3) and ts.speech_contains.accuracy == pytest.approx(2 / 3)
    assert [r.spoken for r in ts.rows] == [a[0], "something else", f"{a[2]} ok"]
    assert [r.units for r in ts.rows] == [4, 5, 3]
    assert tt.text_exact.accuracy == pytest.approx(2 / 3) and tt.speech_exact is None

    # Headline: text answers to spoken questions (speech-speech + speech-text), spoken answers of speech-speech.
    assert result.text_accuracy == pytest.approx(5 / 6)
    assert result.speech_accuracy == pytest.approx(2 / 3)
    assert result.families() == {
        "colour": {"text": pytest.approx(3 / 4), "speech": 1.0},
        "capital": {"text": 1.0, "speech": 0.0},
    }
    assert ss.text_contains.groups["colour"].accuracy == 0.5
    # The judge heard the vocoder's waveform of the scripted units.
    np.testing.assert_allclose(judge.heard[0], base.vocoder.synthesize(U[0]).numpy(), atol=1e-6)
    assert len(judge.heard) == 5

    data = result.to_dict()
    assert data["kind"] == "qa" and data["text_accuracy"] == pytest.approx(5 / 6)
    assert data["combos"]["text-speech"]["speech_contains"]["accuracy"] == pytest.approx(2 / 3)
    json.dumps(data)  # plain JSON


def test_each_combination_asks_the_way_the_chain_of_modality_data_does(base, questions):
    item = questions[0]
    pipeline, lm = scripted(base, ["[ta] x"] * 4)
    evaluate_qa(pipeline, [item], ScriptedJudge([]), combos=COMBOS)
    units = base.speech_tokenizer.encode(item.audio).to_string()
    cue_text, cue_speech = OUTPUT_MODALITY_CUES[Modality.TEXT], OUTPUT_MODALITY_CUES[Modality.SPEECH]
    expected = [f"{units}", f"{units}{cue_text}", f"{item.question}{cue_speech}", f"{item.question}"]
    for prompt, question in zip(lm.prompts, expected, strict=True):
        assert prompt_text(base, prompt).endswith(f"[Human]: {question}<eoh>. [SpeechGPT]: ")


def test_text_output_combinations_need_no_judge(base, questions):
    pipeline, _ = scripted(base, [f"[ta] {item.answer}" for item in questions])
    result = evaluate_qa(pipeline, questions, None, combos=["text-text"])
    assert result.text_accuracy == 1.0 and result.speech_accuracy is None
    assert result.families() == {"colour": {"text": 1.0, "speech": None}, "capital": {"text": 1.0, "speech": None}}


def test_bad_requests_are_refused(base, questions):
    pipeline, _ = scripted(base, [])
    with pytest.raises(ValueError, match="judge ASR is needed"):
        evaluate_qa(pipeline, questions, None, combos=["speech-speech"])
    typed = [QaItem("t", "what is two plus two", "four")]
    with pytest.raises(ValueError, match=r"\['t'\] have no audio"):
        evaluate_qa(pipeline, typed, None, combos=["speech-text"])
    with pytest.raises(ValueError, match="unknown combination 'speech-music'; valid: speech-speech"):
        evaluate_qa(pipeline, questions, None, combos=["speech-music"])
    with pytest.raises(ValueError, match="repeat"):
        evaluate_qa(pipeline, questions, None, combos=["text-text", ("text", "text")])
    with pytest.raises(ValueError, match="questions is empty"):
        evaluate_qa(pipeline, [], None)
    assert Combo.parse(("speech", Modality.TEXT)).name == "speech-text"


# --- questions of a speech world --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "world"
    config = WorldConfig(
        questions_per_family=3,
        heldout_fraction=0.3,
        train_utterances=1,
        test_utterances=24,
        families=("capital", "colour", "arithmetic"),
    )
    build_world(config, out, num_workers=0)
    return out


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_world_questions_are_spoken_test_questions_with_their_answers(world):
    qa = {r["instruction"]: r for r in rows_of(world / "qa" / "heldout.jsonl")}
    test_rows = rows_of(world / "speech_test.jsonl")
    for voices in ("heldout", "train", "all"):
        items = load_world_questions(world, split="heldout", voices=voices)
        expected = [
            r
            for r in test_rows
            if r["kind"] == "question" and r["item_split"] == "heldout" and voices in ("all", r["voice_split"])
        ]
        assert [i.id for i in items] == [r["id"] for r in expected] and items
        for item, row in zip(items, expected, strict=True):
            assert item.question == row["text"] and item.answer == qa[row["text"]]["output"]
            assert item.family == qa[row["text"]]["family"] and item.voice == row["voice"]
            assert item.audio == str(world / row["audio"]) and sf.info(item.audio).samplerate == SAMPLE_RATE
            assert item.extra["qa_id"] == qa[row["text"]]["id"]
    trained = load_world_questions(world, split="train", voices="heldout")
    train_answers = {r["instruction"]: r["output"] for r in rows_of(world / "qa" / "train.jsonl")}
    assert trained and all(train_answers[i.question] == i.answer for i in trained)
    assert len(load_world_questions(world, voices="all", limit=2)) == 2


def test_world_question_errors(world, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_world_questions(world, split="test")
    with pytest.raises(ValueError, match="voices must be one of"):
        load_world_questions(world, voices="nobody")
    with pytest.raises(WorldError, match="build the world first"):
        load_world_questions(tmp_path)
