"""Metric functions against scipy on small random inputs, with masks and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from seq2reads.evaluation import metrics as M


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n, L = 7, 30
    logits = rng.normal(size=(n, 2, L))
    probs = M.softmax_profile(logits)
    counts = rng.poisson(rng.gamma(1.0, 1.0, size=(n, 2, L))).astype(np.float32)
    counts[:, 0, :3] = 2  # ties in the observed ranks
    mask = rng.random((n, L)) > 0.2
    return probs, counts, mask


def _kept(probs, counts, mask, i):
    m = np.broadcast_to(mask[i][None], counts[i].shape).ravel()
    p = probs[i].ravel()[m]
    return p / p.sum(), counts[i].ravel()[m]


def test_softmax_profile_is_joint_over_strands():
    x = np.random.default_rng(1).normal(size=(3, 4, 2, 5))
    p = M.softmax_profile(x, axis_start=2)
    assert np.allclose(p.reshape(3, 4, -1).sum(-1), 1.0)
    assert np.allclose(p[1, 2].ravel(), np.exp(x[1, 2].ravel()) / np.exp(x[1, 2].ravel()).sum())


@pytest.mark.parametrize("use_mask", [False, True])
def test_profile_metrics_match_scipy(data, use_mask):
    probs, counts, mask = data
    mask = mask if use_mask else np.ones_like(mask)
    got = M.per_region_profile_metrics(probs, counts, mask)
    for i in range(len(counts)):
        p, k = _kept(probs, counts, mask, i)
        assert got["profile_pearson"][i] == pytest.approx(stats.pearsonr(p, k)[0], abs=1e-10)
        assert got["profile_spearman"][i] == pytest.approx(stats.spearmanr(p, k)[0], abs=1e-10)
        assert got["profile_jsd"][i] == pytest.approx(jensenshannon(p, k.astype(np.float64) / k.sum(), base=2), abs=1e-8)
        nll = -stats.multinomial.logpmf(k, n=int(k.sum()), p=p)
        assert got["profile_mnll"][i] == pytest.approx(nll, rel=1e-9)
        assert got["total"][i] == pytest.approx(k.sum())


def test_count_metrics_match_scipy():
    rng = np.random.default_rng(2)
    obs = np.log1p(rng.poisson(50, size=40))
    pred = obs + rng.normal(scale=0.5, size=40)
    assert M.count_pearson(pred, obs) == pytest.approx(stats.pearsonr(pred, obs)[0], abs=1e-12)
    assert M.count_spearman(pred, obs) == pytest.approx(stats.spearmanr(pred, obs)[0], abs=1e-12)
    assert M.count_mse(pred, obs) == pytest.approx(np.mean((pred - obs) ** 2))
    counts = rng.poisson(3, size=(5, 2, 8))
    mask = np.ones((5, 8), bool)
    mask[:, :2] = False
    assert np.allclose(M.observed_log_counts(counts, mask), np.log1p(counts[:, :, 2:].sum(axis=(1, 2))))


def test_all_zero_region_is_excluded_and_counted(data):
    probs, counts, mask = data
    counts = counts.copy()
    counts[3] = 0
    per = M.per_region_profile_metrics(probs, counts, mask)
    for name in M.PROFILE_METRICS:
        assert np.isnan(per[name][3]), name
        assert np.isfinite(np.delete(per[name], 3)).all(), name
    s = M.summarize(per, np.zeros(len(counts)) + np.arange(len(counts)), M.observed_log_counts(counts, mask))
    assert s["n_zero_count"] == 1 and s["n_regions"] == len(counts)
    assert s["profile_pearson"] == pytest.approx(np.median(np.delete(per["profile_pearson"], 3)))


def test_constant_prediction(data):
    _, counts, mask = data
    flat = np.full(counts.shape, 1.0 / counts[0].size)
    per = M.per_region_profile_metrics(flat, counts, mask)
    assert np.isnan(per["profile_pearson"]).all() and np.isnan(per["profile_spearman"]).all()
    assert np.isfinite(per["profile_jsd"]).all() and np.isfinite(per["profile_mnll"]).all()
    s = M.summarize(per, np.full(len(counts), 2.0), M.observed_log_counts(counts, mask))
    assert s["profile_pearson"] is None and s["count_pearson"] is None
    assert s["n_undefined_profile_pearson"] == len(counts)
    assert s["count_mse"] is not None and np.isfinite(s["count_mse"])


def test_perfect_prediction_and_bounds(data):
    _, counts, mask = data
    per = M.per_region_profile_metrics(counts / counts.sum(axis=(1, 2), keepdims=True), counts, None)
    assert np.allclose(per["profile_pearson"], 1.0) and np.allclose(per["profile_jsd"], 0.0, atol=1e-7)
    # disjoint supports: JS distance is exactly 1 in base 2
    p = np.zeros((1, 2, 4))
    p[0, 0, 0] = 1
    k = np.zeros((1, 2, 4))
    k[0, 1, 3] = 5
    assert M.profile_jsd(p, k)[0] == pytest.approx(1.0)
    assert np.isinf(M.profile_mnll(p, k)[0])


def test_masked_positions_do_not_matter(data):
    probs, counts, mask = data
    noisy = counts.copy()
    noisy[np.broadcast_to(~mask[:, None], counts.shape)] = 1000  # huge values where masked out
    a = M.all_metrics(probs, np.zeros(len(counts)), counts, mask)
    b = M.all_metrics(probs, np.zeros(len(counts)), noisy, mask)
    for name in M.PROFILE_METRICS:
        assert a[name] == pytest.approx(b[name]), name


def test_mean_over_cell_types():
    a = {"profile_pearson": 0.2, "count_pearson": None, "n_regions": 3}
    b = {"profile_pearson": 0.4, "count_pearson": 0.5, "n_regions": 4}
    out = M.mean_over_cell_types({"x": a, "y": b})
    assert out["profile_pearson"] == pytest.approx(0.3)
    assert out["count_pearson"] == pytest.approx(0.5)
    assert out["profile_jsd"] is None and out["n_regions"] == 7
