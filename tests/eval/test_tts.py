"""evaluate_tts and evaluate_resynthesis with a scripted model and a scripted judge; the judge loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechgpt.audio import load_audio
from speechgpt.constants import HOP_LENGTH
from speechgpt.data.templates import Direction, load_templates, pick_template
from speechgpt.eval.asr import read_eval_manifest
from speechgpt.eval.judge import JudgeASR, JudgeConfig
from speechgpt.eval.text_norm import normalize_text
from speechgpt.eval.tts import (
    HFCTCJudge,
    TextItem,
    Transcriber,
    evaluate_resynthesis,
    evaluate_tts,
    judge_transcripts,
    load_judge,
    read_text_items,
)
from speechgpt.infer import SpeechGPT
from speechgpt.manifest import ManifestError
from speechgpt.prompt_format import CROSS_MODAL_INPUT
from speechgpt.units import units_to_string
from tests.eval.test_asr import prompt_text, scripted, write_manifest
from tests.infer import build_tiny_bundle
from tests.synth import SAMPLE_RATE, random_utterance


class ScriptedJudge:
    """A judge that 'hears' the next of ``texts`` in each waveform and keeps every waveform it was given."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.heard: list[np.ndarray] = []
        self.rates: list[int | None] = []

    def transcribe(self, waves, *, sample_rate=None):
        self.heard.extend(np.asarray(w) for w in waves)
        self.rates.append(sample_rate)
        out, self.texts = self.texts[: len(waves)], self.texts[len(waves) :]
        return out


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


UNITS = [[3, 7, 9, 12, 4], [1, 2, 3, 4, 5, 6, 7, 8], [20, 21, 22]]


def test_judge_wer_of_the_spoken_replies(base, tmp_path):
    texts = [TextItem("s1", "the cat sat down", "animals"), "Paris is big.", TextItem("s3", "one two three", "numbers")]
    # The model speaks the first two and answers the third in text only (no units: silence).
    responses = [units_to_string(UNITS[0]), units_to_string(UNITS[1]), "sorry"]
    pipeline, _ = scripted(base, responses)
    judge = ScriptedJudge(["the cat sat town", "paris is big"])
    result = evaluate_tts(pipeline, texts, judge, audio_dir=tmp_path / "wavs")
    # words: 4 + 3 + 3 = 10; one substitution, three deletions (the unspoken sentence)
    assert result.wer == pytest.approx(4 / 10)
    assert result.report.words.deletions == 3 and result.report.words.substitutions == 1
    assert result.report.groups["animals"].wer == 0.25 and result.report.groups["numbers"].wer == 1.0
    assert result.spoken == 2 and result.spoken_rate == pytest.approx(2 / 3)
    assert [(r.id, r.hyp, r.units) for r in result.rows] == [
        ("s1", "the cat sat town", 5),
        ("text-1", "paris is big", 8),
        ("s3", "", 0),
    ]
    # The judge heard exactly the vocoder's waveforms of the scripted units, at 16 kHz; nothing for the silence.
    assert len(judge.heard) == 2 and judge.rates == [SAMPLE_RATE]
    for heard, units in zip(judge.heard, UNITS[:2], strict=True):
        expected = base.vocoder.synthesize(units).numpy()
        np.testing.assert_allclose(heard, expected, atol=1e-6)
    assert result.audio_seconds == pytest.approx(sum(len(w) for w in judge.heard) / SAMPLE_RATE)
    saved, rate = sf.read(tmp_path / "wavs" / "s1.wav", dtype="float32")
    assert rate == SAMPLE_RATE and len(saved) == len(judge.heard[0])
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == ["s1.wav", "text-1.wav"]
    data = result.to_dict()
    assert data["kind"] == "tts" and data["wer"] == pytest.approx(0.4) and data["spoken_rate"] == pytest.approx(2 / 3)


def test_each_text_is_asked_with_a_packaged_text_to_speech_template(base):
    items = [TextItem("k1", "read me"), TextItem("k2", "and me too")]
    pipeline, lm = scripted(base, [units_to_string([1, 2]), units_to_string([3, 4])])
    evaluate_tts(pipeline, items, ScriptedJudge(["a", "b"]), template_seed=1)
    templates = load_templates(Direction.TEXT_TO_SPEECH)
    for item, prompt in zip(items, lm.prompts, strict=True):
        template = pick_template(templates, key=f"{item.id}-tts", seed=1)
        assert prompt_text(base, prompt).endswith(
            f"[Human]: {template}{CROSS_MODAL_INPUT}{item.text}<eoh>. [SpeechGPT]: "
        )


def test_waveforms_too_short_for_the_judge_count_as_silence():
    judge = ScriptedJudge(["long one"])
    texts = judge_transcripts(judge, [np.zeros(100, np.float32), None, np.zeros(800, np.float32)])
    assert texts == ["", "", "long one"] and len(judge.heard) == 1 and judge.heard[0].size == 800


def test_tts_refuses_bad_input(base):
    pipeline, _ = scripted(base, [])
    with pytest.raises(ValueError, match="texts\\[1\\] is empty"):
        evaluate_tts(pipeline, ["fine", "  "], ScriptedJudge([]))
    with pytest.raises(TypeError, match="sequence of strings"):
        evaluate_tts(pipeline, "one string", ScriptedJudge([]))
    silent = SpeechGPT(pipeline.model, base.tokenizer, speech_tokenizer=base.speech_tokenizer, vocoder=None)
    with pytest.raises(ValueError, match="no vocoder"):
        evaluate_tts(silent, ["hi"], ScriptedJudge([]))


def test_text_items_from_txt_and_jsonl(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("# comment\nfirst line\n\nsecond line\nfirst line\n")
    assert read_text_items(txt) == [TextItem("line-2", "first line"), TextItem("line-4", "second line")]
    assert len(read_text_items(txt, unique=False)) == 3
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"id": "q1", "text": "what is red", "family": "colour", "voice_split": "heldout"},
        {"id": "q2", "text": "what is red", "family": "colour", "voice_split": "train"},
        {"id": "q3", "text": "two plus two", "family": "arithmetic", "voice_split": "train"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_text_items(manifest) == [
        TextItem("q1", "what is red", "colour"),
        TextItem("q3", "two plus two", "arithmetic"),
    ]
    assert [i.id for i in read_text_items(manifest, where={"voice_split": "train"})] == ["q2", "q3"]
    bad = tmp_path / "bad.csv"
    bad.write_text("x\n")
    with pytest.raises(ManifestError, match=r"expected a \.txt file"):
        read_text_items(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ManifestError, match="no text"):
        read_text_items(empty)


# --- resynthesis ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    rows = [
        {"id": "h1", "audio": "audio/h1.wav", "text": "the cat", "voice": "hv1"},
        {"id": "h2", "audio": "audio/h2.wav", "text": "a big red dog", "voice": "hv2"},
    ]
    return read_eval_manifest(write_manifest(tmp_path_factory.mktemp("held"), rows))


def test_resynthesis_wer_and_the_ceiling_on_the_originals(base, held_out):
    # resynthesis heard: "the hat" (1 of 2 wrong), "a big red dog" (right): 1/6; originals: both right.
    judge = ScriptedJudge(["the hat", "a big red dog", "the cat", "a big red dog"])
    done = []
    result = evaluate_resynthesis(
        base.vocoder, base.speech_tokenizer, held_out, judge, progress=lambda d, t: done.append(d)
    )
    assert result.wer == pytest.approx(1 / 6) and result.ceiling.wer == 0.0
    assert result.report.groups["hv1"].wer == 0.5 and result.ceiling.groups["hv2"].wer == 0.0
    assert [(r.id, r.hyp, r.original_hyp, r.wer) for r in result.rows] == [
        ("h1", "the hat", "the cat", 0.5),
        ("h2", "a big red dog", "a big red dog", 0.0),
    ]
    assert done == [1, 2]
    # First the vocoder's output for the recordings' units, then the recordings themselves.
    for heard, item in zip(judge.heard[:2], held_out, strict=True):
        units = base.speech_tokenizer.encode(item.audio)
        np.testing.assert_allclose(heard, base.vocoder.synthesize(units.ids).numpy(), atol=1e-6)
    for heard, item in zip(judge.heard[2:], held_out, strict=True):
        np.testing.assert_array_equal(heard, load_audio(item.audio))
    assert result.audio_seconds == pytest.approx(sum(h.size for h in judge.heard[:2]) / SAMPLE_RATE)
    assert result.vocoder_seconds > 0 and result.to_dict()["ceiling_wer"] == 0.0


class LexiconJudge:
    """A judge with a word list: what it hears depends on the decoding asked for, and it says how it decodes."""

    decoding = "lexicon"

    def __init__(self, heard: dict[str, list[str]]) -> None:
        self.scripts = {name: ScriptedJudge(texts) for name, texts in heard.items()}

    def describe_decoding(self) -> str:
        return "lexicon beam search (2 words)"

    def transcribe(self, waves, *, sample_rate=None, decoding=None):
        return self.scripts[decoding or self.decoding].transcribe(waves, sample_rate=sample_rate)


def test_resynthesis_by_a_lexicon_judge_reports_its_greedy_numbers_too(base, held_out):
    judge = LexiconJudge(
        {
            "lexicon": ["the cat", "a big red dog", "the cat", "a big red dog"],
            "greedy": ["the cot", "a big rd dg", "the cat", "a bg red dog"],
        }
    )
    result = evaluate_resynthesis(base.vocoder, base.speech_tokenizer, held_out, judge)
    assert result.wer == 0.0 and result.ceiling.wer == 0.0
    assert result.greedy == {"wer": pytest.approx(3 / 6), "ceiling_wer": pytest.approx(1 / 6)}
    assert result.judge == "lexicon beam search (2 words)"
    # Both decodings heard the same waveforms: the resynthesis, then the originals.
    for a, b in zip(judge.scripts["lexicon"].heard, judge.scripts["greedy"].heard, strict=True):
        np.testing.assert_array_equal(a, b)
    document = result.to_dict()
    assert document["judge"] == "lexicon beam search (2 words)" and document["greedy"]["wer"] == pytest.approx(0.5)
    # A judge without a word list gets no greedy numbers, and is named by its class.
    plain = evaluate_resynthesis(base.vocoder, base.speech_tokenizer, held_out, ScriptedJudge(["x"] * 4))
    assert plain.greedy is None and plain.judge == "ScriptedJudge"


def test_resynthesis_with_true_durations_keeps_the_recordings_length(base, held_out):
    judge = ScriptedJudge(["x"] * 4)
    result = evaluate_resynthesis(base.vocoder, base.speech_tokenizer, held_out, judge, true_durations=True)
    assert result.durations == "true"
    for heard, item in zip(judge.heard[:2], held_out, strict=True):
        assert heard.size == HOP_LENGTH * base.speech_tokenizer.encode(item.audio).num_frames


# --- judges -----------------------------------------------------------------------------------------------------


def tiny_hf_ctc(folder):
    """A random 7k-parameter Wav2Vec2ForCTC with a character tokenizer, saved like a Hub checkpoint."""
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({c: 5 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, return_attention_mask=False)
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(folder)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return model, tokenizer


def test_a_hugging_face_ctc_folder_is_a_judge(tmp_path):
    model, tokenizer = tiny_hf_ctc(tmp_path / "hf")
    judge = load_judge(tmp_path / "hf", device="cpu")
    assert isinstance(judge, HFCTCJudge) and isinstance(judge, Transcriber)
    waves = [random_utterance(1), random_utterance(2)[:8000]]
    texts = judge.transcribe(waves, sample_rate=SAMPLE_RATE)
    # The same decode by hand: normalised input, argmax per frame, CTC collapse, special tokens dropped.
    for wave, text in zip(waves, texts, strict=True):
        values = torch.from_numpy((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7))[None]
        with torch.no_grad():
            ids = model(values).logits.argmax(-1)[0].tolist()
        assert text == normalize_text(tokenizer.decode(ids, skip_special_tokens=True))
    assert any(texts) and all(t == normalize_text(t) for t in texts)
    # A file is read through the package's audio loader, to the same transcript.
    path = tmp_path / "a.wav"
    sf.write(path, waves[0], SAMPLE_RATE)
    assert judge.transcribe([path]) == texts[:1]
    # Without its processor files the folder is not a judge.
    for name in ("preprocessor_config.json", "processor_config.json"):
        (tmp_path / "hf" / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="not a loadable Hugging Face CTC model"):
        load_judge(tmp_path / "hf")


def test_load_judge_tells_our_judge_from_hugging_face_and_from_junk(tmp_path):
    config = JudgeConfig(conv_channels=8, hidden_size=8, num_layers=1)
    JudgeASR(config).save_pretrained(tmp_path / "ours")
    ours = load_judge(tmp_path / "ours", device="cpu")
    assert isinstance(ours, JudgeASR) and isinstance(ours, Transcriber) and ours.config == config
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="neither a judge"):
        load_judge(tmp_path / "junk")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_judge(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such judge folder"):
        load_judge(tmp_path / "missing")
