"""Amazon-Book on small gzip files in the Amazon 2018 format written here: year filter, the >20 filter
(one pass), December halves, untitled items, and bad input."""

from __future__ import annotations

import calendar
import gzip
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cora_ray.data import amazon_book, protocol
from cora_ray.errors import DataError


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def review(user: str, asin: str, overall: float, t: int, text: str = "Nice read.") -> dict:
    return {
        "overall": overall,
        "verified": True,
        "reviewTime": datetime.fromtimestamp(t, timezone.utc).strftime("%m %d, %Y"),
        "reviewerID": user,
        "asin": asin,
        "reviewerName": f"Reader {user}",
        "reviewText": text,
        "summary": "Four Stars",
        "unixReviewTime": t,
    }


CORE_USERS = [f"A{k:02d}XYZ" for k in range(25)]
CORE_ITEMS = [f"00{k:08d}" for k in range(25)]


def make_reviews() -> list[dict]:
    rows = []
    for u, user in enumerate(CORE_USERS):
        for i, asin in enumerate(CORE_ITEMS):
            month = 1 + (u * 25 + i) % 12
            rows.append(
                review(user, asin, [5.0, 4.0, 3.0][(u + i) % 3], utc(2017, month, 1 + (u + i) % 28, u % 24))
            )
    # other years: never counted, never kept (boundaries exact in UTC)
    rows.append(review(CORE_USERS[0], CORE_ITEMS[0], 5.0, utc(2016, 12, 31, 23, 59, 59)))
    rows.append(review(CORE_USERS[0], CORE_ITEMS[1], 5.0, utc(2018, 1, 1)))
    rows.append(review(CORE_USERS[1], CORE_ITEMS[2], 5.0, utc(2017, 1, 1)))  # first second of 2017: kept
    rows.append(review(CORE_USERS[1], CORE_ITEMS[3], 5.0, utc(2017, 12, 1)))  # first second of December
    # the fake key inside the text must not fool the quick year check
    rows.append(
        review(CORE_USERS[2], CORE_ITEMS[4], 5.0, utc(2017, 6, 1), text='"unixReviewTime": 1200000000, ok')
    )
    # users at the threshold: 21 in 2017 kept, 20 dropped, 15 in 2017 (+ other years) dropped
    rows += [review("U21", CORE_ITEMS[k], 5.0, utc(2017, 3, 1 + k)) for k in range(21)]
    rows += [review("U20", CORE_ITEMS[k], 5.0, utc(2017, 3, 1 + k)) for k in range(20)]
    rows += [review("UOLD", CORE_ITEMS[k], 5.0, utc(2017, 4, 1 + k)) for k in range(15)]
    rows += [review("UOLD", CORE_ITEMS[k], 5.0, utc(2016, 4, 1 + k)) for k in range(10)]
    rows += [review("UOLD", CORE_ITEMS[k], 5.0, utc(2018, 4, 1 + k)) for k in range(5)]
    # an item with 20 interactions: dropped; UONEPASS has 21 (one of them on that item): kept, with 20 rows
    rows += [review(CORE_USERS[k], "IEDGE20", 4.0, utc(2017, 5, 1 + k)) for k in range(19)]
    rows.append(review("UONEPASS", "IEDGE20", 5.0, utc(2017, 5, 25)))
    rows += [review("UONEPASS", CORE_ITEMS[k], 4.0, utc(2017, 7, 1 + k)) for k in range(20)]
    # items that pass the filter but have no title: no meta line / an empty title
    rows += [review(user, "INOTITLE", 5.0, utc(2017, 8, 2)) for user in CORE_USERS]
    rows += [review(user, "IEMPTY", 4.0, utc(2017, 12, 20)) for user in CORE_USERS[:21]]
    rows += [review(user, "IHTML", 5.0, utc(2017, 12, 10, 5)) for user in CORE_USERS]
    return rows


def make_meta() -> list[str]:
    lines = [
        json.dumps({"category": ["Books"], "title": f"Book {k} (Paperback)", "asin": a})
        for k, a in enumerate(CORE_ITEMS)
    ]
    lines.append(json.dumps({"asin": "IEDGE20", "title": "Edge"}))
    lines.append(json.dumps({"asin": "IEMPTY", "title": "   "}))
    lines.append(
        json.dumps(
            {"description": ["A <i>classic</i>"], "title": "Pride &amp; Prejudice\n ", "asin": "IHTML"}
        )
    )
    lines.append(json.dumps({"asin": CORE_ITEMS[0], "title": "A later duplicate title"}))  # first one wins
    lines.append('{"asin": "UNRELATED", "title": broken json')  # not needed: skipped without parsing
    return [line + "\n" for line in lines]


def write_source(folder: Path, reviews=None, meta=None, compress=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = make_reviews() if reviews is None else reviews
    meta = make_meta() if meta is None else meta
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in reviews)
    if compress:
        (folder / "Books_5.json.gz").write_bytes(gzip.compress(text.encode()))
        (folder / "meta_Books.json.gz").write_bytes(gzip.compress("".join(meta).encode()))
    else:
        (folder / "Books_5.json").write_text(text)
        (folder / "meta_Books.json").write_text("".join(meta))
    return folder


def reference(reviews: list[dict], titled: set[str]) -> dict[str, list[tuple]]:
    """The protocol, written the plain way."""
    y2017 = [r for r in reviews if datetime.fromtimestamp(r["unixReviewTime"], timezone.utc).year == 2017]
    users = Counter(r["reviewerID"] for r in y2017)
    items = Counter(r["asin"] for r in y2017)
    kept = [r for r in y2017 if users[r["reviewerID"]] > 20 and items[r["asin"]] > 20 and r["asin"] in titled]
    key = [(r["reviewerID"], r["asin"], r["unixReviewTime"], int(r["overall"] == 5)) for r in kept]
    dec_start = utc(2017, 12, 1)
    train = [k for k in key if k[2] < dec_start]
    december = sorted((k for k in key if k[2] >= dec_start), key=lambda k: (k[2], k[0], k[1]))
    half = len(december) // 2
    return {"train": sorted(train), "valid": sorted(december[:half]), "test": sorted(december[half:])}


def raw_rows(tables, split: str) -> list[tuple]:
    users = dict(zip(tables.users["user_id"].to_pylist(), tables.users["raw_id"].to_pylist(), strict=True))
    items = dict(zip(tables.items["item_id"].to_pylist(), tables.items["raw_id"].to_pylist(), strict=True))
    return sorted(
        (users[r["user_id"]], items[r["item_id"]], r["ts"], r["label"])
        for r in tables.splits[split].to_pylist()
    )


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = write_source(tmp_path_factory.mktemp("amazon"))
    return amazon_book.load_amazon_book(str(folder))


def test_splits_match_the_plain_reference(loaded):
    expected = reference(make_reviews(), titled=set(CORE_ITEMS) | {"IHTML", "IEDGE20"})
    for split in ("train", "valid", "test"):
        assert raw_rows(loaded, split) == expected[split], split
    assert loaded.splits["valid"].num_rows > 20  # the December halves are not trivial
    assert abs(loaded.splits["valid"].num_rows - loaded.splits["test"].num_rows) <= 1


def test_year_and_interaction_filters(loaded):
    users = set(loaded.users["raw_id"].to_pylist())
    items = set(loaded.items["raw_id"].to_pylist())
    assert "U21" in users and "U20" not in users and "UOLD" not in users
    assert "IEDGE20" not in items and {"INOTITLE", "IEMPTY"}.isdisjoint(items) and "IHTML" in items
    # one pass: UONEPASS had 21 interactions in 2017 (one on the dropped IEDGE20) and stays with 20
    uid = loaded.users["user_id"].to_pylist()[loaded.users["raw_id"].to_pylist().index("UONEPASS")]
    rows = [
        r for s in ("train", "valid", "test") for r in loaded.splits[s].to_pylist() if r["user_id"] == uid
    ]
    assert len(rows) == 20
    all_ts = [r["ts"] for s in ("train", "valid", "test") for r in loaded.splits[s].to_pylist()]
    assert min(all_ts) == utc(2017, 1, 1) and max(all_ts) < utc(2018, 1, 1)
    assert loaded.extra["rows_read"] == len(make_reviews())
    assert loaded.extra["rows_2017"] == len(make_reviews()) - 1 - 1 - 10 - 5


def test_december_halves_are_ordered_in_time(loaded):
    valid_ts = loaded.splits["valid"]["ts"].to_pylist()
    test_ts = loaded.splits["test"]["ts"].to_pylist()
    assert max(valid_ts) <= min(test_ts)
    assert min(valid_ts) >= utc(2017, 12, 1)
    assert max(loaded.splits["train"]["ts"].to_pylist()) < utc(2017, 12, 1)


def test_untitled_items_are_dropped_and_counted(loaded):
    assert loaded.extra["untitled_items_dropped"] == 2
    assert loaded.extra["untitled_rows_dropped"] == 25 + 21
    titles = dict(zip(loaded.items["raw_id"].to_pylist(), loaded.items["title"].to_pylist(), strict=True))
    assert titles["IHTML"] == "Pride & Prejudice"
    assert titles[CORE_ITEMS[0]] == "Book 0 (Paperback)"


def test_labels_history_and_manifest(tmp_path):
    folder = write_source(tmp_path / "src", compress=False)  # plain JSON works too
    out = tmp_path / "out"
    manifest = amazon_book.prepare_amazon_book(str(out), str(folder))
    assert manifest["dataset"] == "amazon-book"
    assert manifest["untitled_items_dropped"] == 2 and manifest["valid_small_fraction"] == 0.25
    assert set(manifest["sources"]) == {"Books_5.json", "meta_Books.json"}
    valid = protocol.read_split(str(out), "valid")
    assert protocol.read_split(str(out), "valid_small").num_rows == round(valid.num_rows * 0.25)
    train = protocol.read_split(str(out), "train").to_pylist()
    assert {r["label"] for r in train} == {0, 1}
    rows = [
        r for split in ("train", "valid", "test") for r in protocol.read_split(str(out), split).to_pylist()
    ]
    positives: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        if r["label"]:
            positives.setdefault(r["user_id"], []).append((r["ts"], r["item_id"]))
    for r in rows:  # same-day reviews are ties (unixReviewTime has day resolution): never history
        earlier = sorted(p for p in positives.get(r["user_id"], []) if p[0] < r["ts"])
        assert r["history"] == [i for _, i in earlier][-protocol.HISTORY_LEN :]
    assert sum(len(r["history"]) > 3 for r in rows) > 100


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------


def _with_line(extra: str | dict) -> list:
    return [*make_reviews(), extra]


N = len(make_reviews()) + 1  # the line number of an appended bad line

BAD_REVIEWS = {
    "not json": (
        _with_line('{"overall": 5.0, "unixReviewTime": 1500000000, oops'),
        rf"Books_5\.json\.gz line {N}: not valid JSON",
    ),
    "not an object": (_with_line("[1, 2, 3]"), rf"line {N}: expected a JSON object"),
    "missing overall": (
        _with_line({"reviewerID": "X", "asin": "Y", "unixReviewTime": 1500000000}),
        rf"line {N}: field overall is missing; expected a rating number",
    ),
    "non-numeric overall": (
        _with_line({"reviewerID": "X", "asin": "Y", "overall": "five", "unixReviewTime": 1500000000}),
        rf"line {N}: field overall is 'five'; expected a rating number",
    ),
    "overall out of range": (
        _with_line({"reviewerID": "X", "asin": "Y", "overall": 9, "unixReviewTime": 1500000000}),
        rf"line {N}: field overall = 9.0; expected a rating between 1 and 5",
    ),
    "missing asin": (
        _with_line({"reviewerID": "X", "overall": 5.0, "unixReviewTime": 1500000000}),
        rf"line {N}: field asin is missing; expected a non-empty string",
    ),
    "missing time": (
        _with_line({"reviewerID": "X", "asin": "Y", "overall": 5.0}),
        rf"line {N}: field unixReviewTime is missing",
    ),
    "no 2017 review": ([review("U", "I", 5.0, utc(2015, 1, 1))], "no review from 2017"),
    "nothing passes the filter": (
        [review(f"U{k}", f"I{k % 3}", 5.0, utc(2017, 1 + k % 12, 1)) for k in range(60)],
        r"more than 20 interactions in 2017.*nothing left after filtering",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REVIEWS))
def test_bad_reviews_are_refused_with_line_and_field(tmp_path, case):
    reviews, pattern = BAD_REVIEWS[case]
    folder = write_source(tmp_path / "src", reviews=reviews)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=pattern):
        amazon_book.prepare_amazon_book(str(out), str(folder))
    assert not out.exists()


def test_bad_or_missing_files(tmp_path):
    folder = write_source(tmp_path / "src")
    packed = (folder / "Books_5.json.gz").read_bytes()
    (folder / "Books_5.json.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"Books_5\.json\.gz after line \d+: corrupt or truncated gzip"):
        amazon_book.load_amazon_book(str(folder))
    (folder / "Books_5.json.gz").unlink()
    with pytest.raises(DataError, match=r"Books_5\.json\[\.gz\] not found"):
        amazon_book.load_amazon_book(str(folder))
    folder = write_source(tmp_path / "src2")
    (folder / "meta_Books.json.gz").unlink()
    with pytest.raises(DataError, match=r"meta_Books\.json\[\.gz\] not found"):
        amazon_book.load_amazon_book(str(folder))


def test_bad_metadata_for_a_needed_item(tmp_path):
    meta = make_meta() + ['{"asin": "IHTML", "title": oops}\n']
    folder = write_source(tmp_path / "src", meta=[*meta[:2], meta[-1], *meta[2:-1]])
    with pytest.raises(DataError, match=r"meta_Books\.json\.gz line 3: not valid JSON"):
        amazon_book.load_amazon_book(str(folder))
    folder = write_source(tmp_path / "src2", meta=['{"asin": "UNRELATED", "title": "x"}\n'])
    with pytest.raises(DataError, match="none of the .* items left after the filter has a title"):
        amazon_book.load_amazon_book(str(folder))
