"""The batched scorer: loading checks, scores equal the model's forward, hooks for serving's G."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cora_ray.data import protocol
from cora_ray.data.batching import pad_histories
from cora_ray.errors import ArtifactMismatchError, DataError, ModelError, StorageError
from cora_ray.infer.scorer import Scorer


def rows(art, split="test"):
    t = protocol.read_split(art.data_uri, split)
    return t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist(), t["label"].to_numpy()


@pytest.fixture(scope="module")
def cora(tiny_artifacts):
    return Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], batch_size=7)


@pytest.mark.parametrize("method", ["cora", "tallrec", "collm"])
def test_bucketed_scores_equal_one_forward_over_all_rows(tiny_artifacts, method):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints[method], batch_size=5)
    u, i, h, _ = rows(tiny_artifacts)
    scores = scorer.score(u, i, h)  # length-bucketed batches of 5, in the caller's order
    reference = scorer.score_encoded(scorer.encode(u, i, h))  # one padded batch, model.forward
    assert scores.shape == (len(u),) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, reference, atol=1e-5)
    assert np.std(scores) > 0


def test_scores_follow_the_rows_when_permuted(cora, tiny_artifacts):
    u, i, h, _ = rows(tiny_artifacts)
    perm = np.random.default_rng(0).permutation(len(u))
    a = cora.score(u, i, h)
    b = cora.score(u[perm], i[perm], [h[k] for k in perm])
    np.testing.assert_allclose(b, a[perm], atol=1e-5)


def test_trained_parts_are_loaded(tiny_artifacts, cora):
    """The checkpoint's trainable tensors are in the model (they differ from a fresh build)."""
    from cora_ray.checkpoint import load_trainable

    state = load_trainable(tiny_artifacts.checkpoints["cora"])
    for name, t in cora.model.trainable_state_dict().items():
        torch.testing.assert_close(t, state[name])


def test_supplied_G_equals_generated_G_and_zero_G_is_the_plain_llm(cora, tiny_artifacts):
    u, i, h, _ = rows(tiny_artifacts)
    G = cora.compute_G(u, i, h)
    assert tuple(G.shape) == (len(u), *cora.g_shape)
    np.testing.assert_allclose(cora.score(u, i, h, G=G), cora.score(u, i, h), atol=1e-5)
    calls = []

    def provider(uu, ii, hh):
        calls.append(len(uu))
        return cora.compute_G(uu, ii, hh)

    np.testing.assert_allclose(cora.score(u, i, h, g_provider=provider), cora.score(u, i, h), atol=1e-5)
    assert sum(calls) == len(u) and max(calls) <= cora.batch_size
    # G = 0: no collaborative delta — the frozen LLM's score with the same prompt (serving's cold start)
    zero_shot = Scorer.from_base_llm(tiny_artifacts.config("cora"))
    plain = cora.score(u, i, h, G=torch.zeros_like(G))
    np.testing.assert_allclose(plain, zero_shot.score(u, i, h), atol=1e-5)
    assert not np.allclose(plain, cora.score(u, i, h), atol=1e-3)


def test_compute_G_matches_the_model(cora, tiny_artifacts):
    u, i, h, _ = rows(tiny_artifacts)
    with torch.inference_mode():
        ref = cora.model.compute_G(torch.tensor(u), torch.tensor(i), torch.from_numpy(pad_histories(h)))
    torch.testing.assert_close(cora.compute_G(u, i, h), ref)


def test_G_is_refused_for_methods_without_collaborative_weights(tiny_artifacts):
    scorer = Scorer.from_checkpoint(tiny_artifacts.checkpoints["tallrec"])
    assert scorer.g_shape is None and not scorer.uses_collab_weights
    u, i, h, _ = rows(tiny_artifacts)
    with pytest.raises(ModelError, match="no collaborative weights"):
        scorer.score(u[:2], i[:2], h[:2], G=torch.zeros(2, 64, 4))
    with pytest.raises(ModelError, match="no collaborative weights"):
        scorer.compute_G(u[:2], i[:2], h[:2])


def test_histories_in_any_form_give_the_same_scores(cora, tiny_artifacts):
    u, i, h, _ = rows(tiny_artifacts)
    u, i, h = u[:9], i[:9], h[:9]
    a = cora.score(u, i, h)
    np.testing.assert_allclose(cora.score(list(u), torch.as_tensor(i), pad_histories(h)), a, atol=1e-6)
    np.testing.assert_allclose(
        cora.score_rows({"user_id": u, "item_id": i, "history": np.array(h, dtype=object)}), a, atol=1e-6
    )
    assert cora.score([], [], []).shape == (0,)


def test_unknown_items_are_refused(cora):
    with pytest.raises(DataError, match="without a title"):
        cora.score([1], [10_000], [[]])
    with pytest.raises(DataError, match="history item"):
        cora.score([1], [1], [[10_000]])
    with pytest.raises(DataError, match="differ in length"):
        cora.score([1, 2], [1], None)


def test_wrong_base_llm_hash_is_refused_naming_both_hashes(tiny_artifacts, tmp_path):
    from tiny_setup import write_tiny_checkpoint

    from cora_ray.checkpoint import read_checkpoint_manifest

    good = read_checkpoint_manifest(tiny_artifacts.checkpoints["cora"])["base_llm"]
    bad = {"identity": good["identity"], "weight_hash": "f" * 64}
    uri = write_tiny_checkpoint(tiny_artifacts, str(tmp_path / "bad_llm"), "cora", base_llm=bad)
    with pytest.raises(ArtifactMismatchError) as err:
        Scorer.from_checkpoint(uri)
    assert "f" * 64 in str(err.value) and good["weight_hash"] in str(err.value)
    assert "base LLM" in str(err.value)


def test_wrong_cf_artifact_hash_is_refused(tiny_artifacts, tmp_path):
    from tiny_setup import write_tiny_checkpoint

    cf = {"uri": tiny_artifacts.cf_uri, "hash": "e" * 64, "backbone": "mf"}
    uri = write_tiny_checkpoint(tiny_artifacts, str(tmp_path / "bad_cf"), "cora", cf_artifact=cf)
    with pytest.raises(ArtifactMismatchError, match="CF artifact hash " + "e" * 64):
        Scorer.from_checkpoint(uri)


def test_other_dataset_is_refused(tiny_artifacts, tmp_path):
    from cora_ray.data.synthetic import prepare_synthetic

    other = str(tmp_path / "other_data")
    prepare_synthetic(other, users=30, items=40, seed=5, interactions_per_user=12)
    with pytest.raises(ArtifactMismatchError, match="dataset hash"):
        Scorer.from_checkpoint(tiny_artifacts.checkpoints["cora"], data_uri=other)


def test_checkpoint_without_manifest_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(StorageError, match="incomplete"):
        Scorer.from_checkpoint(str(tmp_path / "half"))
    with pytest.raises(StorageError, match="not found"):
        Scorer.from_checkpoint(str(tmp_path / "nothing"))


def test_describe_names_what_scored(cora, tiny_artifacts):
    d = cora.describe()
    assert d["method"] == "cora" and d["checkpoint"] == tiny_artifacts.checkpoints["cora"]
    assert d["dataset_hash"] == tiny_artifacts.data_hash and d["cf_artifact"]["backbone"] == "mf"
    from cora_ray.checkpoint import read_checkpoint_manifest

    assert d["checkpoint_hash"] == read_checkpoint_manifest(tiny_artifacts.checkpoints["cora"])["hash"]
    assert d["cf_artifact"]["hash"] == cora.cf.artifact_hash  # the loaded backbone's declared field
    assert Scorer.from_base_llm(tiny_artifacts.config("cora")).describe()["checkpoint_hash"] is None
    assert cora.knows_user([1]).dtype == bool
