"""Single-output wrappers around a seq2reads model, for attribution methods (tangermeme, IG, ISM).

Every seq2reads model maps one-hot DNA ``(N, 4, L_in)`` to ``(profile_logits (N, C, 2, L_out),
log_counts (N, C))``. Attribution methods need one scalar per example, so these modules select:

- ``count``: ``log_counts[:, c]`` — predicted log(1 + total reads) of cell type ``c``;
- ``count_specific``: ``log_counts[:, c] - mean_{c' != c} log_counts[:, c']`` — how much more cell
  type ``c`` is predicted to transcribe here than the others (log fold, natural log). Motifs that act
  the same in every cell type cancel, so the attributions (and TF-MoDISco on them) show what is
  specific to ``c``: positive for features that raise its counts relative to the others, negative
  for those that raise the others'. Needs a model that predicts two or more cell types per pass;
- ``profile_plus`` / ``profile_minus``: the softmax-weighted logit sum over the positions of one
  strand, ``sum_j softmax(z)_j.detach() * z_j`` with the softmax taken over both strands jointly
  (the profile distribution of the model). Detaching the weights makes the target's gradient the
  logits' gradient weighted by the predicted shape — the target used by bpnet-lite and chromBPNet.

All wrappers return ``(N, 1)`` (tangermeme's ``deep_lift_shap`` wants ``(N, n_targets)``);
:class:`AllTargets` returns ``(N, T)`` for several at once (ISM, convergence deltas).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

TARGETS = ("count", "count_specific", "profile_plus", "profile_minus")
"""Target names used in file names: ``{cell}.{target}.npz``."""

STRAND = {"profile_plus": 0, "profile_minus": 1}


def expand_targets(names: Sequence[str]) -> list[str]:
    """Config target names (``count``, ``profile``) → per-strand target names (:data:`TARGETS`)."""
    out: list[str] = []
    for n in names:
        for t in (("profile_plus", "profile_minus") if n == "profile" else (n,)):
            if t not in TARGETS:
                raise ValueError(f"unknown attribution target {t!r}")
            if t not in out:
                out.append(t)
    return out


def profile_target(logits: torch.Tensor, strand: int) -> torch.Tensor:
    """Softmax-weighted logit sum of one strand.

    Parameters
    ----------
    logits : Tensor (N, 2, L)
        Profile logits of one cell type (both strands).
    strand : int
        0 = plus, 1 = minus.

    Returns
    -------
    Tensor (N,)
    """
    n = logits.shape[0]
    w = torch.softmax(logits.reshape(n, -1), dim=-1).reshape(logits.shape).detach()
    return (w[:, strand] * logits[:, strand]).sum(dim=-1)


def select_target(profile_logits: torch.Tensor, log_counts: torch.Tensor, cell: int, target: str) -> torch.Tensor:
    """One target ``(N,)`` from a model's outputs (``(N, C, 2, L)``, ``(N, C)``) for cell index ``cell``.

    Also accepts single-cell outputs ``(N, 2, L)`` / ``(N,)`` or ``(N, 1)`` (an encoder entry point
    that predicts only the cell type it is given).
    """
    if target == "count":
        if log_counts.ndim == 1:
            return log_counts
        return log_counts[:, cell] if log_counts.shape[1] > 1 else log_counts[:, 0]
    if target == "count_specific":
        C = log_counts.shape[1] if log_counts.ndim == 2 else 1
        if C < 2:
            raise ValueError("the count_specific target needs the log counts of two or more cell types")
        return log_counts[:, cell] - (log_counts.sum(dim=1) - log_counts[:, cell]) / (C - 1)
    logits = profile_logits[:, cell] if profile_logits.ndim == 4 else profile_logits
    return profile_target(logits, STRAND[target])


def encoder_outputs(model: nn.Module, seq: torch.Tensor, reads: torch.Tensor, cell: torch.Tensor):
    """``(profile_logits (N, 2, L_out), log_counts (N,))`` of the encoder's ``encode`` entry point.

    ``encode`` returns the profile over the whole input; it is cropped to the central output window
    so that the targets mean the same as in ``forward`` (S2R mode).
    """
    out = model.encode(seq, reads, cell)
    pl = out["profile_logits"]
    L_out = getattr(model, "output_len", pl.shape[-1])
    a = (pl.shape[-1] - L_out) // 2
    return pl[..., a:a + L_out], out["log_count"]


class CountTarget(nn.Module):
    """``(N, 4, L) -> (N, 1)``: predicted log count of cell type ``cell`` (index into the model's cells),
    or with ``specific=True`` its ``count_specific`` contrast to the other cell types."""

    def __init__(self, model: nn.Module, cell: int, specific: bool = False) -> None:
        super().__init__()
        self.model, self.cell, self.specific = model, int(cell), bool(specific)

    def forward(self, X: torch.Tensor, *args) -> torch.Tensor:
        _, log_counts = self.model(X, *args)
        return select_target(None, log_counts, self.cell, "count_specific" if self.specific else "count")[:, None]


class ProfileTarget(nn.Module):
    """``(N, 4, L) -> (N, 1)``: softmax-weighted profile-logit sum of one strand (0 plus, 1 minus)."""

    def __init__(self, model: nn.Module, cell: int, strand: int) -> None:
        super().__init__()
        self.model, self.cell, self.strand = model, int(cell), int(strand)

    def forward(self, X: torch.Tensor, *args) -> torch.Tensor:
        logits, _ = self.model(X, *args)
        return profile_target(logits[:, self.cell], self.strand)[:, None]


def make_target(model: nn.Module, cell: int, target: str) -> nn.Module:
    """The wrapper for a target name of :data:`TARGETS`."""
    if target in ("count", "count_specific"):
        return CountTarget(model, cell, specific=target == "count_specific")
    return ProfileTarget(model, cell, STRAND[target])


class AllTargets(nn.Module):
    """``(N, 4, L) -> (N, T)``: several ``(cell, target)`` pairs from one forward pass."""

    def __init__(self, model: nn.Module, pairs: Sequence[tuple[int, str]]) -> None:
        super().__init__()
        self.model, self.pairs = model, list(pairs)

    def forward(self, X: torch.Tensor, *args) -> torch.Tensor:
        logits, log_counts = self.model(X, *args)
        return torch.stack([select_target(logits, log_counts, c, t) for c, t in self.pairs], dim=1)
