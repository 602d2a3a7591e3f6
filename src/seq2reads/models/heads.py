"""Output heads of the masked encoder and their masked-reconstruction losses.

Heads map the final token states ``(N, T, D)`` back to base resolution (un-patching: a linear
layer to ``patch * channels`` values per token, reshaped to ``(N, channels, T * patch)``) or pool
them over tokens (log total count, cell type).

Losses are computed on masked positions only:

- reads, profile: the predicted profile is the softmax of the logits over the masked (and
  loss-mask kept) positions of both strands, the observed one is the counts there normalised to sum
  to one. ``rms`` (default) is the root mean square of their difference in units of the uniform
  level ``1/n`` (``n`` kept positions x strands), i.e. ``sqrt(mean over examples of n * ||p - q||^2)``
  (0 = perfect; a flat prediction of a single-position peak gives about ``sqrt(n)``);
  ``multinomial`` the multinomial NLL of the masked counts (nats per example, constant dropped). Examples with no observed reads on their masked positions are skipped.
- reads, count: squared error between the predicted and observed ``log(1 + total count)`` of the
  central output window (loss-mask kept positions), on every example.
- sequence: cross-entropy over A C G T at masked positions holding a base (N excluded).
- cell type: cross-entropy over cell types on examples whose cell type is masked.

Each returns ``(loss, n)`` where ``n`` counts the contributing examples/positions; ``n == 0``
gives a zero loss with no gradient path, which the caller (the balancer) skips.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TokenHead(nn.Module):
    """Linear per-token head un-patched to base resolution: ``(N, T, D) -> (N, channels, T * patch)``."""

    def __init__(self, d_model: int, channels: int, patch: int) -> None:
        super().__init__()
        self.channels, self.patch = channels, patch
        self.linear = nn.Linear(d_model, channels * patch)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, _ = h.shape
        y = self.linear(h).view(n, t, self.patch, self.channels)
        return y.permute(0, 3, 1, 2).reshape(n, self.channels, t * self.patch)


class PooledHead(nn.Module):
    """Mean over tokens, optionally batch-normalised (``norm``), then linear: ``(N, T, D) -> (N, out)``.

    ``norm`` is the CNN's ``count_norm`` (see :mod:`seq2reads.models.bpnet`): token averages vary
    little between windows next to their common level, which slows a linear head on them. A
    training batch of one example uses the running statistics. ``tokens = (t0, t1)`` averages only
    tokens ``[t0, t1)`` (default: all); ``scales = k`` also their centred half, quarter, ...
    (:func:`nested_means`; the linear map then reads ``k * D`` values).
    """

    def __init__(self, d_model: int, out: int, norm: bool = False, tokens: tuple[int, int] | None = None,
                 scales: int = 1) -> None:
        super().__init__()
        self.scales = int(scales)
        self.norm = nn.BatchNorm1d(d_model * self.scales) if norm else None
        self.linear = nn.Linear(d_model * self.scales, out)
        self.tokens = tokens

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = nested_means(h if self.tokens is None else h[:, self.tokens[0] : self.tokens[1]], self.scales, dim=1)
        return self.linear(pooled_batch_norm(x, self.norm) if self.norm is not None else x)


def check_scales(scales: int, length: int) -> None:
    """Raise ValueError unless ``1 <= scales <= length.bit_length()`` (each of the nested windows of
    :func:`nested_means` keeps at least one position)."""
    if not 1 <= scales <= int(length).bit_length():
        raise ValueError(f"count_scales must be in 1..{int(length).bit_length()} for {length} positions, got {scales}")


def nested_means(h: torch.Tensor, scales: int, dim: int = -1) -> torch.Tensor:
    """Means of ``h`` along ``dim`` over its whole length and over its centred half, quarter, ...
    (``scales`` nested windows of ``L >> k`` positions starting at ``(L - (L >> k)) // 2``),
    concatenated window by window on the feature axis: ``(N, F, L) -> (N, scales * F)`` (``dim=-1``)
    or ``(N, T, D) -> (N, scales * D)`` (``dim=1``).

    Why: a mean over a window of translation-equivariant features is a bag of features that cannot
    say where a motif sits; the nested windows let a linear head weight the centre (where the
    windows' promoters are) more than the flanks, and are symmetric under reverse complement (to
    within a position when ``L - (L >> k)`` is odd).
    """
    L = h.shape[dim]
    check_scales(scales, L)
    out = []
    for k in range(scales):
        w = L >> k
        out.append(h.narrow(dim, (L - w) // 2, w).mean(dim))
    return out[0] if scales == 1 else torch.cat(out, dim=-1)


def box_halves(length: int, step: int) -> list[int]:
    """Half-widths of :func:`box_means`' windows over ``length`` positions: ``step, 2 step, ...``
    below ``length // 2``, then the whole length (``[length]`` when ``step >= length // 2``)."""
    if step <= 0:
        raise ValueError(f"count_box must be > 0, got {step}")
    return [*range(step, length // 2, step), length]


def box_means(h: torch.Tensor, step: int, dim: int = -1) -> torch.Tensor:
    """Means of ``h`` along ``dim`` over centred windows whose half-width grows by ``step``
    positions (``[c - z, c + z)`` with ``c = L // 2`` for each ``z`` of :func:`box_halves`, the
    last window being all ``L`` positions), concatenated window by window on the feature axis:
    ``(N, F, L) -> (N, len(box_halves(L, step)) * F)``.

    Why (not in BPNet): a linear head on these means weights every position by a step function
    of its distance from the centre with a step every ``step`` positions, so it can learn how far
    from the promoter a motif still acts. :func:`nested_means` halves its windows, so its
    steps are at ``L / 4, L / 8, ...`` and a zone of, say, ±96 bp falls between two of them. The
    windows are symmetric about the centre (for even ``L``), so reverse complements pool alike.
    """
    L = h.shape[dim]
    c = L // 2
    out = [h.mean(dim) if z >= L else h.narrow(dim, c - z, 2 * z).mean(dim) for z in box_halves(L, step)]
    return torch.cat(out, dim=-1)


def pooled_batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """``bn`` on pooled features ``(N, F)``; a training batch of one uses the running statistics
    (``nn.BatchNorm1d`` would raise: one value per channel has no batch variance)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                        bn.training and x.shape[0] > 1, bn.momentum, bn.eps)


def _zero(ref: torch.Tensor) -> tuple[torch.Tensor, int]:
    return ref.new_zeros(()), 0


def masked_log_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the kept positions of both strands jointly.

    Parameters
    ----------
    logits : float (N, 2, L)
    keep : bool (N, L) or (N, 2, L)

    Returns
    -------
    float (N, 2, L)
        Log-probabilities; ``-inf`` where not kept (rows with nothing kept are all ``-inf``).
    """
    keep = keep.unsqueeze(1).expand_as(logits) if keep.dim() == 2 else keep
    x = logits.float().masked_fill(~keep, float("-inf")).flatten(1)
    return torch.log_softmax(x, dim=1).view_as(logits)


def profile_loss(
    logits: torch.Tensor, counts: torch.Tensor, keep: torch.Tensor, kind: str = "rms"
) -> tuple[torch.Tensor, int]:
    """Profile reconstruction loss on the kept (masked) positions.

    Parameters
    ----------
    logits : float (N, 2, L)
        Predicted profile logits.
    counts : float (N, 2, L)
        Observed per-base counts (>= 0).
    keep : bool (N, L)
        Positions that count: masked reads AND the dataset's loss mask.
    kind : {"rms", "multinomial"}

    Returns
    -------
    (scalar loss, number of contributing examples)
    """
    keep3 = keep.unsqueeze(1).expand_as(counts)
    y = torch.where(keep3, counts.float(), torch.zeros_like(counts, dtype=torch.float32))
    total = y.flatten(1).sum(1)
    ok = total > 0
    n = int(ok.sum())
    if n == 0:
        return _zero(logits)
    logp = masked_log_softmax(logits[ok], keep[ok])
    y = y[ok]
    if kind == "multinomial":
        nll = -(y * torch.where(keep3[ok], logp, torch.zeros_like(logp))).flatten(1).sum(1)
        return nll.mean(), n
    if kind != "rms":
        raise ValueError(f"unknown read loss {kind!r}: use 'rms' or 'multinomial'")
    p = logp.exp()
    q = y / total[ok].view(-1, 1, 1)
    # In units of the uniform level 1/n (n kept entries): mean over kept entries of ((p - q) n)^2
    # = n * ||p - q||^2. Without the factor the loss and its gradients shrink as 1/n with the
    # window (softmax Jacobian ~ p ~ 1/n) and fall outside the balancing's clamp.
    n_keep = keep3[ok].flatten(1).sum(1).float()
    sq = n_keep * ((p - q) ** 2).flatten(1).sum(1)
    return torch.sqrt(sq.mean() + 1e-12), n


def count_loss(log_count: torch.Tensor, counts: torch.Tensor, keep: torch.Tensor, output_len: int,
               weight: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Squared error of ``log(1 + total)`` over the central ``output_len`` positions.

    Parameters
    ----------
    log_count : float (N,)
    counts : float (N, 2, L)
    keep : bool (N, L)
        The dataset's loss mask (excluded positions do not count towards the total).
    weight : float (N,), optional
        A factor on each example's squared error (the mean is still over the N examples).
    """
    start = (counts.shape[-1] - output_len) // 2
    c = counts[..., start : start + output_len].float()
    k = keep[..., start : start + output_len].unsqueeze(1)
    target = torch.log1p((c * k).flatten(1).sum(1))
    err = (log_count.float() - target) ** 2
    if weight is not None:
        err = err * weight.to(err.dtype)
    return err.mean(), len(target)


def sequence_loss(seq_logits: torch.Tensor, seq: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy over A C G T at masked positions holding a base.

    Parameters
    ----------
    seq_logits : float (N, 4, L)
    seq : float (N, 4, L)
        One-hot input (N bases all-zero).
    masked : bool (N, L)
    """
    keep = masked & (seq.sum(1) > 0.5)
    n = int(keep.sum())
    if n == 0:
        return _zero(seq_logits)
    logits = seq_logits.float().permute(0, 2, 1)[keep]  # (n, 4)
    return F.cross_entropy(logits, seq.permute(0, 2, 1)[keep].argmax(1)), n


def cell_loss(cell_logits: torch.Tensor, cell: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy over cell types on the examples whose cell type is masked.

    Parameters
    ----------
    cell_logits : float (N, C)
    cell : float (N, C)
        One-hot true cell types.
    masked : bool (N,)
    """
    n = int(masked.sum())
    if n == 0 or cell_logits.shape[1] < 2:
        return _zero(cell_logits)
    return F.cross_entropy(cell_logits[masked].float(), cell[masked].argmax(1)), n
