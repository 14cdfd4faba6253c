"""Acceptance: `speechgpt units encode` on files in the released formats gives the fairseq computation's units.

The checkpoint is a random tiny mHuBERT written in fairseq's pickle layout (with pickled ``fairseq.*`` objects), the
k-means a genuine scikit-learn estimator dumped with joblib; the expected units come from reference math written
from the released system's facts (``tests/fairseq_reference.py``), not from our implementation.
"""

import itertools
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from speechgpt.serve.cli import app
from tests.fairseq_reference import (
    numpy_assign,
    random_fairseq_hubert_state_dict,
    reference_hubert_layer,
    tiny_fairseq_hubert_cfg,
    write_fairseq_hubert_checkpoint,
    write_sklearn_kmeans,
)
from tests.synth import SAMPLE_RATE, random_utterance


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    cfg = tiny_fairseq_hubert_cfg()
    state_dict = random_fairseq_hubert_state_dict(cfg, seed=3)
    write_fairseq_hubert_checkpoint(root / "mhubert_base_vp_en_es_fr_it3.pt", cfg, state_dict)
    # Centres are real layer-11 frames of this model, so assignments are well separated, like a trained codebook.
    frames = np.concatenate([reference_hubert_layer(state_dict, cfg, random_utterance(s)).numpy() for s in range(3)])
    centers = frames[np.random.default_rng(0).choice(len(frames), 40, replace=False)].astype(np.float32)
    write_sklearn_kmeans(root / "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin", centers, minibatch=True)
    return root, cfg, state_dict, centers


def _expected_units(state_dict, cfg, centers, wave):
    ids = numpy_assign(reference_hubert_layer(state_dict, cfg, wave, 11), centers).tolist()
    runs = [(unit, len(list(group))) for unit, group in itertools.groupby(ids)]
    return [u for u, _ in runs], [n for _, n in runs]


def test_encode_released_files_matches_the_fairseq_computation(released, tmp_path):
    root, cfg, state_dict, centers = released
    waves = {f"clip{i}.wav": random_utterance(50 + i, num_phones=6 + 5 * i) for i in range(3)}
    waves["odd.wav"] = random_utterance(60)[: 16000 + 5 * 320 + 17]  # odd frame count
    for name, wave in waves.items():
        sf.write(tmp_path / name, wave, SAMPLE_RATE, subtype="FLOAT")
    out = tmp_path / "units.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "units",
            "encode",
            *(str(tmp_path / name) for name in waves),
            "--hubert",
            str(root / "mhubert_base_vp_en_es_fr_it3.pt"),
            "--kmeans",
            str(root / "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(waves)
    distinct = set()
    for record, (name, wave) in zip(records, waves.items(), strict=True):
        units, durations = _expected_units(state_dict, cfg, centers, wave)
        assert record["audio"] == str(tmp_path / name)
        assert record["units"] == units
        assert record["durations"] == durations
        assert record["unit_string"] == "<sosp>" + "".join(f"<{u}>" for u in units) + "<eosp>"
        distinct.update(units)
    assert len(distinct) >= 10  # a codebook that really separates frames, not one unit everywhere
