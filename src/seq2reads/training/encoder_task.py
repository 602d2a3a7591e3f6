"""Lightning task of the masked encoder: masked reconstruction with adaptive loss balancing.

Each training example is a (window, cell type) pair: for every window of the batch one cell type
``c`` is drawn at random and the model gets the window's sequence, the stranded reads of ``c``
(``signal[:, c]``, counts over the whole input) and ``c`` one-hot. Masks come from
:func:`seq2reads.models.masking.masks_from_config` (span masks on sequence and reads, cell-type
masking, a fraction of S2R examples with the reads fully masked).

Losses (:mod:`seq2reads.models.heads`, on masked positions; the dataset's loss mask applies to the
reads): ``reads`` (profile, ``model.read_loss``; the reference of the balancing, weight 1),
``count`` (log total of the output window), ``seq`` (masked bases), ``cell`` (masked cell type).
Their weights come from :class:`~seq2reads.models.balancing.AdaptiveBalancer` at the last block's
MLP output weight (``model.balance*``); a configured ``model.count_weight`` fixes the count weight
instead. With a count stem and ``model.count_stem_all_cells`` (off by default), the stem's own count
loss against every cell type's total of each window (:meth:`MaskedEncoderTask.stem_all_cells_loss`)
is added at the count weight. Every component and weight is logged each step (``train/loss_reads``,
``train/w_seq``, ``train/loss_count_stem_all``, ...).

Validation logs ``val/loss`` — the **S2R-mode read loss** (profile loss of the configured kind +
count loss × (``count_weight`` or 1), reads fully masked, every cell type), i.e. the task the
model is evaluated on, with fixed weights so early stopping compares like with like — and the
masked-mode losses under fixed-seed masks (``val/loss_reads_masked``, ``val/loss_seq``,
``val/loss_cell``) and masked-base accuracy ``val/seq_acc``.
"""

from __future__ import annotations


import lightning as L
import torch

from seq2reads.errors import UserError
from seq2reads.models.balancing import AdaptiveBalancer
from seq2reads.models.heads import cell_loss, count_loss, profile_loss, sequence_loss
from seq2reads.models.masking import Masks, masks_from_config
from seq2reads.training.tasks import lr_factor, param_groups, typical_totals, window_count_weight

LOSS_NAMES = ("reads", "count", "seq", "cell")


def signal_columns(cfg_cells: list[str], dataset_cells: list[str], n_model_cells: int) -> list[int]:
    """Column of the dataset's signal for each of the model's cell types.

    Raises
    ------
    UserError
        A cell type of the config that the dataset does not hold.
    """
    missing = [c for c in cfg_cells if c not in dataset_cells]
    if missing:
        raise UserError(
            f"cell type(s) {', '.join(missing)} are in the config but not in the prepared dataset "
            f"(it holds {', '.join(dataset_cells)}): re-run `seq2reads prepare` after changing samples."
        )
    if n_model_cells == len(cfg_cells):
        return [dataset_cells.index(c) for c in cfg_cells]
    if n_model_cells == len(dataset_cells):
        return list(range(n_model_cells))
    raise UserError(
        f"the model has {n_model_cells} cell types but the config names {len(cfg_cells)}: "
        "train with the config the dataset was prepared from."
    )


def masked_losses(model, out: dict, seq, reads, loss_mask, masks: Masks, cell1h, read_loss: str,
                  count_weight: torch.Tensor | None = None) -> dict:
    """The four masked-reconstruction losses of one batch: name -> (loss, n contributing).

    ``count_weight`` (B,): optional factor on each example's count error (background windows).
    """
    return {
        "reads": profile_loss(out["profile_logits"], reads, masks.reads & loss_mask, read_loss),
        "count": count_loss(out["log_count"], reads, loss_mask, model.output_len, count_weight),
        "seq": sequence_loss(out["seq_logits"], seq, masks.seq),
        "cell": cell_loss(out["cell_logits"], cell1h, masks.cell),
    }


class MaskedEncoderTask(L.LightningModule):
    """Training/validation of :class:`~seq2reads.models.encoder.MaskedEncoder` (see module doc).

    Parameters
    ----------
    cfg : seq2reads.config.Config
        Whole config (``model`` is an ``EncoderModel`` section; ``train`` sets the optimiser).
    model : MaskedEncoder
    dataset_attrs : dict
        Attributes of the prepared dataset (``samples`` = cell types in signal order, ...).
    """

    def __init__(self, cfg, model, dataset_attrs) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        mc = cfg.model
        self.mcfg = mc
        cols = signal_columns(list(cfg.cell_types), list(dataset_attrs["samples"]), model.n_cell_types)
        self.register_buffer("columns", torch.tensor(cols, dtype=torch.long), persistent=False)
        fixed = {"count": float(mc.count_weight)} if mc.count_weight is not None else {}
        self.balancer = AdaptiveBalancer(
            list(LOSS_NAMES), "reads", smoothing=mc.balance_smoothing, clamp=tuple(mc.balance_clamp),
            fixed=fixed, enabled=mc.balance,
        )
        self.val_count_weight = float(mc.count_weight) if mc.count_weight is not None else 1.0
        self.background_weight = float(mc.background_count_weight)
        self.stem_all_cells = bool(mc.count_stem_all_cells and getattr(model, "count_stem", 0))
        self.register_buffer("count_level", torch.tensor(0.0), persistent=False)
        stats = dataset_attrs.get("count_stats")
        if stats:
            # start the count head at the typical log total (as the CNN's): a head starting at 0
            # spends its first epochs learning the level (count MSE ~20 after 2 short epochs)
            typical = typical_totals(stats, list(dataset_attrs["samples"]))
            level = torch.log1p(torch.tensor([typical[i] for i in cols])).mean()
            with torch.no_grad():
                model.count_head.linear.bias.fill_(float(level))
            self.count_level.fill_(float(level))

    def forward(self, X):
        return self.model(X)

    # -- examples -------------------------------------------------------------------------------
    def examples(self, batch: dict, generator: torch.Generator | None = None):
        """(window, cell type) examples and masks of a loader batch.

        Returns seq (B, 4, L), reads (B, 2, L) counts, loss mask (B, L), cell one-hot (B, C), Masks.
        """
        seq, signal, lmask = batch["seq"], batch["signal"], batch["mask"].bool()
        b, length = seq.shape[0], seq.shape[-1]
        c = self.model.n_cell_types
        cells = torch.randint(c, (b,), generator=generator).to(seq.device)
        reads = signal[torch.arange(b, device=seq.device), self.columns[cells]]
        masks = masks_from_config(self.mcfg, b, length, generator=generator)
        masks = Masks(*(m.to(seq.device) for m in (masks.seq, masks.reads, masks.cell, masks.s2r)))
        cell1h = torch.nn.functional.one_hot(cells, c).to(seq.dtype)
        return seq, reads, lmask, cell1h, masks

    def _masked_step(self, batch, generator=None):
        seq, reads, lmask, cell1h, masks = self.examples(batch, generator)
        out = self.model.encode(seq, reads, cell1h, masks.seq, masks.reads, masks.cell)
        losses = masked_losses(self.model, out, seq, reads, lmask, masks, cell1h, self.mcfg.read_loss,
                               self.window_weight(batch))
        return losses, out, seq, masks

    def window_weight(self, batch: dict, repeat: int = 1) -> torch.Tensor | None:
        """(B * repeat,) factor on each window's count error: ``model.background_count_weight`` on
        background windows, 1 on peaks (as the CNN's task); None when it is 1 or unknown."""
        return window_count_weight(batch, self.background_weight, repeat)

    # -- Lightning hooks ------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        parts, _, seq, masks = self._masked_step(batch)
        losses = {k: v for k, (v, n) in parts.items() if n > 0}
        weights = self.balancer.update(losses, self.model.last_shared_layer())
        total = self.balancer.combine(losses)
        b = seq.shape[0]
        log = {}
        if self.stem_all_cells:
            stem_all = self.stem_all_cells_loss(batch)
            total = total + weights["count"] * stem_all
            log["train/loss_count_stem_all"] = stem_all.detach()
        log["train/loss"] = total.detach()
        for k, (v, n) in parts.items():
            if n > 0:
                log[f"train/loss_{k}"] = v.detach()
        for k, w in weights.items():
            log[f"train/w_{k}"] = w
        log["train/mask_fraction"] = masks.reads[~masks.s2r].float().mean() if (~masks.s2r).any() else 0.0
        self.log_dict(log, on_step=True, on_epoch=False, prog_bar=False, batch_size=b)
        self.log("loss", total.detach(), prog_bar=True, logger=False, batch_size=b)
        return total

    def stem_all_cells_loss(self, batch) -> torch.Tensor:
        """Count loss of the count stem alone for every cell type of every window of the batch.

        A training example carries the reads of one cell type, so the count loss alone gives the
        stem (a function of the sequence only) one total per window; this term gives it all ``C``
        (``model.count_stem_all_cells``): MSE between ``count_level + stem(seq)[:, c]`` and
        ``log(1 + total)`` of cell type ``c`` over the output window, on the unmasked sequence.
        ``count_level`` is the count head's starting level (the mean typical log total), so the
        stem learns each window's and cell type's departure from it, the term it adds in S2R mode.
        """
        pred = self.model.stem_log_counts(batch["seq"]) + self.count_level  # (B, C)
        reads, lmask = self._every_cell_reads(batch)
        loss, _ = count_loss(pred.flatten(), reads, lmask, self.model.output_len,
                             self.window_weight(batch, self.model.n_cell_types))
        return loss

    def _every_cell_reads(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Reads and keep-mask of every cell type of every window: (B * C, 2, L) each, rows
        ``n * C + c`` (the order of :meth:`MaskedEncoder._all_cells`)."""
        reads = batch["signal"].float()[:, self.columns].flatten(0, 1)
        return reads, batch["mask"].bool().repeat_interleave(self.model.n_cell_types, 0)

    def validation_step(self, batch, batch_idx):
        b = batch["seq"].shape[0]
        # S2R mode, every cell type: rows n * C + k
        seq_r, cells = self.model._all_cells(batch["seq"])
        reads_r, lmask_r = self._every_cell_reads(batch)
        out = self.model.encode(seq_r, None, cells)
        prof, _ = profile_loss(out["profile_logits"], reads_r, lmask_r, self.mcfg.read_loss)
        cnt, _ = count_loss(out["log_count"], reads_r, lmask_r, self.model.output_len,
                            self.window_weight(batch, self.model.n_cell_types))
        val = prof + self.val_count_weight * cnt
        log = {"val/loss": val, "val/loss_s2r_reads": prof, "val/loss_s2r_count": cnt}
        # masked mode with reproducible masks
        g = torch.Generator().manual_seed(int(self.cfg.train.seed) * 100003 + batch_idx)
        parts, o, seq_m, masks = self._masked_step(batch, g)
        log["val/loss_reads_masked"] = parts["reads"][0]
        if parts["seq"][1] > 0:
            log["val/loss_seq"] = parts["seq"][0]
            keep = masks.seq & (seq_m.sum(1) > 0.5)
            log["val/seq_acc"] = (o["seq_logits"].argmax(1) == seq_m.argmax(1))[keep].float().mean()
        if parts["cell"][1] > 0:
            log["val/loss_cell"] = parts["cell"][0]
        self.log_dict(log, on_step=False, on_epoch=True, prog_bar=False, batch_size=b, sync_dist=True)
        return val

    def configure_optimizers(self):
        tc = self.cfg.train
        groups = param_groups(self.model, tc, self.cfg.model.count_lr_scale,
                              lambda name, p: p.ndim >= 2 and "emb" not in name.split(".")[-1])
        opt_cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(groups, lr=tc.lr)
        if tc.schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=max(1, tc.patience // 2))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        total = tc.max_steps if tc.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        warmup, schedule = tc.warmup_steps, tc.schedule
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
