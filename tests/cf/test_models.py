"""The CFBackbone interface of MF, LightGCN and SASRec, and that each learns the synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cora_ray.cf import MF, CFBackbone, LightGCN, SASRec, build_backbone
from cora_ray.cf.train import evaluate, make_backbone, train_cf
from cora_ray.errors import ModelError


def _edges():
    return torch.tensor([1, 1, 2, 3]), torch.tensor([1, 2, 2, 4])


def _models() -> list[CFBackbone]:
    known = torch.tensor([False, True, True, True, False])
    eu, ei = _edges()
    return [
        MF(4, 5, dim=8, known_users=known),
        LightGCN(4, 5, eu, ei, dim=8, num_layers=2, known_users=known),
        SASRec(4, 5, dim=8, max_history=4, num_blocks=2, num_heads=2, dropout=0.2, known_users=known),
    ]


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
def test_interface_shapes_and_score_is_dot_product(model):
    model.eval()
    users = torch.tensor([1, 2, 4])
    items = torch.tensor([1, 5, 3])
    hist = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0], [3, 4, 5, 1]])
    e_u, e_i = model.embed(users, items, hist)
    assert e_u.shape == e_i.shape == (3, 8)
    assert torch.isfinite(e_u).all() and torch.isfinite(e_i).all()
    assert torch.allclose(model.score(users, items, hist), (e_u * e_i).sum(-1), atol=1e-6)
    assert torch.equal(model.user_vectors(users, hist), e_u)
    assert torch.equal(model.item_vectors(items), e_i)
    assert model.knows_user(torch.tensor([0, 1, 3, 4, 99, -1])).tolist() == [
        False,
        True,
        True,
        False,
        False,
        False,
    ]


def test_mf_and_lightgcn_ignore_history_sasrec_needs_it():
    mf, gcn, sas = _models()
    u = torch.tensor([1, 2])
    for m in (mf, gcn):
        assert torch.equal(m.user_vectors(u), m.user_vectors(u, torch.tensor([[1, 2], [3, 4]])))
    sas.eval()
    with pytest.raises(ModelError, match="history"):
        sas.user_vectors(u)
    # the user id is not used: the same history gives the same vector for any user
    h = torch.tensor([[1, 2], [1, 2]])
    v = sas.user_vectors(u, h)
    assert torch.allclose(v[0], v[1])
    # histories longer than max_history keep the most recent items; shorter ones are left-padded
    long = torch.tensor([[5, 5, 5, 1, 2, 3, 4]])
    assert torch.allclose(sas.user_vectors(u[:1], long), sas.user_vectors(u[:1], long[:, -4:]))
    assert torch.allclose(
        sas.user_vectors(u[:1], torch.tensor([[3, 4]])), sas.user_vectors(u[:1], torch.tensor([[0, 0, 3, 4]]))
    )
    # the order of the history matters (it is a sequence model)
    assert not torch.allclose(
        sas.user_vectors(u[:1], torch.tensor([[1, 2, 3, 4]])),
        sas.user_vectors(u[:1], torch.tensor([[4, 3, 2, 1]])),
    )


def test_ids_out_of_range_are_refused():
    mf, gcn, sas = _models()
    with pytest.raises(ModelError, match="item ids must be in 0..5"):
        mf.item_vectors(torch.tensor([6]))
    with pytest.raises(ModelError, match="user ids"):
        gcn.user_vectors(torch.tensor([5]))
    with pytest.raises(ModelError, match="history item"):
        sas.user_vectors(torch.tensor([1]), torch.tensor([[9]]))


def test_lightgcn_propagation_matches_the_formula_and_cache_follows_updates():
    eu, ei = _edges()
    m = LightGCN(4, 5, eu, ei, dim=3, num_layers=2)
    n = 4 + 5 + 2
    a = torch.zeros(n, n)
    for u, i in zip(eu.tolist(), ei.tolist(), strict=True):
        a[u, 4 + 1 + i] = a[4 + 1 + i, u] = 1.0
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    norm = d[:, None] * a * d[None, :]
    x0 = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach()
    x1 = norm @ x0
    x2 = norm @ x1
    expect = (x0 + x1 + x2) / 3
    with torch.no_grad():
        users, items = m.propagate()
        assert torch.allclose(users, expect[:5], atol=1e-6) and torch.allclose(items, expect[5:], atol=1e-6)
        # a user without edges keeps (1/(K+1)) of its own vector
        assert torch.allclose(m.user_vectors(torch.tensor([4])), x0[4:5] / 3, atol=1e-6)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    loss = m.score(torch.tensor([1]), torch.tensor([2])).sum()
    loss.backward()
    opt.step()
    with torch.no_grad():
        fresh = LightGCN(4, 5, eu, ei, dim=3, num_layers=2)
        fresh.load_state_dict(m.state_dict())
        assert torch.allclose(m.user_vectors(torch.tensor([1, 2])), fresh.user_vectors(torch.tensor([1, 2])))


def test_build_backbone_restores_every_kind():
    for model in _models():
        model.eval()
        clone = build_backbone(model.spec(), model.state_dict()).eval()
        u, i, h = torch.tensor([1, 3]), torch.tensor([2, 4]), torch.tensor([[1, 2], [0, 3]])
        assert torch.equal(model.score(u, i, h), clone.score(u, i, h))
    with pytest.raises(ModelError, match="unknown CF backbone 'bpr'"):
        build_backbone({"backbone": "bpr", "num_users": 1, "num_items": 1, "dim": 1})


def test_lightgcn_graph_choice(syn_data, fast_cfg):
    pos = make_backbone(fast_cfg("lightgcn").model, syn_data)
    every = make_backbone(fast_cfg("lightgcn", "model.graph=all").model, syn_data)
    train = syn_data.splits["train"]
    assert pos.edge_users.numel() == int((train.labels > 0.5).sum())
    assert every.edge_users.numel() == len(train)


@pytest.mark.parametrize("backbone", ["mf", "lightgcn", "sasrec"])
def test_each_backbone_learns_the_synthetic_ground_truth(syn_data, fast_cfg, backbone):
    extra = ["train.batch_size=512"] if backbone == "sasrec" else []  # fewer, larger steps: ~2x faster
    result = train_cf(fast_cfg(backbone, *extra), syn_data, log=None)
    test = result.metrics["test"]
    # random scoring gives 0.5 ± 0.01 on these ~4.8k test rows; the noise-free ground truth gives ~0.88
    floor = {"mf": 0.65, "lightgcn": 0.65, "sasrec": 0.56}[backbone]
    assert test["auc"] > floor, (backbone, result.metrics)
    assert result.metrics["valid"]["auc"] > floor
    assert result.best_epoch >= 1 and len(result.history) == result.epochs_run
    # the returned model is the best epoch's, in eval mode, and scores deterministically
    assert not result.model.training
    again = evaluate(result.model, syn_data.splits["test"])
    assert again["auc"] == pytest.approx(test["auc"], abs=1e-12)


def test_training_is_seeded(syn_data, fast_cfg):
    a = train_cf(fast_cfg("mf", "train.max_epochs=2"), syn_data, log=None)
    b = train_cf(fast_cfg("mf", "train.max_epochs=2"), syn_data, log=None)
    assert np.isclose(a.metrics["test"]["auc"], b.metrics["test"]["auc"], atol=0, rtol=0)


def test_sasrec_last_position_shortcut_is_exact():
    torch.manual_seed(0)
    m = SASRec(4, 9, dim=8, max_history=6, num_blocks=2, num_heads=2, dropout=0.2).eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 2, 3], [4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 0, 5]])
    with torch.no_grad():
        assert torch.allclose(m.encode(seq), m.encode(seq, last_only=False), atol=1e-6)
