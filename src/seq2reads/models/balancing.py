"""VQGAN-style adaptive loss balancing (Esser et al. 2021, "Taming Transformers", eq. 7).

Each loss ``L_i`` gets the weight

    w_i = ||grad_W L_ref|| / (||grad_W L_i|| + eps)

where ``W`` is the weight of the last layer shared by all heads and ``L_ref`` the reference loss
(weight 1), so every loss pushes the shared trunk with the same gradient norm. The ratio is
detached (no second-order terms), clamped to ``[lo, hi]`` and smoothed by an exponential moving
average (``w <- s * w + (1 - s) * w_new``; the first observation initialises it). Losses given a
fixed weight (e.g. a configured count weight) are left out of the balancing. Weights live in
buffers, so they are saved in checkpoints and resume with training.

Written by hand: the idea is a few lines in the VQGAN code and no maintained library ships it.
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveBalancer(nn.Module):
    """Adaptive weights for named losses.

    Parameters
    ----------
    names : list of str
        Loss names, in order; ``reference`` must be one of them.
    reference : str
        The loss whose weight is 1 and whose gradient norm the others are matched to.
    smoothing : float
        EMA factor ``s`` in [0, 1): 0 = no smoothing.
    clamp : (float, float)
        Bounds of every adaptive weight.
    fixed : dict name -> float, optional
        Losses with a fixed weight (not balanced).
    enabled : bool
        False: every non-fixed weight stays 1.
    """

    def __init__(
        self,
        names: list[str],
        reference: str,
        smoothing: float = 0.9,
        clamp: tuple[float, float] = (0.01, 100.0),
        fixed: dict[str, float] | None = None,
        enabled: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if reference not in names:
            raise ValueError(f"reference loss {reference!r} is not among {names}")
        lo, hi = float(clamp[0]), float(clamp[1])
        if not 0 < lo <= hi:
            raise ValueError(f"balance clamp must satisfy 0 < low <= high, got {clamp}")
        self.names, self.reference = list(names), reference
        self.smoothing, self.lo, self.hi, self.eps, self.enabled = smoothing, lo, hi, eps, enabled
        self.fixed = dict(fixed or {})
        init = torch.tensor([self.fixed.get(n, 1.0) for n in self.names], dtype=torch.float32)
        self.register_buffer("weights", init)
        self.register_buffer("seen", torch.zeros(len(self.names), dtype=torch.bool))

    def weight(self, name: str) -> float:
        return float(self.weights[self.names.index(name)])

    def as_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights)}

    @staticmethod
    def _grad_norm(loss: torch.Tensor, layer: torch.Tensor) -> torch.Tensor | None:
        if not loss.requires_grad:
            return None
        (g,) = torch.autograd.grad(loss, layer, retain_graph=True, allow_unused=True)
        return None if g is None else g.detach().float().norm()

    @torch.no_grad()
    def _set(self, i: int, value: torch.Tensor) -> None:
        value = value.clamp(self.lo, self.hi).to(self.weights)
        if bool(self.seen[i]):
            value = self.smoothing * self.weights[i] + (1 - self.smoothing) * value
        self.weights[i] = value
        self.seen[i] = True

    def update(self, losses: dict[str, torch.Tensor], layer: torch.Tensor) -> dict[str, float]:
        """Recompute the weights from this step's losses (call in training only).

        Parameters
        ----------
        losses : dict name -> scalar tensor
            Losses of the step (those without a gradient path are skipped: their weight is kept).
        layer : tensor
            The last shared layer's weight (a leaf parameter).

        Returns
        -------
        dict name -> float, the current weights.
        """
        if self.enabled and torch.is_grad_enabled():
            g_ref = self._grad_norm(losses[self.reference], layer)
            if g_ref is not None and g_ref > 0:
                for i, name in enumerate(self.names):
                    if name == self.reference or name in self.fixed or name not in losses:
                        continue
                    g = self._grad_norm(losses[name], layer)
                    if g is not None:
                        self._set(i, g_ref / (g + self.eps))
        return self.as_dict()

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum_i w_i * L_i`` over the given losses (weights detached)."""
        total = None
        for name, loss in losses.items():
            term = self.weights[self.names.index(name)].detach() * loss
            total = term if total is None else total + term
        return total
