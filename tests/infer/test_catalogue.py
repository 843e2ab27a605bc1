"""Catalogue-wide retrieval and re-ranking (cora_ray/infer/catalogue.py) without Ray.

Retrieval excludes the user's train items (liked or not), the padding id and untitled items; MF's ranking is
the brute-force dot product; SASRec's user vector comes from the history; the fallback; the errors; and one
user's whole recommendation through the real tiny CoRA checkpoint equals scoring the retrieved rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from cora_ray.cf.models import MF, LightGCN, SASRec
from cora_ray.infer.catalogue import (
    FALLBACK_POPULARITY,
    CatalogueIndex,
    CatalogueQuery,
    CatalogueRetriever,
    Retrieval,
    check_k,
    recommend_one,
    rerank,
    retrieve_items,
)
from cora_ray.infer.service import RequestError, ScoreJob

N_USERS, N_ITEMS = 6, 30
# items 7 and 30 have no title: never recommended
TITLES = [""] + [("" if i in (7, N_ITEMS) else f"Item {i}") for i in range(1, N_ITEMS + 1)]
# (user, item, label): user 1 liked 1, 2 and disliked 3 (and 2 twice); user 5 has no train interactions
TRAIN = [(1, 1, 1), (1, 2, 1), (1, 3, 0), (1, 2, 1), (2, 4, 1), (2, 1, 1), (3, 1, 1), (4, 9, 0), (6, 4, 1)]


def train_table() -> pa.Table:
    u, i, lab = zip(*TRAIN, strict=True)
    return pa.table({"user_id": list(u), "item_id": list(i), "label": pa.array(lab, pa.int8())})


@pytest.fixture(scope="module")
def index() -> CatalogueIndex:
    return CatalogueIndex.build(train_table(), TITLES, "hash")


def mf(known: list[int] | None = None) -> MF:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kn = None
        if known is not None:
            kn = torch.zeros(N_USERS + 1, dtype=torch.bool)
            kn[known] = True
        return MF(N_USERS, N_ITEMS, dim=8, init_std=1.0, known_users=kn).eval()


def test_index_holds_every_train_item_of_a_user_liked_or_not_once(index):
    assert index.seen(1).tolist() == [1, 2, 3]  # the disliked 3 too; 2 once
    assert index.seen(4).tolist() == [9]
    assert index.seen(5).tolist() == [] and index.seen(None).tolist() == [] and index.seen(99).tolist() == []
    assert index.popularity[1] == 3 and index.popularity[2] == 1 and index.popularity[3] == 0
    assert index.popularity[4] == 2
    assert not index.titled[0] and not index.titled[7] and not index.titled[N_ITEMS] and index.titled[1]


def test_mf_retrieval_is_the_brute_force_dot_product_over_unseen_titled_items(index):
    model = mf()
    got = retrieve_items(model, index, 1, [], k_retrieve=10)
    with torch.no_grad():
        u = model.user_emb.weight[1]
        brute = {i: float(u @ model.item_emb.weight[i]) for i in range(1, N_ITEMS + 1)}
    allowed = {i: s for i, s in brute.items() if TITLES[i] and i not in (1, 2, 3)}
    want = sorted(allowed, key=lambda i: (-allowed[i], i))[:10]
    assert got.item_ids == want and got.fallback is None
    np.testing.assert_allclose(got.cf_scores, [allowed[i] for i in want], rtol=1e-5, atol=1e-6)
    assert got.seconds >= 0


def test_k_above_the_allowed_items_returns_all_of_them(index):
    got = retrieve_items(mf(), index, 1, [], k_retrieve=1000)
    assert sorted(got.item_ids) == [i for i in range(1, N_ITEMS + 1) if TITLES[i] and i not in (1, 2, 3)]
    assert got.cf_scores == sorted(got.cf_scores, reverse=True)


def test_a_requested_history_is_excluded_too(index):
    got = retrieve_items(mf(), index, 1, [], k_retrieve=1000, exclude=[5, 6])
    assert not {1, 2, 3, 5, 6} & set(got.item_ids)


@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "sasrec"])
def test_score_all_items_equals_the_pairwise_score_of_every_backbone(backbone):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        if backbone == "mf":
            model = MF(N_USERS, N_ITEMS, dim=8)
        elif backbone == "lightgcn":
            eu, ei = torch.tensor([1, 1, 2, 3, 6]), torch.tensor([1, 2, 4, 1, 4])
            model = LightGCN(N_USERS, N_ITEMS, eu, ei, dim=8)
        else:
            model = SASRec(N_USERS, N_ITEMS, dim=8, max_history=5, num_heads=2)
    model.eval()
    users = torch.tensor([1, 2, 6])
    history = torch.tensor([[0, 0, 1, 2], [0, 4, 5, 6], [0, 0, 0, 9]]) if model.uses_history else None
    with torch.no_grad():
        full = model.score_all_items(users, history)
        assert full.shape == (3, N_ITEMS + 1) and torch.isinf(full[:, 0]).all() and (full[:, 0] < 0).all()
        for b in range(3):
            items = torch.arange(1, N_ITEMS + 1)
            pair = model.score(
                users[b].repeat(N_ITEMS), items, None if history is None else history[b].repeat(N_ITEMS, 1)
            )
            torch.testing.assert_close(full[b, 1:], pair, rtol=1e-5, atol=1e-5)


def test_sasrec_retrieval_follows_the_history_not_the_user_id(index):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = SASRec(N_USERS, N_ITEMS, dim=8, max_history=5, num_heads=2).eval()
    a = retrieve_items(model, index, 2, [5, 6], k_retrieve=8)
    b = retrieve_items(model, index, 2, [10, 11, 12], k_retrieve=8)
    assert a.cf_scores != b.cf_scores  # another history, another user vector
    with torch.no_grad():
        u = model.user_vectors(torch.tensor([0]), torch.tensor([[5, 6]]))[0]
        brute = {i: float(u @ model.item_emb.weight[i]) for i in range(1, N_ITEMS + 1)}
    allowed = {i: s for i, s in brute.items() if TITLES[i] and i not in (1, 4)}  # user 2's train items
    assert a.item_ids == sorted(allowed, key=lambda i: (-allowed[i], i))[:8]
    # the history, not the id: an unknown user with the same history gets the same scores (their own
    # seen set is empty, so compare on the items both may get)
    c = retrieve_items(model, index, None, [5, 6], k_retrieve=1000)
    by_item = dict(zip(c.item_ids, c.cf_scores, strict=True))
    np.testing.assert_allclose([by_item[i] for i in a.item_ids], a.cf_scores, rtol=1e-5)
    assert c.fallback is None


def test_without_a_trained_user_vector_the_fallback_is_popularity(index):
    model = mf(known=[1, 2, 3, 4, 6])
    expect = [1, 4, 2]  # users who liked it: 3, 2, 1 (user 1 liked item 2 twice: counted once)
    for user in (None, 5):  # unknown to the dataset; in the dataset but not known to the CF model
        got = retrieve_items(model, index, user, [], k_retrieve=3)
        assert got.fallback == FALLBACK_POPULARITY
        assert got.item_ids == [i for i in expect if i not in index.seen(user)][:3]
        assert got.cf_scores == [float(index.popularity[i]) for i in got.item_ids]
    # a known user gets their own vector
    assert retrieve_items(model, index, 2, [], k_retrieve=3).fallback is None
    with torch.random.fork_rng(devices=[]):
        sasrec = SASRec(N_USERS, N_ITEMS, dim=8, max_history=5, num_heads=2).eval()
    assert retrieve_items(sasrec, index, 1, [], k_retrieve=3).fallback == FALLBACK_POPULARITY


def test_errors_name_the_problem(index):
    with pytest.raises(RequestError, match="k=11 is above catalogue_k=10") as err:
        check_k(11, 10)
    assert err.value.status == 422
    with pytest.raises(RequestError, match="k must be >= 1, got 0"):
        check_k(0, 10)
    check_k(10, 10)
    # every titled item already seen: nothing to recommend
    everything = [(1, i, 0) for i in range(1, N_ITEMS + 1)]
    u, i, lab = zip(*everything, strict=True)
    full = CatalogueIndex.build(pa.table({"user_id": u, "item_id": i, "label": lab}), TITLES)
    with pytest.raises(RequestError, match="no item left to recommend"):
        retrieve_items(mf(), full, 1, [], k_retrieve=5)
    # a scorer without a CF backbone (TALLRec, zero-shot): candidates are required
    retriever = CatalogueRetriever()
    no_cf = SimpleNamespace(cf=None, method="tallrec", uri="ckpt://t", data_uri="x", titles=TITLES)
    query = CatalogueQuery("u1", 1, [], 5)
    with pytest.raises(RequestError, match="no CF backbone.*send `candidates`"):
        retriever.retrieve(no_cf, query)
    answered = retriever.answer(no_cf, query)  # the replica's form: a value, not an exception
    assert answered.status == 422 and "candidates" in answered.error and answered.item_ids == []
    with pytest.raises(RequestError, match="candidates"):
        answered.raise_error()


def test_a_broken_backbone_is_a_server_fault_not_a_ranking(index):
    model = mf()
    with torch.no_grad():
        model.item_emb.weight[5] = float("nan")
    with pytest.raises(Exception, match="non-finite"):
        retrieve_items(model, index, 1, [], k_retrieve=5)


def test_rerank_orders_by_llm_score_and_keeps_the_cf_rank():
    got = Retrieval(item_ids=[10, 11, 12, 13], cf_scores=[4.0, 3.0, 2.0, 1.0])
    top = rerank(got, [0.1, 0.9, 0.5, 0.9], k=3)
    assert [(r.item_id, r.rank, r.cf_rank, r.cf_score) for r in top] == [
        (11, 1, 2, 3.0),
        (13, 2, 4, 1.0),  # tie on the LLM score: the better CF rank first
        (12, 3, 3, 2.0),
    ]
    assert [r.score for r in top] == [0.9, 0.9, 0.5]
    with pytest.raises(Exception, match="3 LLM scores for 4"):
        rerank(got, [1.0, 2.0, 3.0], k=2)


# -- the real tiny checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cora_scorer(tiny_artifacts):
    from cora_ray.infer.scorer import Scorer

    return Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], tiny_artifacts.data_uri)


def test_one_users_catalogue_recommendation_through_the_scoring_engine(cora_scorer, tiny_artifacts):
    from cora_ray.data import protocol
    from cora_ray.infer.service import Catalog, ScorerOptions, ScoringEngine

    catalog = Catalog.from_dataset(tiny_artifacts.data_uri)
    engine = ScoringEngine(cora_scorer, ScorerOptions(max_rows_per_forward=7))
    retriever = CatalogueRetriever()
    train = protocol.read_split(tiny_artifacts.data_uri, "train", columns=["user_id", "item_id"])
    user = int(train["user_id"][0].as_py())
    seen = {
        i for u, i in zip(*(train[c].to_pylist() for c in ("user_id", "item_id")), strict=True) if u == user
    }
    job = ScoreJob(f"u{user}", user, [], catalog.histories.get(user, []))
    res = recommend_one(engine, retriever, job, k_retrieve=9, k=4)
    got = res.retrieval
    assert len(got.item_ids) == 9 and not seen & set(got.item_ids) and got.fallback is None
    # the CF ranking is the checkpoint's own backbone's
    with torch.no_grad():
        cf = cora_scorer.cf
        brute = cf.score(torch.full((len(got.item_ids),), user), torch.tensor(got.item_ids)).numpy()
    np.testing.assert_allclose(got.cf_scores, brute, rtol=1e-5, atol=1e-5)
    # the LLM scores are the scorer's for those rows; the top 4 of them come back, best first
    llm = cora_scorer.score([user] * 9, got.item_ids, [job.history] * 9)
    want = sorted(range(9), key=lambda j: (-llm[j], j))[:4]
    assert [r.item_id for r in res.items] == [got.item_ids[j] for j in want]
    np.testing.assert_allclose([r.score for r in res.items], llm[want], atol=1e-4)
    assert [r.cf_rank for r in res.items] == [j + 1 for j in want]
    assert res.cold_start is False and res.retrieval_s >= 0 and res.rerank_s > 0
    assert retriever.index(cora_scorer) is retriever.index(cora_scorer)  # built once


def test_a_checkpoint_without_cf_backbone_needs_candidates(tiny_artifacts):
    from cora_ray.infer.scorer import Scorer
    from cora_ray.infer.service import ScorerOptions, ScoringEngine

    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["tallrec"], tiny_artifacts.data_uri)
    assert scorer.cf is None
    engine = ScoringEngine(scorer, ScorerOptions())
    with pytest.raises(RequestError, match="method 'tallrec'.*no CF backbone"):
        recommend_one(engine, CatalogueRetriever(), ScoreJob("u1", 1, [], []), k_retrieve=5, k=2)
