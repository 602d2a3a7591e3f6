"""Variable span masking for the masked encoder (vectorised in torch).

Every example masks a fraction ``f ~ Uniform[mask_min, mask_max]`` of its positions, laid down as
contiguous spans. The number of masked positions is exactly ``k = round(f * L)`` (clipped to
``[1, L - 1]``); they form ``m = max(1, round(k / span))`` spans whose lengths are a random
composition of ``k`` (Dirichlet(1, ..., 1) proportions, i.e. roughly geometric lengths with mean
``span``), separated by gaps that are a random composition of the ``L - k`` unmasked positions
(interior gaps at least one position long, so spans never merge). Masks are at base resolution,
0-based; ``True`` = masked.

Written by hand rather than taken from a library: the published recipes (SpanBERT, MAE) draw spans
in Python loops per example; this draws a whole batch with a few tensor operations.

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> m = span_mask(8, 256, 0.15, 0.40, span=16, generator=g)
>>> m.shape, m.dtype
(torch.Size([8, 256]), torch.bool)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Masks:
    """Masks of one batch of (window, cell type) examples; ``True`` = hidden from the model.

    Attributes
    ----------
    seq : bool (N, L)
        Masked sequence positions.
    reads : bool (N, L)
        Masked read positions (all ``True`` for S2R examples).
    cell : bool (N,)
        Examples whose cell type is masked.
    s2r : bool (N,)
        Examples in S2R mode (reads fully masked, sequence and cell type fully visible).
    """

    seq: torch.Tensor
    reads: torch.Tensor
    cell: torch.Tensor
    s2r: torch.Tensor


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _compose(total: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Split integer totals into parts proportional to ``weights`` that sum exactly to ``total``.

    Parameters
    ----------
    total : int64 (N,)
        Non-negative totals.
    weights : float (N, M)
        Positive weights (ignored where ``valid`` is False).
    valid : bool (N, M)
        Which of the M parts exist for each row (at least one per row).

    Returns
    -------
    int64 (N, M)
        Non-negative parts, zero where not valid, each row summing to ``total`` (largest-remainder
        rounding).
    """
    w = torch.where(valid, weights, torch.zeros_like(weights))
    share = total[:, None].to(w.dtype) * w / w.sum(1, keepdim=True).clamp_min(1e-12)
    base = share.floor().long()
    rest = total - base.sum(1)  # 0 <= rest < number of valid parts
    frac = torch.where(valid, share - base, torch.full_like(share, -1.0))
    rank = frac.argsort(dim=1, descending=True).argsort(dim=1)
    return base + (rank < rest[:, None]).long()


def span_mask(
    n: int,
    length: int,
    mask_min: float,
    mask_max: float,
    span: int = 16,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Contiguous-span masks with a per-example masked fraction drawn from ``[mask_min, mask_max]``.

    Parameters
    ----------
    n, length : int
        Number of examples and positions per example.
    mask_min, mask_max : float
        Bounds of the masked fraction, ``0 < mask_min <= mask_max < 1``.
    span : int
        Mean span length in positions.
    generator : torch.Generator, optional
        For reproducible masks (must live on ``device``).

    Returns
    -------
    bool (n, length)
        ``True`` at masked positions.
    """
    if not (0 < mask_min <= mask_max < 1):
        raise ValueError(f"need 0 < mask_min <= mask_max < 1, got {mask_min}, {mask_max}")
    if length < 2:
        return torch.zeros(n, length, dtype=torch.bool, device=device)
    frac = mask_min + (mask_max - mask_min) * _uniform((n,), generator, device)
    k = (frac * length).round().long().clamp(1, length - 1)  # masked positions per example
    m = (k.double() / max(span, 1)).round().long().clamp_min(1)
    m = torch.minimum(m, torch.minimum(k, length - k + 1))  # room for m spans and m - 1 gaps >= 1
    big_m = int(m.max())
    j = torch.arange(big_m, device=device)
    span_valid = j[None, :] < m[:, None]
    # span lengths: >= 1 each, summing to k
    spans = 1 + _compose(k - m, -torch.log(_uniform((n, big_m), generator, device).clamp_min(1e-12)), span_valid)
    spans = torch.where(span_valid, spans, torch.zeros_like(spans))
    # gaps: m + 1 of them; the m - 1 interior ones >= 1; all sum to length - k
    jg = torch.arange(big_m + 1, device=device)
    gap_valid = jg[None, :] <= m[:, None]
    interior = (jg[None, :] >= 1) & (jg[None, :] < m[:, None])
    gaps = interior.long() + _compose(
        length - k - (m - 1), -torch.log(_uniform((n, big_m + 1), generator, device).clamp_min(1e-12)), gap_valid
    )
    # span j starts after gaps[0..j] and spans[0..j-1]
    starts = gaps[:, :big_m].cumsum(1) + torch.cat([spans.new_zeros(n, 1), spans[:, :-1].cumsum(1)], 1)
    ends = starts + spans
    delta = torch.zeros(n, length + 1, dtype=torch.long, device=device)
    delta.scatter_add_(1, torch.where(span_valid, starts, length), span_valid.long())
    delta.scatter_add_(1, torch.where(span_valid, ends, length), -span_valid.long())
    return delta[:, :length].cumsum(1) > 0


def draw_masks(
    n: int,
    length: int,
    mask_min: float,
    mask_max: float,
    span: int = 16,
    joint: bool = True,
    cell_mask_prob: float = 0.15,
    s2r_prob: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Masks:
    """All masks of one training batch (see :class:`Masks`).

    S2R examples (probability ``s2r_prob``) have the reads fully masked and the sequence and cell
    type fully visible, exactly as the model is used for prediction. The other examples get span
    masks on sequence and reads — the same spans when ``joint``, independent draws otherwise — and
    their cell type is masked with probability ``cell_mask_prob``. (The cell type of an S2R example
    is never masked: with no reads it could not be predicted, and the reads could not be either.)
    """
    s2r = _uniform((n,), generator, device) < s2r_prob
    seq = span_mask(n, length, mask_min, mask_max, span, generator, device)
    reads = seq.clone() if joint else span_mask(n, length, mask_min, mask_max, span, generator, device)
    seq = seq & ~s2r[:, None]
    reads = reads | s2r[:, None]
    cell = (_uniform((n,), generator, device) < cell_mask_prob) & ~s2r
    return Masks(seq=seq, reads=reads, cell=cell, s2r=s2r)


def masks_from_config(model_cfg, n: int, length: int, generator=None, device=None) -> Masks:
    """:func:`draw_masks` with the settings of an ``EncoderModel`` config section."""
    return draw_masks(
        n, length, model_cfg.mask_min, model_cfg.mask_max, model_cfg.span, model_cfg.joint_mask,
        model_cfg.cell_mask_prob, model_cfg.s2r_prob, generator=generator, device=device,
    )


def run_lengths(mask: torch.Tensor) -> list[list[int]]:
    """Lengths of the runs of ``True`` in each row of a bool (N, L) mask (for tests and reports)."""
    out = []
    for row in mask.cpu().numpy():
        d = [0, *row.astype(int).tolist(), 0]
        edges = [i for i in range(1, len(d)) if d[i] != d[i - 1]]
        out.append([b - a for a, b in zip(edges[::2], edges[1::2])])
    return out
