"""Masked-reconstruction metrics of an encoder run (the ``masked`` section of ``metrics.json``).

On test peak windows (at most ``max_windows``, evenly spaced; background windows carry too few
reads for per-window profile metrics) every window is shown to the model once per cell type with
reproducible span masks (``model.mask_min``/``mask_max``/``span``/``joint_mask``; seed 0):

- ``read_profile_pearson`` / ``read_profile_jsd``: per (window, cell type), the predicted read
  profile against the observed counts on the **masked read positions** only (both strands, the
  prediction renormalised over those positions; dataset loss mask applied), median over examples
  with reads there (:mod:`seq2reads.evaluation.metrics`). ``*_s2r`` are the same positions predicted
  with the reads fully masked — what the visible reads around a span add.
- ``seq_accuracy``: argmax over A C G T at masked positions holding a base, beside
  ``seq_baseline_accuracy`` (always the most frequent base of the evaluated windows) and
  ``seq_window_baseline_accuracy`` (the most frequent base among the window's unmasked positions).
- ``cell_accuracy``: the same masked inputs with the cell type masked too; accuracy of the
  predicted cell type, beside ``cell_baseline_accuracy`` (always the most frequent true label).

``per_cell_type`` repeats the read and sequence figures per cell type.
"""

from __future__ import annotations

import numpy as np
import torch

from seq2reads.evaluation import metrics as M
from seq2reads.models.masking import draw_masks

MAX_WINDOWS = 1000


def _median(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def _softmax2(logits: torch.Tensor) -> np.ndarray:
    """(N, 2, L) logits -> probabilities over both strands jointly, float64 numpy."""
    return torch.softmax(logits.double().flatten(1), 1).view_as(logits).cpu().numpy()


def evaluation_windows(store, max_windows: int = MAX_WINDOWS) -> np.ndarray:
    """Test peak rows (all test rows if there are no peaks), at most ``max_windows``, evenly spaced."""
    idx = np.asarray(store.indices("test", kinds=("peak",)), dtype=np.int64)
    if len(idx) == 0:
        idx = np.asarray(store.indices("test"), dtype=np.int64)
    if len(idx) > max_windows:
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_windows).round().astype(np.int64))]
    return idx


@torch.no_grad()
def masked_metrics(cfg, model, store, max_windows: int = MAX_WINDOWS, batch_size: int | None = None,
                   seed: int = 0) -> dict:
    """Masked-reconstruction metrics (module docstring) of ``model`` on ``store``'s test windows.

    Parameters
    ----------
    cfg : seq2reads.config.Config
        The run's config (``model`` must be an encoder section).
    model : MaskedEncoder
    store : DatasetStore
        The run's dataset.

    Returns
    -------
    dict of JSON-ready figures (None where undefined).
    """
    from seq2reads.data.loader import iter_batches
    from seq2reads.training.encoder_task import signal_columns

    if not hasattr(model, "encode") or getattr(cfg.model, "type", None) != "encoder":
        return {"note": "masked-reconstruction metrics apply to encoder runs only"}
    mc = cfg.model
    cells = list(cfg.cell_types) if model.n_cell_types == len(cfg.cell_types) else list(store.samples)
    cols = torch.tensor(signal_columns(list(cfg.cell_types), list(store.samples), model.n_cell_types))
    c = model.n_cell_types
    idx = evaluation_windows(store, max_windows)
    if len(idx) == 0:
        return {"note": "no test windows"}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    acc: dict[str, list] = {k: [] for k in ("pearson", "jsd", "pearson_s2r", "jsd_s2r", "cell", "seq_hit", "seq_base",
                                            "seq_win", "seq_n", "cell_hit", "frac")}
    base_counts = np.zeros(4)
    batches = []
    for batch in iter_batches(store, idx, batch_size or cfg.train.batch_size):
        base_counts += batch["seq"].sum((0, 2)).double().numpy()
        batches.append(batch)  # a second pass needs the global base composition first
    top_base = int(np.argmax(base_counts))
    try:
        for batch in batches:
            b = batch["seq"].shape[0]
            seq = batch["seq"].repeat_interleave(c, 0)
            reads = batch["signal"][:, cols].flatten(0, 1).float()
            lmask = batch["mask"].bool().repeat_interleave(c, 0)
            cell_idx = torch.arange(c).repeat(b)
            n, length = seq.shape[0], seq.shape[-1]
            ms = draw_masks(n, length, mc.mask_min, mc.mask_max, mc.span, mc.joint_mask, 0.0, 0.0, generator=g)
            dv = [t.to(device) for t in (seq, reads, ms.seq, ms.reads)]
            out = model.encode(dv[0], dv[1], cell_idx.to(device), dv[2], dv[3])
            s2r = model.encode(dv[0], None, cell_idx.to(device))
            blind = model.encode(dv[0], dv[1], cell_idx.to(device), dv[2], dv[3],
                                 torch.ones(n, dtype=torch.bool, device=device))
            keep = (ms.reads & lmask).numpy()
            counts = reads.double().numpy()
            for key, o in (("", out), ("_s2r", s2r)):
                probs = _softmax2(o["profile_logits"])
                acc["pearson" + key].append(M.profile_pearson(probs, counts, keep))
                acc["jsd" + key].append(M.profile_jsd(probs, counts, keep))
            # sequence
            true = seq.argmax(1).numpy()
            has_base = seq.sum(1).numpy() > 0.5
            smask = ms.seq.numpy() & has_base
            pred = out["seq_logits"].argmax(1).cpu().numpy()
            visible = (~ms.seq.numpy()) & has_base
            win_counts = np.stack([((true == k) & visible).sum(1) for k in range(4)], 1)
            win_top = win_counts.argmax(1)
            acc["seq_hit"].append(((pred == true) & smask).sum(1))
            acc["seq_base"].append(((true == top_base) & smask).sum(1))
            acc["seq_win"].append(((true == win_top[:, None]) & smask).sum(1))
            acc["seq_n"].append(smask.sum(1))
            acc["cell_hit"].append((blind["cell_logits"].argmax(1).cpu() == cell_idx).numpy())
            acc["cell"].append(cell_idx.numpy())
            acc["frac"].append(ms.reads.float().mean(1).numpy())
    finally:
        model.train(was_training)
    cat = {k: np.concatenate(v) for k, v in acc.items()}

    def reads_seq(sel: np.ndarray) -> dict:
        n_seq = cat["seq_n"][sel].sum()
        ratio = (lambda k: float(cat[k][sel].sum() / n_seq) if n_seq else None)
        return {
            "read_profile_pearson": _median(cat["pearson"][sel]),
            "read_profile_jsd": _median(cat["jsd"][sel]),
            "read_profile_pearson_s2r": _median(cat["pearson_s2r"][sel]),
            "read_profile_jsd_s2r": _median(cat["jsd_s2r"][sel]),
            "seq_accuracy": ratio("seq_hit"),
            "seq_baseline_accuracy": ratio("seq_base"),
            "seq_window_baseline_accuracy": ratio("seq_win"),
        }

    everything = np.ones(len(cat["cell"]), dtype=bool)
    labels = cat["cell"]
    result = {
        "n_windows": int(len(idx)),
        "n_examples": int(len(labels)),
        "mask_fraction": float(cat["frac"].mean()),
        **reads_seq(everything),
        "cell_accuracy": float(cat["cell_hit"].mean()) if c > 1 else None,
        "cell_baseline_accuracy": float(np.bincount(labels, minlength=c).max() / len(labels)) if c > 1 else None,
        "per_cell_type": {name: reads_seq(labels == k) for k, name in enumerate(cells)},
        "note": "test peak windows x every cell type, span masks (seed 0); read metrics on masked read "
                "positions, median over examples; *_s2r: same positions with reads fully masked; cell "
                "accuracy with the cell type masked",
    }
    return result
