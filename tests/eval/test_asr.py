"""evaluate_asr: the model's cross-modal speech→text path, scored against hand-counted errors.

Also home of the helpers the other evaluation tests share: a scripted LM that writes one given response per
answer, and a pipeline around it that uses a real tiny bundle's tokenizers and vocoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from speechgpt.data.templates import Direction, load_templates, pick_template
from speechgpt.eval.asr import EvalItem, evaluate_asr, read_eval_manifest, sample_items, select_evenly
from speechgpt.infer import GenerationOptions, SpeechGPT
from speechgpt.manifest import ManifestError
from speechgpt.prompt_format import CROSS_MODAL_INPUT
from tests.infer import ScriptedLM, build_tiny_bundle
from tests.synth import SAMPLE_RATE, random_utterance


class QueueLM(ScriptedLM):
    """A scripted LM that writes the next of ``scripts`` for each new answer (then the stop token)."""

    def __init__(self, scripts: list[list[int]], vocab_size: int, fallback: int) -> None:
        super().__init__([], vocab_size, fallback)
        self.queue = list(scripts)

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> object:
        if input_ids.shape[1] > 1:  # a prompt: the next answer starts
            self.script = self.queue.pop(0) if self.queue else []
        return super().forward(input_ids, **kwargs)


def scripted(base: SpeechGPT, responses: list[str]) -> tuple[SpeechGPT, QueueLM]:
    """A pipeline over ``base``'s tokenizers and vocoder whose LM answers with ``responses``, in order."""
    scripts = [base.encoder.encode_trusted(response) for response in responses]
    lm = QueueLM(scripts, len(base.tokenizer), fallback=base.vocab.eos_id)
    pipeline = SpeechGPT(lm, base.tokenizer, speech_tokenizer=base.speech_tokenizer, vocoder=base.vocoder)
    return pipeline, lm


def prompt_text(base: SpeechGPT, ids: list[int]) -> str:
    return base.encoder.decode(ids, stop_at_eos=False)


def write_manifest(folder: Path, rows: list[dict], name: str = "test.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        if "audio" in row and not (folder / row["audio"]).exists() and not row.get("missing"):
            (folder / row["audio"]).parent.mkdir(parents=True, exist_ok=True)
            sf.write(folder / row["audio"], random_utterance(500 + index), SAMPLE_RATE)
    path = folder / name
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "missing"}) + "\n" for r in rows))
    return path


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


# Ten reference words in four utterances; voice v1 says six of them, v2 four.
ROWS = [
    {"id": "a", "audio": "audio/a.wav", "text": "the cat sat down", "voice": "v1"},
    {"id": "b", "audio": "audio/b.wav", "text": "Hello there!", "voice": "v2"},
    {"id": "c", "audio": "audio/c.wav", "text": "two dogs", "voice": "v1"},
    {"id": "d", "audio": "audio/d.wav", "text": "blue sky", "voice": "v2"},
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_manifest(tmp_path_factory.mktemp("set"), ROWS)


def test_one_substituted_word_in_ten_is_wer_one_tenth(base, manifest):
    items = read_eval_manifest(manifest)
    # "sat" -> "sad" in a; b differs only in case and punctuation (normalised away); c and d are exact.
    pipeline, _ = scripted(base, ["the cat sad down", "hello there", "two dogs", "blue sky"])
    done = []
    result = evaluate_asr(pipeline, items, progress=lambda d, t: done.append((d, t)))
    assert result.wer == pytest.approx(0.1)
    assert result.report.words.substitutions == 1 and result.report.words.reference_length == 10
    # characters: "the cat sat down" (16) "hello there" (11) "two dogs" (8) "blue sky" (8): one substituted
    assert result.cer == pytest.approx(1 / 43)
    assert result.report.groups["v1"].wer == pytest.approx(1 / 6)
    assert result.report.groups["v2"].wer == 0.0
    assert [(r.id, r.group, r.hyp) for r in result.rows] == [
        ("a", "v1", "the cat sad down"),
        ("b", "v2", "hello there"),
        ("c", "v1", "two dogs"),
        ("d", "v2", "blue sky"),
    ]
    assert [r.wer for r in result.rows] == [0.25, 0.0, 0.0, 0.0]
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.failures == [] and result.truncated == 0
    assert result.audio_seconds == pytest.approx(4 * len(random_utterance(0)) / SAMPLE_RATE)
    data = result.to_dict()
    assert data["kind"] == "asr" and data["wer"] == pytest.approx(0.1) and len(data["rows"]) == 4
    assert data["groups"]["v1"]["utterances"] == 2


def test_the_model_is_asked_with_a_packaged_template_and_the_recordings_units(base, manifest):
    items = read_eval_manifest(manifest)
    pipeline, lm = scripted(base, ["x"] * 4)
    evaluate_asr(pipeline, items, template_seed=3)
    templates = load_templates(Direction.SPEECH_TO_TEXT)
    for item, prompt in zip(items, lm.prompts, strict=True):
        template = pick_template(templates, key=f"{item.id}-asr", seed=3)
        units = base.speech_tokenizer.encode(item.audio).to_string()
        assert prompt_text(base, prompt).endswith(f"[Human]: {template}{CROSS_MODAL_INPUT}{units}<eoh>. [SpeechGPT]: ")
    # No output cue: the cross-modal records have none.
    assert all("Answer in" not in prompt_text(base, p) for p in lm.prompts)


def test_transcript_is_the_fallback_when_the_text_answer_is_empty(base, manifest):
    items = read_eval_manifest(manifest)[:1]
    pipeline, _ = scripted(base, ["the cat sat down; [ta] "])
    result = evaluate_asr(pipeline, items)
    assert result.rows[0].hyp == "the cat sat down" and result.wer == 0.0


def test_unreadable_audio_is_listed_and_the_rest_is_scored(base, tmp_path):
    rows = [
        {"id": "ok", "audio": "audio/ok.wav", "text": "one two", "voice": "v"},
        {"id": "gone", "audio": "audio/gone.wav", "text": "three", "voice": "v", "missing": True},
    ]
    items = read_eval_manifest(write_manifest(tmp_path, rows))
    pipeline, _ = scripted(base, ["one three"])
    result = evaluate_asr(pipeline, items)
    assert [f[0] for f in result.failures] == ["gone"] and "gone.wav" in result.failures[0][1]
    assert result.wer == 0.5 and result.report.utterances == 1
    with pytest.raises(ValueError, match="none of the 1 item"):
        evaluate_asr(pipeline, items[1:])


def test_bad_arguments_are_refused(base, manifest):
    items = read_eval_manifest(manifest)
    pipeline, _ = scripted(base, [])
    with pytest.raises(ValueError, match="output_modality must be 'auto'"):
        evaluate_asr(pipeline, items, options=GenerationOptions(output_modality="text"))
    with pytest.raises(ValueError, match="items is empty"):
        evaluate_asr(pipeline, [])


def test_truncated_replies_are_counted(base, manifest):
    items = read_eval_manifest(manifest)[:1]
    pipeline, _ = scripted(base, ["the cat sat down and then some more words"])
    result = evaluate_asr(pipeline, items, options=GenerationOptions(temperature=0, max_new_tokens=3))
    assert result.truncated == 1 and result.wer > 0


# --- manifests --------------------------------------------------------------------------------------------------


def test_manifest_paths_groups_and_extra_fields(manifest):
    items = read_eval_manifest(manifest)
    assert [i.id for i in items] == ["a", "b", "c", "d"]
    assert items[0].audio == str(manifest.parent / "audio/a.wav") and Path(items[0].audio).is_file()
    assert items[0] == EvalItem("a", str(manifest.parent / "audio/a.wav"), "the cat sat down", "v1", {"voice": "v1"})


def test_manifest_filters_limits_and_speakers(tmp_path):
    rows = [
        {"audio": f"/abs/{i}.wav", "text": f"t{i}", "speaker": f"s{i % 2}", "voice_split": ["train", "heldout"][i % 2]}
        for i in range(10)
    ]
    path = write_manifest(tmp_path, [{**r, "missing": True} for r in rows])
    items = read_eval_manifest(path, where={"voice_split": "heldout"})
    assert [i.text for i in items] == ["t1", "t3", "t5", "t7", "t9"]
    assert {i.group for i in items} == {"s1"} and items[0].id == "/abs/1.wav" and items[0].audio == "/abs/1.wav"
    sample = read_eval_manifest(path, limit=3)
    assert [i.text for i in sample] == [i.text for i in read_eval_manifest(path, limit=3)]  # the same every run
    positions = [int(i.text[1:]) for i in sample]
    assert len(set(positions)) == 3 and positions == sorted(positions)  # distinct items in manifest order
    with pytest.raises(ManifestError, match="no records matching"):
        read_eval_manifest(path, where={"voice_split": "nobody"})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"audio": "a.wav"}'], "record 1 has no 'text'"),
        (['{"text": "hi"}'], "record 1 has no 'audio'"),
        (['{"id": "x", "audio": "a.wav", "text": "a"}', '{"id": "x", "audio": "b.wav", "text": "b"}'], "repeats id"),
        ([], "no records"),
    ],
)
def test_bad_manifests_name_the_record(tmp_path, lines, message):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=message):
        read_eval_manifest(path)


def test_missing_manifest_and_bad_limit(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        read_eval_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="limit must be a positive int"):
        sample_items([1, 2, 3], 0)
    assert sample_items([1, 2, 3], 5) == [1, 2, 3] and sample_items([1, 2, 3], None) == [1, 2, 3]
    # A manifest cycling through two voices: evenly spaced picks would hear one voice only, a sample hears both.
    voices = ["a", "b"] * 50
    assert set(sample_items(voices, 10)) == {"a", "b"}
    assert sample_items(list(range(100)), 10, seed=1) != sample_items(list(range(100)), 10)
    assert select_evenly(list(range(8)), 4) == [0, 2, 4, 6] and select_evenly([1, 2], None) == [1, 2]
    assert select_evenly(voices, 10) == ["a"] * 10  # the aliasing sample_items avoids
    with pytest.raises(ValueError, match="limit must be a positive int"):
        select_evenly([1, 2, 3], 0)
