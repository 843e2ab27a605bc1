"""jobs/prepare_data.py as a user runs it: a subprocess, local and s3:// outputs, exit codes, messages."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cora_ray import storage
from cora_ray.data import protocol

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "prepare_data.py"


def run_job(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(JOB), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


def test_synthetic_local(tmp_path):
    out = tmp_path / "syn"
    res = run_job(
        "--dataset", "synthetic", "--users", "60", "--items", "80", "--seed", "4", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    manifest = protocol.read_manifest(str(out))
    assert manifest["users"] == 60 and manifest["items"] == 80 and manifest["synthetic"]["seed"] == 4
    assert f"rows written to {out}" in res.stdout
    assert "dataset synthetic: 60 users, 80 items" in res.stdout
    assert re.search(rf"train +{manifest['counts']['train']:,} rows +positive rate", res.stdout)
    assert "time:" in res.stdout and res.stderr == ""


def test_synthetic_to_s3(s3_bucket):
    uri = f"{s3_bucket}/jobs/syn"
    res = run_job("--dataset", "synthetic", "--users", "30", "--items", "20", "--out", uri)
    assert res.returncode == 0, res.stderr
    assert protocol.read_split(uri, "train").num_rows == protocol.read_manifest(uri)["counts"]["train"]
    assert protocol.read_users(uri).num_rows == 30


def test_existing_output_needs_overwrite(tmp_path):
    out = str(tmp_path / "syn")
    assert run_job("--dataset", "synthetic", "--out", out).returncode == 0
    first = protocol.read_manifest(out)["hash"]
    res = run_job("--dataset", "synthetic", "--seed", "9", "--out", out)
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "--overwrite" in res.stderr
    assert protocol.read_manifest(out)["hash"] == first
    res = run_job("--dataset", "synthetic", "--seed", "9", "--out", out, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert protocol.read_manifest(out)["hash"] != first


def test_foreign_directory_is_never_replaced(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    res = run_job("--dataset", "synthetic", "--out", str(home), "--overwrite")
    assert res.returncode == 1 and "not part of a dataset" in res.stderr
    assert (home / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "ml-1m", "--source", "/nonexistent/ml-1m"], "no such directory"),
        (["--dataset", "ml-1m", "--users", "5"], "--users only apply to --dataset synthetic"),
        (["--dataset", "amazon-book"], "needs --source"),
        (["--dataset", "synthetic", "--source", "/tmp"], "--source does not apply"),
        (["--dataset", "synthetic", "--users", "0"], "users must be an integer"),
    ],
)
def test_errors_exit_1_with_a_message_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    res = run_job(*args, "--out", str(out))
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_bad_ml1m_input_exits_1_and_names_the_line(tmp_path):
    src = tmp_path / "ml"
    src.mkdir()
    (src / "ratings.dat").write_text("1::1::5::978300760\n1::2::great::978300761\n")
    (src / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Heat (1995)::Drama\n")
    out = tmp_path / "out"
    res = run_job("--dataset", "ml-1m", "--source", str(src), "--out", str(out))
    assert res.returncode == 1
    assert "ratings.dat line 2: field Rating = 'great'; expected a number between 1 and 5" in res.stderr
    assert not out.exists()


def test_bad_input_to_s3_leaves_no_manifest(s3_bucket, tmp_path):
    src = tmp_path / "amazon"
    src.mkdir()
    (src / "Books_5.json.gz").write_bytes(gzip.compress(b'{"overall": 5.0}\n'))
    (src / "meta_Books.json.gz").write_bytes(gzip.compress(b""))
    uri = f"{s3_bucket}/bad"
    res = run_job("--dataset", "amazon-book", "--source", str(src), "--out", uri)
    assert res.returncode == 1 and "Books_5.json.gz line 1: field unixReviewTime is missing" in res.stderr
    assert not storage.exists(f"{uri}/manifest.json") and storage.list_files(uri) == []


def test_amazon_book_local(tmp_path):
    src = tmp_path / "amazon"
    src.mkdir()
    reviews, meta = [], []
    for u in range(22):
        for i in range(22):
            month = 12 if (u + i) % 4 == 0 else 1 + (u + i) % 11
            t = 1_483_228_800 + (month - 1) * 31 * 86_400 + (u * 22 + i) * 60
            t = max(t, 1_512_086_400) if month == 12 else min(t, 1_512_086_399)
            reviews.append(
                {"reviewerID": f"R{u}", "asin": f"B{i}", "overall": 5.0 - (u * i) % 3, "unixReviewTime": t}
            )
    meta = [{"asin": f"B{i}", "title": f"Book {i}"} for i in range(22)]
    (src / "Books_5.json.gz").write_bytes(
        gzip.compress("".join(json.dumps(r) + "\n" for r in reviews).encode())
    )
    (src / "meta_Books.json.gz").write_bytes(
        gzip.compress("".join(json.dumps(m) + "\n" for m in meta).encode())
    )
    out = tmp_path / "book"
    res = run_job("--dataset", "amazon-book", "--source", str(src), "--out", str(out))
    assert res.returncode == 0, res.stderr
    manifest = protocol.read_manifest(str(out))
    assert manifest["users"] == 22 and manifest["items"] == 22 and manifest["rows_read"] == 22 * 22
    assert "484 reviews read, 484 from 2017" in res.stdout
    assert abs(manifest["counts"]["valid"] - manifest["counts"]["test"]) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_real_ml1m_job_prints_the_spec_counts(tmp_path, s3_bucket, where):
    out = str(tmp_path / "ml1m") if where == "local" else f"{s3_bucket}/ml-1m"
    res = run_job("--dataset", "ml-1m", "--out", out)
    assert res.returncode == 0, res.stderr
    for line in (
        "dataset ml-1m: 838 users, 3,255 items",
        "train            33,891 rows   positive rate 0.537",
        "valid            10,401 rows   positive rate 0.528",
        "test              7,331 rows   positive rate 0.545",
        "rows read: 1,000,209",
    ):
        assert line in res.stdout, res.stdout
    assert protocol.read_manifest(out)["reference_counts_checked"] is True
