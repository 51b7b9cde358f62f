import pandas as pd
import pyarrow.parquet as pq
import pytest

from vidprior.io import manifest as manifest_io
from vidprior.io.checkpoint import ChunkStore, clear_partials
from vidprior.io.manifest import ManifestError, read_manifest, read_rejects, write_manifest, write_rejects
from vidprior.io.shards import Shard, merge_shards


def _frame(ids):
    return pd.DataFrame({"id": list(ids), "value": range(len(ids))})


def test_manifest_round_trip_keeps_columns_and_order(tmp_path):
    df = _frame(["b", "a", "c"])
    write_manifest(df, tmp_path)
    back = read_manifest(tmp_path)
    pd.testing.assert_frame_equal(back, df)


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(ManifestError, match=r"duplicate id\(s\) \['a'\]"):
        write_manifest(_frame(["a", "b", "a"]), tmp_path)
    assert not (tmp_path / manifest_io.MANIFEST).exists()


def test_interrupted_write_leaves_previous_manifest_intact(tmp_path, monkeypatch):
    write_manifest(_frame(["a", "b"]), tmp_path)

    def torn_write(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise KeyboardInterrupt  # what a kill mid-write looks like to the writer

    monkeypatch.setattr(manifest_io.pq, "write_table", torn_write)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(_frame(["x", "y", "z"]), tmp_path)
    monkeypatch.undo()
    assert read_manifest(tmp_path)["id"].tolist() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == [manifest_io.MANIFEST]  # no temp file left


def test_rejects_always_have_standard_columns(tmp_path):
    write_rejects(pd.DataFrame(), tmp_path)
    empty = read_rejects(tmp_path)
    assert list(empty.columns) == manifest_io.REJECT_COLUMNS and len(empty) == 0
    write_rejects(pd.DataFrame({"id": ["a"], "stage": ["s"], "reason": ["r"], "extra": [1]}), tmp_path)
    assert read_rejects(tmp_path).columns.tolist() == [*manifest_io.REJECT_COLUMNS, "extra"]


def test_reject_without_reason_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="reason"):
        write_rejects(pd.DataFrame({"id": ["a"], "stage": ["s"], "reason": [None]}), tmp_path)


def test_missing_columns_are_named(tmp_path):
    pq.write_table(
        pd.DataFrame({"x": [1]}).pipe(lambda d: __import__("pyarrow").Table.from_pandas(d)),
        tmp_path / manifest_io.MANIFEST,
    )
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['id'\]"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text", ["3/3", "-1/2", "a/b", "1", "0/0", "2 / 4x"])
def test_shard_parse_rejects_bad_specs(text):
    with pytest.raises(ValueError, match="--shard"):
        Shard.parse(text)


def test_shards_partition_ids_stably():
    ids = [f"item-{i}" for i in range(1000)]
    shards = [Shard.parse(f"{i}/4") for i in range(4)]
    owners = [[s for s in shards if s.owns(item)] for item in ids]
    assert all(len(o) == 1 for o in owners)  # every item in exactly one shard
    sizes = [sum(o[0] is s for o in owners) for s in shards]
    assert min(sizes) > 200  # roughly balanced
    assert [Shard(1, 4).owns(i) for i in ids] == [Shard.parse("1/4").owns(i) for i in ids]


def test_merge_shards_joins_and_refuses_overlap(tmp_path):
    df = _frame([f"id-{i}" for i in range(50)])
    dirs = []
    for i in range(3):
        shard_dir = tmp_path / f"shard{i}"
        write_manifest(Shard(i, 3).select(df), shard_dir)
        write_rejects(pd.DataFrame({"id": [f"r{i}"], "stage": ["s"], "reason": ["why"]}), shard_dir)
        dirs.append(shard_dir)
    stats = merge_shards(dirs, tmp_path / "merged")
    assert stats == {"items": 50, "rejects": 3, "shards": 3, "media": 0}
    assert sorted(read_manifest(tmp_path / "merged")["id"]) == sorted(df["id"])
    with pytest.raises(ManifestError, match="duplicate id"):
        merge_shards([dirs[0], dirs[0]], tmp_path / "bad")


def test_chunk_store_reuses_finished_chunks_and_drops_stale_ones(tmp_path):
    import numpy as np

    calls = []

    def compute(i):
        calls.append(i)
        return np.full(3, i)

    store = ChunkStore(tmp_path, "emb", "fp-1")
    store.array(0, lambda: compute(0))
    again = ChunkStore(tmp_path, "emb", "fp-1")
    assert again.array(0, lambda: compute(99)).tolist() == [0, 0, 0]
    assert (again.reused, calls) == (1, [0])
    changed = ChunkStore(tmp_path, "emb", "fp-2")  # other inputs: nothing may be reused
    assert changed.array(0, lambda: compute(7)).tolist() == [7, 7, 7]
    assert changed.records(1, lambda: [[True, "ok"]]) == [[True, "ok"]]
    assert ChunkStore(tmp_path, "emb", "fp-2").records(1, lambda: []) == [[True, "ok"]]
    clear_partials(tmp_path)
    assert not (tmp_path / ".partial").exists()


def test_merge_shards_brings_the_media_each_manifest_names(tmp_path):
    dirs = []
    for i in range(2):
        shard_dir = tmp_path / f"shard{i}"
        (shard_dir / "videos").mkdir(parents=True)
        (shard_dir / "videos" / f"v{i}.mp4").write_bytes(f"video {i}".encode())
        write_manifest(pd.DataFrame({"id": [f"v{i}"], "path": [f"videos/v{i}.mp4"]}), shard_dir)
        dirs.append(shard_dir)
    stats = merge_shards(dirs, tmp_path / "merged")
    assert stats["media"] == 2
    assert (tmp_path / "merged" / "videos" / "v1.mp4").read_bytes() == b"video 1"
    (dirs[0] / "videos" / "v0.mp4").unlink()
    with pytest.raises(ManifestError, match="v0.mp4 is named in .* but missing"):
        merge_shards(dirs, tmp_path / "again")


def test_clear_partials_removes_temp_files_a_killed_writer_left(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / ".a.mp4.k3j2.tmp").write_bytes(b"half a video")
    (tmp_path / "videos" / "a.mp4").write_bytes(b"a video")
    ChunkStore(tmp_path, "videos", "fp")
    clear_partials(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.mp4", "videos"]


def test_lossless_video_round_trips_exactly_and_deterministically(tmp_path):
    import numpy as np

    from vidprior.io.media import read_video, write_video

    # Random colours on an odd-sized frame: yuv420p would both refuse the size and blur the colours.
    frames = np.random.default_rng(0).integers(0, 256, (4, 17, 23, 3), dtype=np.uint8)
    first = write_video(tmp_path / "a.mp4", frames, 8, lossless=True)
    back, fps = read_video(first)
    assert fps == 8 and np.array_equal(back, frames)
    second = write_video(tmp_path / "b.mp4", frames, 8, lossless=True)
    assert first.read_bytes() == second.read_bytes()
    lossy, _ = read_video(write_video(tmp_path / "c.mp4", frames[:, :16, :22], 8))
    assert not np.array_equal(lossy, frames[:, :16, :22])
