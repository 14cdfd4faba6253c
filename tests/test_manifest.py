import json

import pytest

from speechgpt.manifest import ManifestError, collect_audio_inputs, read_manifest, shard_items


def test_folders_are_searched_recursively_and_sorted(tmp_path):
    for name in ["b/2.wav", "a.flac", "b/1.WAV", "notes.txt.bak", "c/d/3.ogg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = collect_audio_inputs([tmp_path])
    assert [p.replace(str(tmp_path) + "/", "") for p in found] == ["a.flac", "b/1.WAV", "b/2.wav", "c/d/3.ogg"]


def test_manifest_formats(tmp_path):
    (tmp_path / "list.txt").write_text("# comment\nx.wav\n\n/abs/y.wav\n")
    assert read_manifest(tmp_path / "list.txt") == [str(tmp_path / "x.wav"), "/abs/y.wav"]
    (tmp_path / "train.tsv").write_text("/data/root\nspk1/a.flac\t16000\nspk2/b.flac\t32000\n")
    assert read_manifest(tmp_path / "train.tsv") == ["/data/root/spk1/a.flac", "/data/root/spk2/b.flac"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav"}) + "\n" + json.dumps({"path": "/b.wav"}) + "\n")
    assert read_manifest(tmp_path / "m.jsonl") == [str(tmp_path / "a.wav"), "/b.wav"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "no audio"}) + "\n")
    with pytest.raises(ManifestError, match="record 1 has no 'audio'"):
        read_manifest(tmp_path / "bad.jsonl")


def test_duplicates_kept_once_and_missing_things_reported(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    assert collect_audio_inputs([tmp_path / "a.wav", tmp_path / "a.wav"]) == [str(tmp_path / "a.wav")]
    # a missing audio file is left for the job to report per item; a missing folder is an error now
    assert collect_audio_inputs([tmp_path / "gone.wav"]) == [str(tmp_path / "gone.wav")]
    with pytest.raises(ManifestError, match="no such file or folder"):
        collect_audio_inputs([tmp_path / "missing_dir"])


def test_shards_partition_the_items():
    items = [str(i) for i in range(10)]
    shards = [shard_items(items, i, 3) for i in range(3)]
    assert shards[0] == ["0", "3", "6", "9"]
    assert sorted((item for shard in shards for item in shard), key=int) == items
    with pytest.raises(ValueError, match=r"--shard must be in 0\.\.2"):
        shard_items(items, 3, 3)
    with pytest.raises(ValueError, match="--num-shards"):
        shard_items(items, 0, 0)
