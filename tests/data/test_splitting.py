"""The shared protocol logic: id re-mapping, history (ties, cap, earlier splits), warm, valid_small, publishing."""

from __future__ import annotations

import numpy as np
import pytest

from cora_ray import storage
from cora_ray.data import protocol, splitting
from cora_ray.errors import DataError, StorageError


def reference_history(user, item, label, ts, h=protocol.HISTORY_LEN):
    """Brute force: per row, the user's positives strictly earlier in time, (time, item) order, last h."""
    out = []
    for u, t in zip(user, ts, strict=True):
        earlier = sorted(
            (ts[j], item[j]) for j in range(len(user)) if user[j] == u and label[j] == 1 and ts[j] < t
        )
        out.append([int(i) for _, i in earlier][-h:])
    return out


def test_natural_key_orders_digit_runs_numerically():
    raw = ["1m_10", "1m_2", "1m_1", "b", "a10", "a9"]
    assert sorted(raw, key=splitting.natural_key) == ["1m_1", "1m_2", "1m_10", "a9", "a10", "b"]


def test_remap_ids_numbers_only_used_codes_in_natural_order():
    vocab = ["u10", "u2", "unused", "u1"]
    codes = np.array([0, 1, 3, 0, 3])
    new, old_by_new = splitting.remap_ids(codes, vocab)
    assert [vocab[c] for c in old_by_new] == ["u1", "u2", "u10"]
    assert new.tolist() == [3, 2, 1, 3, 1]
    assert new.dtype == np.int32


def test_history_excludes_ties_caps_length_and_is_oldest_first():
    # user 1: positives at t=1 (item 5), t=2 (items 7 and 6: a tie), a negative at t=3, rows at t=4 tie
    user = np.array([1, 1, 1, 1, 1, 1, 2])
    item = np.array([5, 7, 6, 9, 3, 4, 5])
    label = np.array([1, 1, 1, 0, 1, 1, 1])
    ts = np.array([1, 2, 2, 3, 4, 4, 10])
    got = splitting.compute_history(user, item, label, ts).to_pylist()
    assert got[0] == []  # nothing earlier
    assert got[1] == [5] and got[2] == [5]  # the other t=2 positive is a tie: excluded
    assert got[3] == [5, 6, 7]  # ties in time ordered by item id; negatives never in history
    assert got[4] == [5, 6, 7] and got[5] == [5, 6, 7]  # t=4 rows do not see each other
    assert got[6] == []  # other users' positives never leak


def test_history_matches_brute_force_and_is_capped():
    rng = np.random.default_rng(3)
    n = 400
    user = rng.integers(1, 5, n)
    item = rng.integers(1, 50, n)
    label = rng.integers(0, 2, n)
    ts = rng.integers(0, 120, n)  # many ties
    got = splitting.compute_history(user, item, label, ts, history_len=7).to_pylist()
    assert got == reference_history(user, item, label, ts, h=7)
    assert max(len(h) for h in got) == 7


def _rows():
    # raw users a,b,c; raw items x,y,z,w. c and w occur only in test: test rows with them are cold.
    users = ["a", "b", "c"]
    items = ["x", "y", "z", "w"]
    rows = [  # user, item, label, ts, split
        (0, 0, 1, 10, splitting.TRAIN),
        (0, 1, 0, 11, splitting.TRAIN),
        (1, 1, 1, 12, splitting.TRAIN),
        (1, 2, 1, 13, splitting.TRAIN),
        (0, 2, 1, 20, splitting.VALID),
        (1, 0, 0, 21, splitting.VALID),
        (0, 1, 1, 30, splitting.TEST),
        (2, 0, 1, 31, splitting.TEST),
        (0, 3, 0, 32, splitting.TEST),
    ]
    cols = [np.array(c) for c in zip(*rows, strict=True)]
    return users, items, cols


def test_build_tables_warm_history_across_splits_and_id_tables():
    users, items, (u, i, label, ts, split) = _rows()
    t = splitting.build_tables(
        dataset="toy",
        user_code=u,
        item_code=i,
        label=label,
        ts=ts,
        split=split,
        user_vocab=users,
        item_vocab=items,
        item_titles=["X (1)", "Y (2)", "Z (3)", "W (4)"],
        valid_small_fraction=0.5,
    )
    assert t.users.to_pylist() == [{"user_id": k + 1, "raw_id": r} for k, r in enumerate(users)]
    assert t.items["raw_id"].to_pylist() == ["w", "x", "y", "z"]  # natural order of raw ids
    assert t.items["title"].to_pylist() == ["W (4)", "X (1)", "Y (2)", "Z (3)"]
    test = t.splits["test"].to_pylist()
    assert [r["ts"] for r in test] == [30, 31, 32]
    # user a (id 1) at t=30: earlier positives x (t=10, train) and z (t=20, valid) → ids 2, 4
    assert test[0]["history"] == [2, 4] and test[0]["warm"] is True
    assert test[1]["warm"] is False  # user c never in train
    assert test[2]["warm"] is False  # item w never in train
    assert t.counts()["test_warm"] == 1 and t.counts()["test_cold"] == 2
    assert t.extra["derived_counts"] == {"test_warm": 1, "test_cold": 2}
    assert t.splits["valid_small"].num_rows == 1
    assert t.splits["valid_small"].to_pylist()[0] in t.splits["valid"].to_pylist()
    assert t.splits["train"].schema == protocol.INTERACTION_SCHEMA


def test_build_tables_refuses_an_empty_split():
    users, items, (u, i, label, ts, split) = _rows()
    keep = split != splitting.VALID
    with pytest.raises(DataError, match="valid split is empty"):
        splitting.build_tables(
            dataset="toy",
            user_code=u[keep],
            item_code=i[keep],
            label=label[keep],
            ts=ts[keep],
            split=split[keep],
            user_vocab=users,
            item_vocab=items,
            item_titles=items,
            valid_small_fraction=0.5,
            what="toy.csv",
        )


def test_valid_small_is_fixed_seeded_and_sized():
    a = splitting.sample_valid_small(10_401, 0.5)
    b = splitting.sample_valid_small(10_401, 0.5)
    assert np.array_equal(a, b) and len(a) == 5200 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, splitting.sample_valid_small(10_401, 0.5, seed=7))
    assert len(splitting.sample_valid_small(3, 0.25)) == 1
    with pytest.raises(DataError):
        splitting.sample_valid_small(10, 0.0)


def test_check_destination_protects_foreign_and_existing_directories(tmp_path):
    assert splitting.check_destination(str(tmp_path / "new")) is False
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StorageError, match="not part of a dataset"):
        splitting.check_destination(str(foreign), overwrite=True)
    partial = tmp_path / "partial"
    (partial / "interactions").mkdir(parents=True)
    with pytest.raises(StorageError, match="incomplete dataset"):
        splitting.check_destination(str(partial))
    assert splitting.check_destination(str(partial), overwrite=True) is False
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StorageError, match="existing file"):
        splitting.check_destination(str(a_file), overwrite=True)


def test_open_source_hashes_stored_bytes_and_reads_gzip(tmp_path):
    import gzip
    import hashlib

    raw = b"line 1\nline 2\n" * 1000
    plain, packed = tmp_path / "a.txt", tmp_path / "a.txt.gz"
    plain.write_bytes(raw)
    packed.write_bytes(gzip.compress(raw))
    for path in (plain, packed):
        data, sha = splitting.read_source_bytes(str(path))
        assert data == raw
        assert sha == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    broken = tmp_path / "broken.gz"
    broken.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(DataError, match="broken.gz: corrupt or truncated gzip"):
        splitting.read_source_bytes(str(broken))
    with pytest.raises(DataError, match="missing.txt: file not found"):
        splitting.read_source_bytes(str(tmp_path / "missing.txt"))


def test_summary_lines_show_counts_rates_and_time(tmp_path):
    users, items, (u, i, label, ts, split) = _rows()
    t = splitting.build_tables(
        dataset="toy",
        user_code=u,
        item_code=i,
        label=label,
        ts=ts,
        split=split,
        user_vocab=users,
        item_vocab=items,
        item_titles=items,
        valid_small_fraction=0.5,
    )
    manifest = splitting.publish(t, str(tmp_path / "toy"))
    text = "\n".join(splitting.summary_lines(manifest, seconds=1.25))
    assert "3 users, 4 items" in text and "time: 1.2 s" in text
    assert "  test                  3 rows   positive rate 0.667" in text
    assert protocol.read_manifest(str(tmp_path / "toy"))["counts"]["train"] == 4
    assert storage.exists(str(tmp_path / "toy" / "manifest.json"))
