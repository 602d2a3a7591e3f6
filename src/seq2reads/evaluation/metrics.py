"""Profile and count metrics of SPEC.md, vectorised over regions (numpy, float64).

Profile metrics compare, per region, the observed stranded counts with the predicted profile
distribution over **both strands' positions jointly** (the flattened ``(2, L)`` profile, as the
model's softmax is taken). They return one value per region; :func:`summarize` takes the median.
Count metrics compare ``log(1 + total count)`` across regions.

Conventions
-----------
- ``probs``: predicted probabilities, shape ``(N, *S)`` (e.g. ``(N, 2, L)``), non-negative; they are
  renormalised over the kept (unmasked) positions, so logits → ``softmax`` first (see
  :func:`softmax_profile`) or pass rates/average profiles directly.
- ``counts``: observed per-base read counts, same shape as ``probs``, >= 0.
- ``mask``: optional bool, True where a position counts; shape ``(N, *S)`` or a trailing-aligned
  shape such as ``(N, L)`` (broadcast over the strand axis). Excluded positions are dropped from
  every metric, including totals.
- Regions whose kept counts sum to zero have no observed profile: their profile metrics are NaN
  (excluded from medians) and :func:`profile_summary` counts them.
- ``profile_jsd`` is the Jensen-Shannon **distance** (square root of the divergence) with base-2
  logarithms, so it lies in [0, 1] (as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``).
- ``profile_mnll`` is the multinomial negative log-likelihood in nats of the observed counts given
  the region's total and the predicted probabilities (``-scipy.stats.multinomial.logpmf``), per region.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, xlogy
from scipy.stats import rankdata

PROFILE_METRICS = ("profile_mnll", "profile_jsd", "profile_pearson", "profile_spearman")
COUNT_METRICS = ("count_pearson", "count_spearman", "count_mse")
METRICS = PROFILE_METRICS + COUNT_METRICS

# Relative tolerance below which a row's spread counts as zero (constant → correlation undefined).
_CONST_RTOL = 1e-9


# -- helpers -----------------------------------------------------------------------------------
def softmax_profile(logits: np.ndarray, axis_start: int = 1) -> np.ndarray:
    """Probabilities from profile logits, softmax over all axes from ``axis_start`` on jointly.

    Parameters
    ----------
    logits : array (N, ..., 2, L)
        Profile logits; e.g. ``(N, C, 2, L)`` with ``axis_start=2`` gives one distribution per
        region and cell type over both strands.
    """
    x = np.asarray(logits, dtype=np.float64)
    shape = x.shape
    flat = x.reshape(*shape[:axis_start], -1)
    flat = flat - flat.max(axis=-1, keepdims=True)
    e = np.exp(flat)
    return (e / e.sum(axis=-1, keepdims=True)).reshape(shape)


def _flatten(probs, counts, mask):
    """(N, P) float64 probs/counts and bool mask, mask broadcast over leading non-region axes."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[0]
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != counts.shape:
        raise ValueError(f"probs {probs.shape} and counts {counts.shape} must have the same shape")
    if mask is None:
        m = np.ones(counts.shape, dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool)
        while m.ndim < counts.ndim:  # (N, L) -> (N, 1, L): same mask on every strand
            m = m[:, None]
        m = np.broadcast_to(m, counts.shape)
    return probs.reshape(n, -1), counts.reshape(n, -1), m.reshape(n, -1)


def _renormalise(p, m):
    p = np.where(m, np.clip(p, 0.0, None), 0.0)
    s = p.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, p / s, np.nan)


def _masked_pearson_rows(x, y, m):
    """Pearson r per row over the positions where ``m`` is True; NaN when either side is constant."""
    w = m.astype(np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * x).sum(axis=1) / n
        my = (w * y).sum(axis=1) / n
        dx = np.where(m, x - mx[:, None], 0.0)
        dy = np.where(m, y - my[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        syy = (dy * dy).sum(axis=1)
        sxy = (dx * dy).sum(axis=1)
        r = sxy / np.sqrt(sxx * syy)
    scale_x = np.where(m, np.abs(x), 0.0).max(axis=1) if x.size else np.zeros(len(x))
    scale_y = np.where(m, np.abs(y), 0.0).max(axis=1) if y.size else np.zeros(len(y))
    const = (np.sqrt(sxx) <= _CONST_RTOL * np.maximum(scale_x, 1e-300) * np.sqrt(np.maximum(n, 1))) | (
        np.sqrt(syy) <= _CONST_RTOL * np.maximum(scale_y, 1e-300) * np.sqrt(np.maximum(n, 1))
    )
    r = np.where(const | (n < 2), np.nan, r)
    return np.clip(r, -1.0, 1.0)


def _masked_ranks(x, m):
    """Average ranks (ties share their mean rank) per row among kept positions.

    Excluded positions are set to +inf before ranking, so they take the top ranks and leave the
    kept positions' ranks exactly as if they had been removed (rows differ in their kept count,
    so dropping them would break vectorisation).
    """
    return rankdata(np.where(m, x, np.inf), method="average", axis=1)


# -- profile metrics (one value per region) ---------------------------------------------------
def profile_mnll(probs, counts, mask=None) -> np.ndarray:
    """Multinomial negative log-likelihood (nats) per region, shape (N,).

    ``-log Multinomial(counts | n = sum(counts), p = probs)`` over kept positions; NaN for
    regions without counts.
    """
    p, k, m = _flatten(probs, counts, mask)
    p = _renormalise(p, m)
    k = np.where(m, k, 0.0)
    total = k.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        loglik = gammaln(total + 1) - gammaln(k + 1).sum(axis=1) + np.where(m, xlogy(k, p), 0.0).sum(axis=1)
    return np.where(total > 0, -loglik, np.nan)


def profile_jsd(probs, counts, mask=None) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) per region between the observed normalised
    profile and the predicted probabilities, shape (N,); NaN for regions without counts."""
    p, k, m = _flatten(probs, counts, mask)
    p = _renormalise(p, m)
    q = _renormalise(k, m)
    mid = 0.5 * (p + q)
    with np.errstate(invalid="ignore", divide="ignore"):
        kl_p = np.where(m & (p > 0), xlogy(p, p) - xlogy(p, mid), 0.0).sum(axis=1)
        kl_q = np.where(m & (q > 0), xlogy(q, q) - xlogy(q, mid), 0.0).sum(axis=1)
    div = np.clip(0.5 * (kl_p + kl_q) / np.log(2.0), 0.0, 1.0)
    ok = np.isfinite(p).all(axis=1) & np.isfinite(q).all(axis=1)
    return np.where(ok, np.sqrt(div), np.nan)


def profile_pearson(probs, counts, mask=None) -> np.ndarray:
    """Pearson r per region between predicted probabilities and observed counts over both
    strands' kept positions jointly, shape (N,); NaN for zero-count or constant regions."""
    p, k, m = _flatten(probs, counts, mask)
    r = _masked_pearson_rows(p, k, m)
    return np.where(np.where(m, k, 0.0).sum(axis=1) > 0, r, np.nan)


def profile_spearman(probs, counts, mask=None) -> np.ndarray:
    """Spearman rho per region (Pearson of average ranks over kept positions), shape (N,);
    NaN for zero-count or constant regions."""
    p, k, m = _flatten(probs, counts, mask)
    r = _masked_pearson_rows(_masked_ranks(p, m), _masked_ranks(k, m), m)
    return np.where(np.where(m, k, 0.0).sum(axis=1) > 0, r, np.nan)


def observed_log_counts(counts, mask=None) -> np.ndarray:
    """``log(1 + total kept counts)`` per region, shape (N,), from counts (N, *S)."""
    _, k, m = _flatten(np.zeros_like(np.asarray(counts, dtype=np.float64)), counts, mask)
    return np.log1p(np.where(m, k, 0.0).sum(axis=1))


# -- count metrics (one value across regions) ------------------------------------------------
def _finite_pair(pred, obs):
    pred = np.asarray(pred, dtype=np.float64).ravel()
    obs = np.asarray(obs, dtype=np.float64).ravel()
    ok = np.isfinite(pred) & np.isfinite(obs)
    return pred[ok], obs[ok]


def count_pearson(pred_log_counts, obs_log_counts) -> float:
    """Pearson r across regions between predicted and observed ``log(1 + total)``; NaN if either
    is constant or fewer than 2 regions."""
    x, y = _finite_pair(pred_log_counts, obs_log_counts)
    if len(x) < 2:
        return float("nan")
    return float(_masked_pearson_rows(x[None], y[None], np.ones((1, len(x)), bool))[0])


def count_spearman(pred_log_counts, obs_log_counts) -> float:
    """Spearman rho across regions between predicted and observed ``log(1 + total)``."""
    x, y = _finite_pair(pred_log_counts, obs_log_counts)
    if len(x) < 2:
        return float("nan")
    return float(_masked_pearson_rows(rankdata(x)[None], rankdata(y)[None], np.ones((1, len(x)), bool))[0])


def count_mse(pred_log_counts, obs_log_counts) -> float:
    """Mean squared error across regions of ``log(1 + total)`` (predicted vs observed)."""
    x, y = _finite_pair(pred_log_counts, obs_log_counts)
    return float(np.mean((x - y) ** 2)) if len(x) else float("nan")


# -- summaries ---------------------------------------------------------------------------------
PROFILE_FUNCS = {
    "profile_mnll": profile_mnll,
    "profile_jsd": profile_jsd,
    "profile_pearson": profile_pearson,
    "profile_spearman": profile_spearman,
}
COUNT_FUNCS = {"count_pearson": count_pearson, "count_spearman": count_spearman, "count_mse": count_mse}


def per_region_profile_metrics(probs, counts, mask=None) -> dict[str, np.ndarray]:
    """All four profile metrics per region, plus ``total`` (kept counts per region), each (N,)."""
    out = {name: f(probs, counts, mask) for name, f in PROFILE_FUNCS.items()}
    _, k, m = _flatten(probs, counts, mask)
    out["total"] = np.where(m, k, 0.0).sum(axis=1)
    return out


def summarize(per_region: dict[str, np.ndarray], pred_log_counts, obs_log_counts) -> dict[str, float | int | None]:
    """SPEC metric dict from per-region profile values and per-region log counts.

    Profile metrics are the median over regions with counts (NaNs from zero-count or constant
    regions excluded); count metrics are computed across all regions. Also reports
    ``n_regions``, ``n_zero_count`` (regions excluded from profile metrics for lack of reads) and
    ``n_undefined_profile_pearson`` (regions with counts whose correlation is undefined, e.g. a
    constant prediction). Undefined values are ``None`` (JSON null).
    """
    total = np.asarray(per_region["total"])
    out: dict[str, float | int | None] = {}
    for name in PROFILE_METRICS:
        v = np.asarray(per_region[name], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = float(np.median(v)) if len(v) else None
    for name, f in COUNT_FUNCS.items():
        val = f(pred_log_counts, obs_log_counts)
        out[name] = val if np.isfinite(val) else None
    pear = np.asarray(per_region["profile_pearson"], dtype=np.float64)
    out["n_regions"] = int(len(total))
    out["n_zero_count"] = int((total <= 0).sum())
    out["n_undefined_profile_pearson"] = int(((total > 0) & ~np.isfinite(pear)).sum())
    return out


def all_metrics(probs, pred_log_counts, counts, mask=None) -> dict[str, float | int | None]:
    """SPEC metrics for one cell type over N regions.

    Parameters
    ----------
    probs : array (N, 2, L)
        Predicted profile probabilities (both strands jointly sum to one).
    pred_log_counts : array (N,)
        Predicted ``log(1 + total count)`` of the window.
    counts : array (N, 2, L)
        Observed per-base counts.
    mask : bool array (N, L) or (N, 2, L), optional
        True where a position counts.
    """
    per = per_region_profile_metrics(probs, counts, mask)
    return summarize(per, pred_log_counts, observed_log_counts(counts, mask))


def mean_over_cell_types(per_cell_type: dict[str, dict]) -> dict[str, float | None]:
    """The ``overall`` entry: each SPEC metric averaged over cell types (undefined ones skipped);
    ``n_regions`` etc. summed."""
    out: dict[str, float | int | None] = {}
    for name in METRICS:
        vals = [d[name] for d in per_cell_type.values() if d.get(name) is not None]
        out[name] = float(np.mean(vals)) if vals else None
    for name in ("n_regions", "n_zero_count", "n_undefined_profile_pearson"):
        out[name] = int(sum(d.get(name, 0) for d in per_cell_type.values()))
    return out
