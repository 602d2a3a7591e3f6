"""Losses: multinomial NLL against scipy, masking, log-count MSE, the count-weight rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multinomial

from seq2reads.models.losses import (
    combined_loss,
    count_weight_from_data,
    log_count_mse,
    multinomial_nll,
)


def _data(n=3, c=2, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, 2, length, generator=g)
    counts = torch.poisson(torch.full((n, c, 2, length), 2.0), generator=g)
    return logits, counts


def test_nll_matches_scipy_multinomial():
    logits, counts = _data()
    nll = multinomial_nll(logits, counts, reduce=False)
    for i in range(3):
        for c in range(2):
            p = torch.softmax(logits[i, c].reshape(-1).double(), 0).numpy()
            y = counts[i, c].reshape(-1).numpy()
            ref = -multinomial.logpmf(y, n=y.sum(), p=p)
            assert nll[i, c].item() == pytest.approx(ref, rel=1e-4)
    assert multinomial_nll(logits, counts).item() == pytest.approx(nll.mean().item())


def test_mask_drops_positions_from_softmax_and_counts():
    logits, counts = _data()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 2:4] = False
    masked = multinomial_nll(logits, counts, mask, reduce=False)
    keep = mask[0]
    ref = multinomial_nll(logits[..., keep], counts[..., keep], reduce=False)
    torch.testing.assert_close(masked, ref)
    # Whatever the counts or logits at masked positions, the loss is unchanged.
    counts2, logits2 = counts.clone(), logits.clone()
    counts2[..., 2:4] = 1000.0
    logits2[..., 2:4] = 50.0
    torch.testing.assert_close(multinomial_nll(logits2, counts2, mask, reduce=False), masked)


def test_fully_masked_window_is_finite_zero():
    logits, counts = _data()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1] = False
    nll = multinomial_nll(logits, counts, mask, reduce=False)
    assert torch.isfinite(nll).all()
    assert torch.all(nll[1] == 0)
    logits.requires_grad_(True)
    multinomial_nll(logits, counts, mask).backward()
    assert torch.isfinite(logits.grad).all()


def test_perfect_prediction_minimises_nll():
    _, counts = _data()
    good = torch.log(counts + 1e-6)
    bad = torch.zeros_like(good)
    assert multinomial_nll(good, counts) < multinomial_nll(bad, counts)


def test_log_count_mse_uses_masked_total():
    _, counts = _data()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 0] = False
    total = counts[..., 1:].sum(dim=(-1, -2))
    exact = torch.log1p(total)
    assert log_count_mse(exact, counts, mask).item() == pytest.approx(0.0, abs=1e-10)
    assert log_count_mse(exact + 1.0, counts, mask).item() == pytest.approx(1.0, rel=1e-6)


def test_combined_loss_weights_per_cell_type():
    logits, counts = _data()
    lc = torch.zeros(3, 2)
    loss, nll, mse = combined_loss(logits, lc, counts, None, torch.tensor([1.0, 3.0]))
    per_nll = multinomial_nll(logits, counts, reduce=False)
    per_mse = log_count_mse(lc, counts, reduce=False)
    ref = (per_nll + torch.tensor([1.0, 3.0]) * per_mse).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert nll.item() == pytest.approx(per_nll.mean().item(), rel=1e-6)
    assert mse.item() == pytest.approx(per_mse.mean().item(), rel=1e-6)


def test_combined_loss_window_weight_scales_each_windows_count_term():
    logits, counts = _data()
    lc = torch.zeros(3, 2)
    w = torch.tensor([1.0, 3.0])
    v = torch.tensor([1.0, 0.0, 0.5])
    loss, nll, mse = combined_loss(logits, lc, counts, None, w, v)
    per_nll = multinomial_nll(logits, counts, reduce=False)
    per_mse = log_count_mse(lc, counts, reduce=False)
    assert loss.item() == pytest.approx((per_nll + w * v[:, None] * per_mse).mean().item(), rel=1e-6)
    assert mse.item() == pytest.approx(per_mse.mean().item(), rel=1e-6)  # reported unweighted
    # weight 0 on window 1: its count prediction no longer moves the loss
    lc2 = lc.clone()
    lc2[1] += 5.0
    assert combined_loss(logits, lc2, counts, None, w, v)[0].item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize(
    "stats",
    [
        [{"mean": 300.0, "median": 250.0}, {"mean": 10.0, "median": 4.0}],
        {"A": {"mean": 300.0, "median": 250.0}, "B": {"mean": 10.0, "median": 4.0}},
        {"mean": [300.0, 10.0], "median": [250.0, 4.0]},
    ],
)
def test_count_weight_rule(stats):
    # median / 10, floored at 1
    assert count_weight_from_data(stats, 2) == pytest.approx([25.0, 1.0])
    with pytest.raises(ValueError):
        count_weight_from_data(stats, 3)
    assert np.isfinite(count_weight_from_data(stats)).all()


def test_cell_share_nll_is_the_multinomial_of_the_cell_split():
    from seq2reads.models.losses import cell_share_nll

    g = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.rand(5, 3, 2, 40, generator=g) * 2)
    mask = torch.rand(5, 40, generator=g) > 0.2
    lc = torch.randn(5, 3, generator=g)
    got = cell_share_nll(lc, counts, mask, reduce=False)
    y = (counts * mask[:, None, None, :]).sum((-1, -2))
    for i in range(5):
        ref = -torch.distributions.Multinomial(int(y[i].sum()), logits=lc[i]).log_prob(y[i])
        torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-4)
    # only the differences between cell types matter: a common shift changes nothing
    torch.testing.assert_close(cell_share_nll(lc + 3.0, counts, mask), got.mean())
    # and predicting the observed split beats a uniform one
    assert cell_share_nll(torch.log(y + 1e-3), counts, mask) < cell_share_nll(torch.zeros(5, 3), counts, mask)
