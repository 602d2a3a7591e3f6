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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--halves", type=int, nargs="+", default=[150, 256])
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
