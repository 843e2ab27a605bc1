"""CF-only artifacts through the scorer interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cora_ray.cf import load_cf_artifact
from cora_ray.data import protocol
from cora_ray.data.batching import pad_histories
from cora_ray.errors import ArtifactMismatchError, ModelError
from cora_ray.infer.cf_scorer import CFScorer


def test_cf_scores_are_the_backbone_logits(tiny_artifacts):
    scorer = CFScorer.from_artifact(tiny_artifacts.cf_uri, tiny_artifacts.data_uri, batch_size=7)
    t = protocol.read_split(tiny_artifacts.data_uri, "test")
    u, i, h = t["user_id"].to_numpy(), t["item_id"].to_numpy(), t["history"].to_pylist()
    mf = load_cf_artifact(tiny_artifacts.cf_uri)
    with torch.inference_mode():
        ref = mf.score(torch.tensor(u), torch.tensor(i), torch.from_numpy(pad_histories(h))).numpy()
    np.testing.assert_allclose(scorer.score(u, i, h), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        scorer.score_rows({"user_id": u, "item_id": i, "history": h}), ref, rtol=1e-6, atol=1e-6
    )
    assert scorer.describe()["cf_artifact"]["backbone"] == "mf"
    with pytest.raises(ModelError, match="no collaborative weights"):
        scorer.score(u, i, h, G=torch.zeros(len(u), 4, 4))


def test_cf_artifact_for_other_data_is_refused(tiny_artifacts, tmp_path):
    from cora_ray.data.synthetic import prepare_synthetic

    other = str(tmp_path / "other")
    prepare_synthetic(other, users=30, items=40, seed=9, interactions_per_user=12)
    with pytest.raises(ArtifactMismatchError, match="dataset"):
        CFScorer.from_artifact(tiny_artifacts.cf_uri, other)
