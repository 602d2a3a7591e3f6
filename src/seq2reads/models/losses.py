"""Losses of the sequence-to-read models: profile shape and total counts (SPEC.md, "Losses").

- :func:`multinomial_nll`: negative log-likelihood of the observed stranded read counts under a
  multinomial whose probabilities are ``softmax(profile_logits)`` over both strands jointly, one
  distribution per (window, cell type). Masked positions are removed from the distribution and
  from the counts (the softmax renormalises over the kept positions).
- :func:`log_count_mse`: squared error between the predicted ``log(1 + total)`` and the observed
  ``log1p`` of the masked total over both strands.
- :func:`cell_share_nll`: multinomial NLL of how a window's reads split between the cell types,
  with probabilities ``softmax_c(log_counts)`` (multi-cell-type models only).
- :func:`count_weight_from_data`: the weight of the count loss, one per cell type.

The total loss is ``mean_c [ NLL_c + w_c * MSE_c ] + s * share_NLL / C`` (averaged over windows;
``s`` = ``model.cell_share_weight``, default 0; always 0 with one cell type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch




def multinomial_nll(
    profile_logits: torch.Tensor,
    counts: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduce: bool = True,
) -> torch.Tensor:
    """Multinomial negative log-likelihood of stranded counts, per window and cell type.

    Parameters
    ----------
    profile_logits : Tensor (N, C, 2, L)
        Unnormalised log-probabilities; one softmax over both strands per (window, cell type).
    counts : Tensor (N, C, 2, L)
        Observed read counts (>= 0).
    mask : Tensor bool (N, L), optional
        True where a position counts; masked positions are dropped from the softmax and counts.
    reduce : bool
        Mean over windows and cell types (default) or the (N, C) matrix.

    Returns
    -------
    Tensor
        NLL in nats per window (including the multinomial coefficient, so 0 is a perfect fit of a
        single-read window), averaged over (N, C) when ``reduce``.
    """
    logits = profile_logits.float()
    y = counts.float()
    if mask is not None:
        mask = mask.bool()
        y = y.masked_fill(~mask[:, None, None, :], 0.0)
        # A window with every position masked would give a softmax over nothing (NaN): keep its
        # logits whole; its counts are all zero, so it contributes exactly 0.
        keep = mask | ~mask.any(dim=-1, keepdim=True)
        logits = logits.masked_fill(~keep[:, None, None, :], float("-inf"))
    N, C = logits.shape[:2]
    logp = torch.log_softmax(logits.reshape(N, C, -1), dim=-1)
    y = y.reshape(N, C, -1)
    # 0 * -inf is NaN: masked positions have zero counts and contribute nothing.
    log_prod_p = torch.where(y > 0, y * logp, torch.zeros_like(logp)).sum(-1)
    total = y.sum(-1)
    log_coef = torch.lgamma(total + 1) - torch.lgamma(y + 1).sum(-1)
    nll = -(log_coef + log_prod_p)
    return nll.mean() if reduce else nll


def masked_total(counts: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total counts per (window, cell type) over both strands and unmasked positions.

    ``counts`` (N, C, 2, L), ``mask`` (N, L) bool -> (N, C).
    """
    y = counts.float()
    if mask is not None:
        y = y * mask[:, None, None, :].to(y.dtype)
    return y.sum(dim=(-1, -2))


def log_count_mse(
    log_counts: torch.Tensor,
    counts: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduce: bool = True,
) -> torch.Tensor:
    """Squared error of predicted ``log(1 + total)`` against the observed masked total.

    Parameters
    ----------
    log_counts : Tensor (N, C)
        Predicted ``log(1 + total count)`` per window and cell type.
    counts : Tensor (N, C, 2, L)
        Observed read counts.
    mask : Tensor bool (N, L), optional
        Positions to include in the total.
    reduce : bool
        Mean over (N, C) (default) or the (N, C) matrix.
    """
    target = torch.log1p(masked_total(counts, mask))
    err = (log_counts.float() - target) ** 2
    return err.mean() if reduce else err


def cell_share_nll(log_counts: torch.Tensor, counts: torch.Tensor, mask: torch.Tensor | None = None,
                   reduce: bool = True) -> torch.Tensor:
    """Multinomial NLL of the split of a window's reads between cell types.

    The observed totals ``y_c`` (both strands, unmasked positions) are scored against
    ``softmax_c(log_counts)``. Why (not in BPNet): the log-count MSE weighs every window alike
    however many reads it has and mostly teaches the level that all cell types share; this term,
    like the profile NLL, grows with the reads and only sees the differences between cell types,
    which is where cell-type-specific regulators show. bpnet-lite gets a similar signal from its
    one softmax over every cell type's tracks. Measured (simulator version 1 data): it sharpens the
    cell-type-specific count responses but lowered test count Pearson at 30 epochs (0.44 -> 0.37),
    so ``model.cell_share_weight`` defaults to 0 (off).

    Parameters
    ----------
    log_counts : Tensor (N, C)
        Predicted ``log(1 + total)``.
    counts : Tensor (N, C, 2, L)
        Observed reads.
    mask : Tensor bool (N, L), optional

    Returns
    -------
    Mean over windows (nats per window), or the (N,) values with ``reduce=False``.
    """
    y = masked_total(counts, mask)
    logp = torch.log_softmax(log_counts.float(), dim=-1)
    total = y.sum(-1)
    nll = -(torch.lgamma(total + 1) - torch.lgamma(y + 1).sum(-1) + (y * logp).sum(-1))
    return nll.mean() if reduce else nll


def combined_loss(
    profile_logits: torch.Tensor,
    log_counts: torch.Tensor,
    counts: torch.Tensor,
    mask: torch.Tensor | None,
    count_weight: torch.Tensor,
    window_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mean_c [NLL_c + w_c v_n MSE_c]`` and its two parts (each averaged over windows, cell types).

    ``count_weight`` is a (C,) tensor (or a scalar); ``window_weight`` (N,) an optional factor
    ``v_n`` on each window's count term (default 1). Returns ``(loss, profile_nll, count_mse)``,
    the last unweighted.
    """
    nll = multinomial_nll(profile_logits, counts, mask, reduce=False)  # (N, C)
    mse = log_count_mse(log_counts, counts, mask, reduce=False)  # (N, C)
    w = torch.as_tensor(count_weight, dtype=nll.dtype, device=nll.device)
    if window_weight is not None:
        w = w * window_weight.to(nll.dtype)[:, None]
    loss = (nll + w * mse).mean()
    return loss, nll.mean(), mse.mean()


def count_weight_from_data(count_stats, n_cell_types: int | None = None) -> list[float]:
    """Count-loss weight per cell type from the training data.

    Rule (ChromBPNet / bpnet-lite): ``w_c = median_c / 10``, where ``median_c`` is the median total
    count (both strands, output window) of the training peaks of cell type ``c``; floored at 1.
    Why: the profile NLL of a window grows roughly in proportion to its read count while the
    log-count MSE does not, so dividing the typical count by 10 puts the two terms on a similar
    scale (ChromBPNet's choice); the floor keeps the count head learning on very shallow data.

    Parameters
    ----------
    count_stats
        The dataset's ``count_stats`` attribute: per cell type a mapping with ``median`` (and
        ``mean``), given as a list in sample order, a dict name -> stats, or a dict of lists
        ``{"median": [...], ...}``.
    n_cell_types : int, optional
        Expected number of cell types (checked).

    Returns
    -------
    list of float, one weight per cell type.
    """
    medians = _medians(count_stats)
    if n_cell_types is not None and len(medians) != n_cell_types:
        raise ValueError(f"count_stats has {len(medians)} cell types, expected {n_cell_types}")
    return [max(1.0, float(m) / 10.0) for m in medians]


def _medians(count_stats) -> list[float]:
    if isinstance(count_stats, Mapping):
        if "median" in count_stats and isinstance(count_stats["median"], Sequence):
            return [float(v) for v in count_stats["median"]]
        if "median" in count_stats:
            return [float(count_stats["median"])]
        return [float(_pick(v)) for v in count_stats.values()]
    return [float(_pick(v)) for v in count_stats]


def _pick(stats) -> float:
    if isinstance(stats, Mapping):
        return stats.get("median", stats.get("mean", 0.0))
    return float(stats)
