"""The generator's collapse monitor (cora_ray/train/delta_spread.py): the varying share of G between rows."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cora_ray.train.delta_spread import DeltaSpread
from cora_ray.train.progress import Progress


class Emit(nn.Module):
    """Returns the tensor it is given: a stand-in generator whose output the test chooses."""

    def forward(self, G: torch.Tensor) -> torch.Tensor:
        return G * 1.0


def population_share(G: torch.Tensor) -> float:
    """The definition, written out: energy in the deviation from the mean over the rows, over the energy."""
    g = G.flatten(1).double()
    deviation = (g - g.mean(dim=0)).square().sum(dim=1).mean()
    return float(deviation / g.square().sum(dim=1).mean())


def test_one_g_for_every_row_is_zero_and_independent_rows_are_near_one():
    module = Emit().train()
    spread = DeltaSpread(module)
    one = torch.randn(1, 24, 4)
    module(one.expand(16, -1, -1))
    assert spread.take() == pytest.approx(0.0, abs=1e-12)
    module(torch.randn(400, 24, 4))  # independent rows, mean zero: all of their energy varies
    assert spread.take() == pytest.approx(1.0, abs=0.02)


def test_the_share_pools_calls_until_taken_and_is_the_unbiased_population_share():
    g = torch.Generator().manual_seed(0)
    common = torch.randn(1, 24, 4, generator=g)
    G = common + 0.3 * torch.randn(10, 24, 4, generator=g)  # a large shared part, as at initialisation
    module = Emit().train()
    spread = DeltaSpread(module)
    module(G[:3])
    module(G[3:])  # two forward passes, one window
    n = G.shape[0]
    assert spread.take() == pytest.approx(n / (n - 1) * population_share(G), rel=1e-9)
    assert spread.take() is None  # a new window: nothing seen yet


def test_eval_mode_passes_and_single_rows_are_not_counted():
    module = Emit()
    spread = DeltaSpread(module)
    module.eval()
    module(torch.randn(8, 24, 4))  # validation's forward passes are left out
    assert spread.take() is None
    module.train()
    module(torch.randn(1, 24, 4))
    assert spread.take() is None  # one row has no spread
    module(torch.zeros(4, 24, 4))  # all-zero G (every row a cold user under the zeroing rule)
    assert spread.take() is None


def test_close_detaches_the_hook_and_no_module_takes_nothing():
    module = Emit().train()
    spread = DeltaSpread(module)
    spread.close()
    module(torch.randn(8, 24, 4))
    assert spread.take() is None
    nothing = DeltaSpread(None)
    assert nothing.take() is None
    nothing.close()


def test_progress_records_and_prints_the_spread_on_logged_steps(tmp_path, capsys):
    run_uri = str(tmp_path / "run")
    progress = Progress(run_uri, max_steps=8, eval_every=100, samples_per_step=4, log_every=4)
    assert [s for s in range(1, 9) if progress.logs_at(s)] == [1, 4, 8]
    progress.train_step(1, 0.7, 1e-3, 0.5, g_spread=0.0123)
    progress.train_step(2, 0.7, 1e-3, 0.5)
    progress.close()
    out = capsys.readouterr().out
    assert "G spread 0.0123" in out
    records = [json.loads(x) for x in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["type"] == "train"}
    assert train[1]["g_varying_share"] == 0.0123 and "g_varying_share" not in train[2]
