"""Lightning task of the sequence-to-read CNN: profile (multinomial NLL) + counts (log1p MSE).

:class:`ProfileCountTask` takes a loader batch (``seq (B, 4, L_in)``, ``signal (B, C, 2, L_in)``,
``mask (B, L_in)``, ``index``, ``background``), crops the targets and the mask to the model's
centred output window and optimises ``mean_c [NLL_c + w_c v_n MSE_c] + s share_NLL / C``
(:mod:`seq2reads.models.losses`), with ``w_c`` = ``model.count_weight`` when given, else the data
rule of :func:`~seq2reads.models.losses.count_weight_from_data`, ``v_n`` =
``model.background_count_weight`` on background windows and 1 on peaks, and ``s`` =
``model.cell_share_weight`` (the cell-type split of the reads; default 0 = off, and off with one
cell type).

Why background windows count less in the count loss (not in BPNet, whose loader takes every window
alike): their totals (the genome-wide background rate) sit far below every peak's, so with full
weight the count head's small stem spends itself telling peaks from background, which the test
metrics on peaks do not ask, instead of ranking peaks by their motifs. Measured on the
``benchmarks/accuracy.py`` data (3,000 regions + 300 background windows, 30 epochs, 1 thread),
test count Pearson on peaks at seeds 0 / 1: 0.671 / 0.642 at weight 1, 0.728 / 0.751 at 0.3
(seed 0: 0.750 at 0.1, 0.763 at 0), profile Pearson 0.762 / 0.757 and 0.769 / 0.754; on peaks +
background windows 0.740 / 0.722 at 1, 0.710 / 0.734 at 0.3 (0.682 at 0.1, 0.664 at 0), so 0.3
gives +0.08 on peaks for -0.03 to +0.01 on peaks + background. What is still missing: trained on
the training peaks alone (no background), the count head's pooling reaches 0.76 with the
simulator's own motif matrices as fixed filters through a ReLU (as here), 0.89 through a sigmoid
(a site count), and 0.73 with its 128 filters learned from scratch through a ReLU (a sigmoid
learned from scratch finds far less: 0.37 in the whole model), so what is missing is filters as
sharp as the matrices, and a site count once they are:
``benchmarks/count_oracle.py``.

Logged: ``train/loss``, ``train/profile_nll``, ``train/count_mse``, ``train/cell_share_nll`` (when
on), ``train/lr`` every step and the same ``val/`` values per validation epoch.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from seq2reads.data.loader import center_crop
from seq2reads.models.losses import cell_share_nll, combined_loss, count_weight_from_data


def typical_totals(stats, samples: list[str]) -> list[float]:
    """Median train-peak total (reads, both strands, output window) per cell type, in ``samples`` order.

    ``stats`` is the dataset's ``count_stats`` attribute (a dict by name or a list in sample order);
    a cell type without statistics gets 0.
    """
    typical = []
    for i, name in enumerate(samples):
        s = stats.get(name) if isinstance(stats, dict) else stats[i]
        typical.append(float(s.get("median", s.get("mean", 0.0))) if isinstance(s, dict) else 0.0)
    return typical


def window_count_weight(batch: dict, background_weight: float, repeat: int = 1) -> torch.Tensor | None:
    """(B * repeat,) factor on each window's count loss: ``background_weight`` on the batch's
    background windows (``batch["background"]``), 1 on peaks, each repeated ``repeat`` times in a
    row; None when the weight is 1 or the batch does not say which windows are background."""
    bg = batch.get("background")
    if bg is None or background_weight == 1.0:
        return None
    return torch.where(bg, background_weight, 1.0).repeat_interleave(repeat)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step ``step``.

    Linear warm-up from ``1/warmup`` to 1 over ``warmup`` steps, then: ``cosine`` decays to 0 at
    step ``total``; ``constant`` and ``plateau`` stay at 1 (plateau reductions are applied on top
    by ``ReduceLROnPlateau``).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule != "cosine" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ProfileCountTask(L.LightningModule):
    """Train a profile + count model (e.g. :class:`~seq2reads.models.bpnet.BPNet`).

    Parameters
    ----------
    cfg : seq2reads.config.Config
        The run's config (``model.count_weight`` and the ``train`` section are used).
    model : nn.Module
        Maps ``(N, 4, L_in)`` to ``(profile_logits (N, C, 2, L_out), log_counts (N, C))``.
    dataset_attrs : dict
        The store's attributes (``samples``, ``count_stats``, ``output_len`` ...).
    """

    def __init__(self, cfg, model: nn.Module, dataset_attrs: dict) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        samples = list(dataset_attrs.get("samples") or cfg.cell_types)
        self.output_len = int(dataset_attrs.get("output_len", cfg.window.output))
        C = len(samples)
        stats = dataset_attrs.get("count_stats")
        if cfg.model.count_weight is not None:
            weights = [float(cfg.model.count_weight)] * C
        elif stats:
            weights = count_weight_from_data(stats, C)
        else:
            weights = [1.0] * C
        self.count_weights = weights
        self.share_weight = float(cfg.model.cell_share_weight) if C > 1 else 0.0
        self.background_weight = float(getattr(cfg.model, "background_count_weight", 1.0))
        self.register_buffer("count_weight", torch.tensor(weights, dtype=torch.float32), persistent=False)
        if stats:
            self._init_count_bias(stats, samples)

    def _init_count_bias(self, stats, samples) -> None:
        """Start the count head at log1p(median train-peak total) per cell type (faster start).

        The median, not the mean: the head predicts ``log(1 + total)``, whose average over skewed
        totals is near ``log1p(median)`` and well below ``log1p(mean)``.
        """
        head = getattr(self.model, "count_head", None)
        if not isinstance(head, nn.Linear) or head.bias is None or head.bias.numel() != len(samples):
            return
        with torch.no_grad():
            head.bias.copy_(torch.log1p(torch.tensor(typical_totals(stats, samples), dtype=head.bias.dtype)))

    def forward(self, X: torch.Tensor):
        return self.model(X)

    def _step(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, its parts by log name) of a batch."""
        profile, log_counts = self.model(batch["seq"])
        L_out = profile.shape[-1]
        y = center_crop(batch["signal"], L_out)
        m = center_crop(batch["mask"], L_out)
        v = window_count_weight(batch, self.background_weight)
        loss, nll, mse = combined_loss(profile, log_counts, y, m, self.count_weight, v)
        parts = {"profile_nll": nll, "count_mse": mse}
        if self.share_weight > 0:
            share = cell_share_nll(log_counts, y, m)
            loss = loss + self.share_weight * share / log_counts.shape[-1]
            parts["cell_share_nll"] = share
        return loss, parts

    def _log_parts(self, split: str, loss: torch.Tensor, parts: dict, b: int) -> None:
        self.log_dict({f"{split}/loss": loss, **{f"{split}/{k}": v for k, v in parts.items()}},
                      on_step=False, on_epoch=True, prog_bar=False, batch_size=b, sync_dist=True)

    def training_step(self, batch: dict, batch_idx: int):
        loss, parts = self._step(batch)
        b = batch["seq"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=b)
        self.log_dict({**{f"train/{k}": v.detach() for k, v in parts.items()},
                       "train/lr": float(self.optimizers().param_groups[0]["lr"])},
                      on_step=True, on_epoch=False, batch_size=b)
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        loss, parts = self._step(batch)
        self._log_parts("val", loss, parts, batch["seq"].shape[0])
        return loss

    def test_step(self, batch: dict, batch_idx: int):
        loss, parts = self._step(batch)
        self._log_parts("test", loss, parts, batch["seq"].shape[0])
        return loss

    def configure_optimizers(self):
        tc = self.cfg.train
        groups = param_groups(self.model, tc, self.cfg.model.count_lr_scale)
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(groups, lr=tc.lr)
        total = tc.max_steps if tc.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        warmup, schedule = tc.warmup_steps, tc.schedule
        step_sched = {"scheduler": torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, warmup, total, schedule)), "interval": "step"}
        if schedule != "plateau":
            return {"optimizer": opt, "lr_scheduler": step_sched}
        # Plateau: ReduceLROnPlateau scales the base lr that the warm-up factor multiplies.
        plateau = {"scheduler": _PlateauOnBase(step_sched["scheduler"], patience=max(1, tc.patience // 2)),
                   "monitor": "val/loss", "interval": "epoch"}
        return [opt], [step_sched, plateau]


def param_groups(model: torch.nn.Module, tc, count_lr_scale: float = 1.0,
                 decays=lambda name, p: p.ndim >= 2) -> list[dict]:
    """Optimizer parameter groups of ``model`` under the ``train`` config ``tc``.

    Weight decay on the parameters ``decays(name, p)`` picks (default: conv/linear weights, not
    biases or norms — the usual AdamW practice; with ``optimizer: adam`` it is L2 on every
    parameter, as asked). The count head's own parameters (top-level names starting ``count_``)
    learn at ``count_lr_scale`` (the config's ``model.count_lr_scale``) x ``train.lr``: they get
    gradient from the count loss only, one number per window and cell type, and with the base rate
    the CNN's were still far from fitting the training counts when the profile had converged.
    """
    groups = []
    for is_count in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith("count_") == is_count]
        lr = tc.lr * (count_lr_scale if is_count else 1.0)
        for decay in (True, False):
            params = [p for n, p in named if (tc.optimizer == "adam" or decays(n, p)) == decay]
            if params:
                groups.append({"params": params, "weight_decay": tc.weight_decay if decay else 0.0, "lr": lr})
    return groups


class _PlateauOnBase(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau that halves the warm-up scheduler's base learning rates.

    Reducing ``param_group['lr']`` directly would be undone by the step-wise warm-up scheduler at
    its next step; scaling its ``base_lrs`` composes the two.
    """

    def __init__(self, step_sched: torch.optim.lr_scheduler.LambdaLR, patience: int) -> None:
        self.step_sched = step_sched
        super().__init__(step_sched.optimizer, mode="min", factor=0.5, patience=patience)

    def state_dict(self):
        state = super().state_dict()
        state.pop("step_sched", None)  # restored by configure_optimizers, not by the checkpoint
        return state

    def _reduce_lr(self, epoch):  # noqa: D401 - torch hook
        self.step_sched.base_lrs = [b * self.factor for b in self.step_sched.base_lrs]
        super()._reduce_lr(epoch)
