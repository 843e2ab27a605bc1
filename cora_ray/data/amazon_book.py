"""Amazon-Book (Amazon reviews 2018, Books 5-core + metadata) → protocol dataset (docs/method.md §5).

Inputs, in a local directory or s3:// prefix: `Books_5.json[.gz]` (JSON lines with reviewerID, asin,
overall, unixReviewTime) and `meta_Books.json[.gz]` (JSON lines with asin, title). gzip is detected by
content. Both files are streamed line by line and memory stays bounded by the 2017 rows: only compact
columns of those rows are kept (int32 user / item codes, int8 label, int64 time in `array`s, plus one
dict entry per distinct 2017 user and item), and metadata is parsed only for the asins that survive the
filter (other lines are skipped after a regex look at their asin).

Protocol:
- reviews from calendar year 2017 (UTC) only; other lines are only checked for their timestamp (a line
  outside 2017 is skipped without a full JSON parse, which keeps a pass over tens of GB affordable);
- users and items with more than 20 interactions in 2017 are kept, in one pass: both counts are taken
  over all 2017 rows and a row is kept when its user and its item both pass (no iteration to a fixpoint);
- label = 1 if overall == 5 else 0;
- train: January–November; December sorted by time (ties by reviewerID, then asin) and halved:
  valid = first half (⌊n/2⌋ rows), test = the rest; valid_small = seeded 25% of valid.
- items whose metadata has no title (no meta line, no `title`, or an empty one) are dropped, with their
  rows, AFTER the >20 filter: the filter counts every review like the reference protocol does, and only
  the items that pass need a metadata lookup. So a user can end up with ≤ 20 rows when some of their
  items had no title. The number of such items and rows is printed and recorded in the manifest
  (`untitled_items_dropped`, `untitled_rows_dropped`). Titles are HTML-unescaped, whitespace collapsed.
- duplicate reviews (same reviewer, asin and time; they exist in the 2018 dump) are kept as rows.

With the real files docs/method.md §5 expects train 727,463 / valid 25,747 / test 25,747 rows, 22,966 users and
34,153 items (not asserted here: the real dump is not available offline to identify it).

Bad input (missing file, broken gzip, a line that is not a JSON object, a missing or wrongly typed
field, a non-numeric rating, nothing left after filtering) is a DataError naming the file, the line and
the field.
"""

from __future__ import annotations

import html
import json
import re
import time
import zlib
from array import array
from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np

from cora_ray.data import splitting
from cora_ray.data.splitting import ProtocolTables
from cora_ray.errors import DataError

YEAR_START = 1_483_228_800  # 2017-01-01T00:00:00Z
DECEMBER_START = 1_512_086_400  # 2017-12-01T00:00:00Z
YEAR_END = 1_514_764_800  # 2018-01-01T00:00:00Z
MIN_INTERACTIONS = 20  # keep users and items with MORE than this many 2017 interactions
VALID_SMALL_FRACTION = 0.25
REVIEW_FILES = ("Books_5.json.gz", "Books_5.json")
META_FILES = ("meta_Books.json.gz", "meta_Books.json")

_TIME = re.compile(rb'"unixReviewTime"\s*:\s*(-?\d+)\s*[,}]')
_ASIN = re.compile(rb'"asin"\s*:\s*"([^"\\]*)"')
_SPACES = re.compile(r"\s+")


def locate(source: str, endpoint: str | None = None) -> tuple[str, str]:
    """(reviews uri, metadata uri) inside the source directory."""
    if not source:
        raise DataError("amazon-book needs --source DIR holding Books_5.json[.gz] and meta_Books.json[.gz]")
    reviews = splitting.find_source(source, REVIEW_FILES, endpoint)
    meta = splitting.find_source(source, META_FILES, endpoint)
    missing = [
        names[1] + "[.gz]" for names, uri in ((REVIEW_FILES, reviews), (META_FILES, meta)) if uri is None
    ]
    if missing:
        raise DataError(f"Amazon-Book source {source}: {' and '.join(missing)} not found")
    return reviews, meta  # type: ignore[return-value]


def _lines(src: splitting.SourceFile) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a source, turning decompression failures into DataErrors."""
    line_no = 0
    it = iter(src.stream)
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as exc:
            kind = "corrupt or truncated gzip data" if src.compressed else "read error"
            raise DataError(f"{src.uri} after line {line_no}: {kind} ({exc})") from None
        line_no += 1
        yield line_no, line


def _parse(line: bytes, uri: str, line_no: int, layout: str) -> dict:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{uri} line {line_no}: not valid JSON ({exc}); expected one JSON object per line {layout}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{uri} line {line_no}: expected a JSON object {layout}, got {type(obj).__name__}")
    return obj


def _string_field(obj: dict, name: str, uri: str, line_no: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        got = "missing" if name not in obj else repr(value)
        raise DataError(f"{uri} line {line_no}: field {name} is {got}; expected a non-empty string")
    return value


def _number_field(obj: dict, name: str, uri: str, line_no: int, expected: str) -> float:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        got = "missing" if name not in obj else repr(value)
        raise DataError(f"{uri} line {line_no}: field {name} is {got}; expected {expected}")
    return float(value)


def _read_reviews(uri: str, endpoint: str | None, progress: splitting.Progress) -> dict:
    """Stream the reviews; keep compact columns of the 2017 rows."""
    layout = "with reviewerID, asin, overall, unixReviewTime"
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    user_code, item_code, label, ts = array("i"), array("i"), array("b"), array("q")
    ticker = splitting.Ticker(progress, f"amazon-book {PurePosixPath(uri).name}")
    rows = 0
    with splitting.open_source(uri, endpoint) as src:
        for line_no, line in _lines(src):
            if not line.strip():
                continue
            rows += 1
            if rows % 100_000 == 0:
                ticker.tick(rows, len(ts))
            quick = _TIME.search(line)
            if quick is not None and not YEAR_START <= int(quick.group(1)) < YEAR_END:
                continue  # outside 2017: not parsed further
            obj = _parse(line, uri, line_no, layout)
            t = _number_field(obj, "unixReviewTime", uri, line_no, "a Unix timestamp in seconds (integer)")
            if t != int(t) or t < 0:
                raise DataError(
                    f"{uri} line {line_no}: field unixReviewTime = {t!r}; expected a Unix timestamp in seconds"
                )
            if not YEAR_START <= t < YEAR_END:
                continue
            reviewer = _string_field(obj, "reviewerID", uri, line_no)
            asin = _string_field(obj, "asin", uri, line_no)
            overall = _number_field(obj, "overall", uri, line_no, "a rating number between 1 and 5")
            if not 1 <= overall <= 5:
                raise DataError(
                    f"{uri} line {line_no}: field overall = {overall!r}; expected a rating between 1 and 5"
                )
            user_code.append(users.setdefault(reviewer, len(users)))
            item_code.append(items.setdefault(asin, len(items)))
            label.append(1 if overall == 5 else 0)
            ts.append(int(t))
        sha = src.sha256()
    if rows == 0:
        raise DataError(f"{uri}: no reviews; expected one JSON object per line {layout}")
    progress(f"amazon-book: {rows:,} reviews read, {len(ts):,} from 2017")
    return {
        "rows": rows,
        "sha": sha,
        "user_vocab": list(users),
        "item_vocab": list(items),
        "user_code": np.frombuffer(user_code, dtype=np.int32).astype(np.int64),
        "item_code": np.frombuffer(item_code, dtype=np.int32).astype(np.int64),
        "label": np.frombuffer(label, dtype=np.int8).copy(),
        "ts": np.frombuffer(ts, dtype=np.int64).copy(),
    }


def clean_title(title: object) -> str:
    """A displayable title: HTML entities unescaped, whitespace collapsed; '' when not a string."""
    if not isinstance(title, str):
        return ""
    return _SPACES.sub(" ", html.unescape(title)).strip()


def _read_titles(
    uri: str, wanted: set[str], endpoint: str | None, progress: splitting.Progress
) -> tuple[dict[str, str], str]:
    """Titles of the `wanted` asins (first non-empty title wins); other lines are skipped unparsed."""
    titles: dict[str, str] = {}
    ticker = splitting.Ticker(progress, f"amazon-book {PurePosixPath(uri).name}")
    rows = 0
    with splitting.open_source(uri, endpoint) as src:
        for line_no, line in _lines(src):
            if not line.strip():
                continue
            rows += 1
            if rows % 100_000 == 0:
                ticker.tick(rows, len(titles))
            quick = _ASIN.search(line)
            if quick is not None and quick.group(1).decode("utf-8", "replace") not in wanted:
                continue
            obj = _parse(line, uri, line_no, "with asin and title")
            asin = _string_field(obj, "asin", uri, line_no)
            if asin in wanted and asin not in titles:
                title = clean_title(obj.get("title"))
                if title:
                    titles[asin] = title
        sha = src.sha256()
    progress(
        f"amazon-book: {rows:,} metadata lines read, titles for {len(titles):,} of {len(wanted):,} items"
    )
    return titles, sha


def load_amazon_book(
    source: str,
    endpoint: str | None = None,
    progress: splitting.Progress = splitting.no_progress,
    min_interactions: int = MIN_INTERACTIONS,
) -> ProtocolTables:
    """Read Amazon-Book from `source` and build the protocol tables (see the module docstring)."""
    t0 = time.perf_counter()
    reviews_uri, meta_uri = locate(source, endpoint)
    progress(f"amazon-book: streaming {reviews_uri}")
    r = _read_reviews(reviews_uri, endpoint, progress)
    n_2017 = len(r["ts"])
    if n_2017 == 0:
        raise DataError(
            f"{reviews_uri}: no review from 2017 among {r['rows']:,}; expected reviews dated 2017 (UTC)"
        )
    user_count = np.bincount(r["user_code"])
    item_count = np.bincount(r["item_code"])
    keep = (user_count[r["user_code"]] > min_interactions) & (item_count[r["item_code"]] > min_interactions)
    if not keep.any():
        raise DataError(
            f"{reviews_uri}: no 2017 review has both a user and an item with more than {min_interactions} "
            f"interactions in 2017 ({n_2017:,} reviews from 2017); nothing left after filtering"
        )
    kept_items = np.unique(r["item_code"][keep])
    item_vocab = r["item_vocab"]
    progress(
        f"amazon-book: {int(keep.sum()):,} reviews kept by the >{min_interactions} filter; "
        f"reading titles of {len(kept_items):,} items from {meta_uri}"
    )
    titles, meta_sha = _read_titles(meta_uri, {item_vocab[c] for c in kept_items}, endpoint, progress)
    has_title = np.zeros(len(item_vocab), dtype=bool)
    has_title[[c for c in kept_items if item_vocab[c] in titles]] = True
    untitled_items = int(len(kept_items) - has_title[kept_items].sum())
    filtered = int(keep.sum())
    keep &= has_title[r["item_code"]]
    untitled_rows = filtered - int(keep.sum())
    if untitled_items:
        progress(
            f"amazon-book: items without a title: {untitled_items:,} dropped, with their {untitled_rows:,} reviews"
        )
    if not keep.any():
        raise DataError(
            f"{meta_uri}: none of the {len(kept_items):,} items left after the filter has a title; "
            "expected metadata lines with asin and title"
        )

    user_code, item_code = r["user_code"][keep], r["item_code"][keep]
    ts, label = r["ts"][keep], r["label"][keep]
    split = np.full(len(ts), splitting.TRAIN, dtype=np.int8)
    december = np.flatnonzero(ts >= DECEMBER_START)
    user_vocab = r["user_vocab"]
    reviewer = np.array([user_vocab[c] for c in user_code[december]], dtype=object)
    asin = np.array([item_vocab[c] for c in item_code[december]], dtype=object)
    december = december[np.lexsort((asin, reviewer, ts[december]))] if len(december) else december
    split[december[: len(december) // 2]] = splitting.VALID
    split[december[len(december) // 2 :]] = splitting.TEST
    item_titles = [titles.get(raw, "") for raw in item_vocab]
    tables = splitting.build_tables(
        dataset="amazon-book",
        user_code=user_code,
        item_code=item_code,
        label=label,
        ts=ts,
        split=split,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        item_titles=item_titles,
        valid_small_fraction=VALID_SMALL_FRACTION,
        sources={PurePosixPath(reviews_uri).name: r["sha"], PurePosixPath(meta_uri).name: meta_sha},
        extra={
            "rows_read": r["rows"],
            "rows_2017": n_2017,
            "rows_after_interaction_filter": filtered,
            "rows_dropped": r["rows"] - int(keep.sum()),
            "min_interactions_exclusive": min_interactions,
            "untitled_items_dropped": untitled_items,
            "untitled_rows_dropped": untitled_rows,
        },
        what=reviews_uri,
    )
    progress(f"amazon-book: tables built in {time.perf_counter() - t0:.1f} s")
    return tables


def prepare_amazon_book(
    out_uri: str,
    source: str,
    endpoint: str | None = None,
    overwrite: bool = False,
    progress: splitting.Progress = splitting.no_progress,
) -> dict:
    """Read Amazon-Book and publish the protocol dataset at `out_uri` (local or s3://). Returns the manifest."""
    splitting.check_destination(out_uri, endpoint, overwrite)
    tables = load_amazon_book(source, endpoint, progress)
    return splitting.publish(tables, out_uri, endpoint=endpoint, overwrite=overwrite)
