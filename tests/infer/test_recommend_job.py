"""jobs/recommend.py: catalogue recommendations for a few users through a Ray Data actor pool, written as
parquet (atomically, manifest last); its rows equal the in-process recommendation of the same users; bad
input fails before any actor starts and publishes nothing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cora_ray.infer.recommend_job import COLUMNS, UserSelection, read_users_file, select_users

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("jobs_recommend", REPO / "jobs" / "recommend.py")
recommend_cli = importlib.util.module_from_spec(_spec)  # jobs/ is not a package
_spec.loader.exec_module(recommend_cli)


def raw_users(data_uri: str) -> dict[int, str]:
    from cora_ray.data import protocol

    t = protocol.read_users(data_uri)
    return dict(zip(t["user_id"].to_pylist(), t["raw_id"].to_pylist(), strict=True))


def test_user_selection_and_users_file(tiny_artifacts, tmp_path):
    users = raw_users(tiny_artifacts.data_uri)
    a, b = users[1], users[2]
    keys, ids = select_users(tiny_artifacts.data_uri, UserSelection(users=[b, a, b]))
    assert keys == [b, a] and ids.tolist() == [2, 1]  # given order, each once
    keys, ids = select_users(tiny_artifacts.data_uri, UserSelection(all_users=True))
    assert ids.tolist() == sorted(users) and keys == [users[i] for i in sorted(users)]
    with pytest.raises(Exception, match=r"2 user id\(s\) not in .*'nobody', 'ghost'"):
        select_users(tiny_artifacts.data_uri, UserSelection(users=[a, "nobody", "ghost"]))
    f = tmp_path / "users.txt"
    f.write_text(f"# users\n{a}\n\n  {b}  \n")
    assert read_users_file(str(f)) == [a, b]
    f.write_text("# nobody\n")
    with pytest.raises(Exception, match="holds no user id"):
        read_users_file(str(f))
    with pytest.raises(Exception, match="does not exist"):
        read_users_file(str(tmp_path / "missing.txt"))


def test_bad_input_fails_before_ray_and_writes_nothing(tiny_artifacts, tmp_path, capsys):
    out = tmp_path / "out"
    users = raw_users(tiny_artifacts.data_uri)
    base = ["--users", users[1], "--out", str(out)]
    cases = [
        (["--checkpoint", tiny_artifacts.checkpoints["tallrec"], *base], "no CF backbone"),
        (
            ["--checkpoint", tiny_artifacts.checkpoints["cora"], *base, "--k", "30", "--catalogue-k", "20"],
            "k=30 is above catalogue_k=20",
        ),
        (
            ["--checkpoint", tiny_artifacts.checkpoints["cora"], "--users", "ghost", "--out", str(out)],
            "'ghost'",
        ),
    ]
    for argv, message in cases:
        assert recommend_cli.main(argv) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.slow
@pytest.mark.ray
def test_the_job_writes_one_row_per_user_and_rank_equal_to_recommend_one(
    ray_cluster, tiny_artifacts, tmp_path, capsys
):
    from cora_ray.data import protocol
    from cora_ray.infer.catalogue import CatalogueRetriever, recommend_one
    from cora_ray.infer.scorer import Scorer
    from cora_ray.infer.service import Catalog, ScoreJob, ScorerOptions, ScoringEngine

    users = raw_users(tiny_artifacts.data_uri)
    chosen = [users[3], users[1]]
    out = tmp_path / "recs"
    argv = [
        "--checkpoint",
        tiny_artifacts.checkpoints["cora"],
        "--users",
        ",".join(chosen),
        "--k",
        "3",
        "--catalogue-k",
        "8",
        "--num-actors",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert recommend_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 user(s), top 3 of K=8" in printed and "retrieval" in printed and "re-ranking" in printed

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "cora_ray.recommendations" and manifest["rows"] == 6
    files = [f for f in manifest["files"] if f.endswith(".parquet")]
    assert files and all((out / f).is_file() for f in files)
    table = pq.read_table(out / "recommendations")
    assert table.column_names == COLUMNS and table.num_rows == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["users"] == 2 and summary["llm_rows"] == 16 and summary["rerank_s"] > 0

    # the same users in this process, through the same functions
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], tiny_artifacts.data_uri)
    catalog = Catalog.from_dataset(tiny_artifacts.data_uri)
    engine = ScoringEngine(scorer, ScorerOptions(max_rows_per_forward=scorer.batch_size))
    retriever = CatalogueRetriever()
    train = protocol.read_split(tiny_artifacts.data_uri, "train", columns=["user_id", "item_id"])
    rows = table.to_pylist()
    for key in chosen:
        uid = catalog.user_ids[key]
        mine = [r for r in rows if r["user_id"] == key]
        assert [r["rank"] for r in mine] == [1, 2, 3]
        res = recommend_one(engine, retriever, ScoreJob(key, uid, [], catalog.histories.get(uid, [])), 8, 3)
        assert [r["item_id"] for r in mine] == [catalog.item_raw[x.item_id] for x in res.items]
        np.testing.assert_allclose([r["score"] for r in mine], [x.score for x in res.items], atol=1e-4)
        assert [r["cf_rank"] for r in mine] == [x.cf_rank for x in res.items]
        np.testing.assert_allclose([r["cf_score"] for r in mine], [x.cf_score for x in res.items], rtol=1e-5)
        seen = {
            i
            for u, i in zip(train["user_id"].to_pylist(), train["item_id"].to_pylist(), strict=True)
            if u == uid
        }
        assert not seen & {catalog.item_ids[r["item_id"]] for r in mine}
        assert all(r["title"] == catalog.title(catalog.item_ids[r["item_id"]]) for r in mine)
    # an existing result is not overwritten without --overwrite
    assert recommend_cli.main(argv) == 2
    assert "already holds recommendations" in capsys.readouterr().err
