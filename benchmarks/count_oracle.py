"""Diagnostic: how well can *any* model predict the test count targets of the simulated data?

The count ceiling in ``metrics.json`` correlates the observed totals with the true rates, which also
hold the per-region random scale (``region_sd``) that no sequence shows. This script fits linear
oracles that know more than a model does, on the training peaks, and scores them on the test peaks
(Pearson r of ``log(1 + total)`` over the output window, per cell type), so the models' count
Pearson can be read against what the sequence allows:

- ``sites``: the true number of sites of every TF in each region (``truth.json`` ``motif_counts``:
  the simulator's own inputs to the rates; the best any sequence model could do);
- ``scan_zone``: PWM matches (relative score >= the simulator's threshold, either strand) of every
  TF counted in the motif zone around the region centre, with the exact JASPAR matrices — a model
  that knows the matrices and where the sites act;
- ``scan_H``: the same counted within ±H bp of the centre, i.e. without knowing where sites act
  (a count head that averages over its output window sees ±``output / 2`` plus its receptive field).

and, unless ``--no-heads``, the CNN's count head itself (the ``count_stem`` filters, ReLU or not,
averaged over the ``count_box`` windows, batch-normalised, linear; ``bpnet.py``) trained by
gradient descent on the training peaks alone (MSE, AdamW with a one-cycle schedule at 0.02, i.e.
the benchmark's lr x ``count_lr_scale``, 30 epochs, jitter and reverse complements as in training,
test predictions averaged with the reverse complement's), to tell the head's form from its
learning:

- ``head_pwm_relu``: its filters fixed to the simulator's JASPAR log-odds matrices (one filter per
  TF and strand), each biased to zero at the site threshold, then ReLU, as in the model: the head
  sums how far each match clears the threshold, not how many sites there are;
- ``head_pwm_sigmoid``: the same filters (x 4) through a sigmoid, i.e. a soft site count;
- ``head_learned_relu``: the model's count stem alone (``count_stem`` filters of width
  ``conv_kernel``, ReLU) learned from scratch, what the model's count branch learns on its own
  (the trunk's pooled features, which the model adds, carry little count information).

Why the hand-written loop (not Lightning): a diagnostic of a few seconds to a few minutes on
fixed tensors, no checkpoints or logging wanted.

Usage::

    python benchmarks/count_oracle.py --workdir DIR [--halves 150 256] [--no-write]

``DIR`` holds ``sim/`` (``seq2reads simulate``) and ``run/dataset`` (``seq2reads prepare``), e.g. the
workdir of ``benchmarks/accuracy.py``. Prints one JSON line and writes it to
``benchmarks/results/count_oracle.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def scan_counts(codes: np.ndarray, pwm: np.ndarray) -> int:
    """Number of start positions in ``codes`` where ``pwm`` or its reverse complement has a relative
    score >= the simulator's threshold; sites touching N never match."""
    from seq2reads.data.simulate import MIN_REL_SCORE, pwm_scores, relative_score

    best = np.maximum(*pwm_scores(codes, pwm))
    return int((relative_score(best, pwm) >= MIN_REL_SCORE).sum())


def fit_r(X: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray) -> list[float]:
    """Least squares of each column of Y on X (+ intercept) on ``train``; test Pearson per column."""
    A = np.c_[X, np.ones(len(X))]
    out = []
    for c in range(Y.shape[1]):
        w = np.linalg.lstsq(A[train], Y[train, c], rcond=None)[0]
        out.append(round(float(np.corrcoef(A[test] @ w, Y[test, c])[0, 1]), 4))
    return out


def pwm_filters(pwms: list[np.ndarray], width: int, scale: float = 1.0):
    """Conv1d weights and biases ``((2 M, 4, width), (2 M,))`` scanning each log-odds matrix (bits)
    and its reverse complement, centred in ``width``, biased so that a match at the simulator's
    relative-score threshold scores 0; times ``scale``."""
    import torch

    from seq2reads.data.simulate import MIN_REL_SCORE

    W, b = [], []
    for pwm in pwms:
        lo, hi = pwm.min(0).sum(), pwm.max(0).sum()
        for m in (pwm, pwm[::-1, ::-1]):
            w = np.zeros((4, width))
            o = (width - m.shape[1]) // 2
            w[:, o:o + m.shape[1]] = m
            W.append(w * scale)
            b.append(-(lo + MIN_REL_SCORE * (hi - lo)) * scale)
    return torch.tensor(np.array(W), dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def head_r(onehot: np.ndarray, Y: np.ndarray, train: np.ndarray, test: np.ndarray, geo: dict, filters,
           act: str, width: int = 21, box: int = 32, epochs: int = 30, lr: float = 0.02, seed: int = 0) -> list[float]:
    """Train the CNN's count head (see the module docstring) on ``train``; test Pearson per cell type.

    ``onehot`` float32 (R, 4, span) of the stored windows; ``Y`` (R, C) observed log(1 + total);
    ``filters``: ``(weight, bias)`` to fix the filters, or a number of filters to learn; ``act``
    ``relu`` or ``sigmoid``.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    from seq2reads.models.heads import box_halves, box_means

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    learn = isinstance(filters, int)
    conv = nn.Conv1d(4, filters if learn else filters[0].shape[0], width)
    if not learn:
        conv.weight.data, conv.bias.data = filters
        conv.requires_grad_(False)
    n_pool = conv.out_channels * len(box_halves(geo["out"], box))
    norm, linear = nn.BatchNorm1d(n_pool), nn.Linear(n_pool, Y.shape[1])
    modules = nn.ModuleList([conv, norm, linear])
    fn = F.relu if act == "relu" else torch.sigmoid

    def predict(x: torch.Tensor) -> torch.Tensor:
        return linear(norm(box_means(fn(conv(x)), box)))

    X, T = torch.from_numpy(onehot), torch.from_numpy(Y.astype(np.float32))
    L = geo["out"] + width - 1
    c0, jit = (geo["span"] - L) // 2, min(geo["jitter"], (geo["span"] - L) // 2)
    rows = np.flatnonzero(train)
    n_batches = -(-len(rows) // 64)
    opt = torch.optim.AdamW([p for p in modules.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * n_batches, pct_start=0.1)
    modules.train()
    for _ in range(epochs):
        order = rng.permutation(rows)
        for i in range(n_batches):
            b = order[i * 64:(i + 1) * 64]
            off = c0 + rng.integers(-jit, jit + 1, len(b))
            x = torch.stack([X[r, :, o:o + L] for r, o in zip(b, off)])
            flip = torch.from_numpy(rng.random(len(b)) < 0.5)
            x[flip] = x[flip].flip(1, 2)
            loss = F.mse_loss(predict(x), T[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    modules.eval()
    with torch.no_grad():
        x = X[np.flatnonzero(test), :, c0:c0 + L]
        pred = ((predict(x) + predict(x.flip(1, 2))) / 2).numpy()
    return [round(float(np.corrcoef(pred[:, c], Y[test, c])[0, 1]), 4) for c in range(Y.shape[1])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--halves", type=int, nargs="+", default=[150, 256])
    ap.add_argument("--no-heads", action="store_true", help="skip the trained count-head oracles")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from seq2reads.data.genome import Genome
    from seq2reads.data.loader import center_crop, iter_batches
    from seq2reads.data.simulate import MOTIF_ZONE, SimOptions, _load_motifs, _pwm, load_truth
    from seq2reads.data.store import open_dataset

    wd = Path(args.workdir)
    truth = load_truth(wd / "sim" / "truth.json")
    store = open_dataset(wd / "run" / "dataset").load()
    reg = store.regions
    rows = np.nonzero((reg["kind"] == "peak").to_numpy())[0]
    Y = np.concatenate([np.log1p(center_crop(b["signal"], store.output_len).sum((-1, -2)).numpy())
                        for b in iter_batches(store, rows, 256)])  # (R, C) observed, output window
    split = reg["split"].to_numpy()[rows]
    train, test = split == "train", split == "test"
    chrom = reg["chrom"].to_numpy()[rows]
    centre = reg["centre"].to_numpy()[rows].astype(int)
    by_site = {(r["chrom"], r["centre"]): r for r in truth["regions"]}
    motifs = [m for m in _load_motifs(len(truth["cell_types"]), SimOptions()) if m["role"] != "core"]
    pwms = [_pwm(m["pfm"]) for m in motifs]
    genome = Genome(str(wd / "sim" / "genome.fa"))
    sites = np.array([[by_site[(c, x)]["motif_counts"][m["name"]] for m in motifs] for c, x in zip(chrom, centre)],
                     float)
    result = {"sites": fit_r(sites, Y, train, test)}
    for name, half in [("scan_zone", MOTIF_ZONE)] + [(f"scan_{h}", h) for h in args.halves]:
        X = np.array([[scan_counts(genome.codes(c, x - half, x + half), pwm) for pwm in pwms]
                      for c, x in zip(chrom, centre)], float)
        result[name] = fit_r(X, Y, train, test)
    if not args.no_heads:
        import torch

        torch.set_num_threads(args.threads)
        onehot = np.eye(5, dtype=np.float32)[np.asarray(store.seq[rows])][..., :4].transpose(0, 2, 1)
        geo = dict(span=store.span, out=store.output_len, jitter=store.jitter)
        result["head_pwm_relu"] = head_r(onehot, Y, train, test, geo, pwm_filters(pwms, 21), "relu")
        result["head_pwm_sigmoid"] = head_r(onehot, Y, train, test, geo, pwm_filters(pwms, 21, 4.0), "sigmoid")
        result["head_learned_relu"] = head_r(onehot, Y, train, test, geo, 128, "relu")
    line = json.dumps({
        "benchmark": "count_oracle",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}",
        "simulator_version": truth.get("version"), "regions": int(truth["parameters"]["n_regions"]),
        "output_len": int(store.output_len), "cell_types": list(store.samples),
        "n_train": int(train.sum()), "n_test": int(test.sum()),
        "test_count_pearson": result,
        "mean": {k: round(float(np.mean(v)), 4) for k, v in result.items()},
        "note": "linear oracles fitted on train peaks, scored on test peaks; see the script's docstring",
    })
    print(line)
    if not args.no_write:
        from seq2reads.atomic import write_text_atomic

        write_text_atomic(ROOT / "benchmarks" / "results" / "count_oracle.json", line + "\n")


if __name__ == "__main__":
    main()
