"""Diagnostic: how well can a sequence-only model predict the test *profiles* of the simulated data?

The profile ceiling in ``metrics.json`` scores the true per-base rates, which also hold what no
sequence shows: each strand's pause offset (drawn around ``pause_mean`` with sd ``pause_sd``) and a
random log-normal factor on each strand's weight (``strand_sd``). This script builds oracle
profiles with the simulator's own shape function (``_shapes``) and scores them on the test peaks
with the SPEC metrics (``profile_pearson``, median over regions, mean over cell types):

- ``exact_pause``: true TSS and pause positions, strand weights from the TATA scores alone (the
  random strand factor left out);
- ``sequence_only``: as ``exact_pause`` but the pause offset averaged over its distribution
  (a normal of sd ``pause_sd`` around ``pause_mean``, clipped to 30–60 bp, as the simulator draws
  it) — what a model that read the sequence perfectly could predict.

Usage::

    python benchmarks/profile_oracle.py --workdir DIR [--no-write]

``DIR`` holds ``sim/`` and ``run/dataset``, e.g. the workdir of ``benchmarks/accuracy.py``. Prints
one JSON line and writes it to ``benchmarks/results/profile_oracle.json``.
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


def oracle_shapes(regions: list[dict], tata: dict, opts, blur_pause: bool) -> np.ndarray:
    """Expected shapes (R, 2, span) with TATA-only strand weights; pause exact or averaged."""
    from seq2reads.data.simulate import _shapes

    offsets = np.arange(30, 61)
    w = np.exp(-0.5 * ((offsets - opts.pause_mean) / opts.pause_sd) ** 2)
    w /= w.sum()
    plans = list(zip(offsets, w)) if blur_pause else [(None, 1.0)]
    out = 0.0
    for off, weight in plans:
        rr = []
        for r in regions:
            d = dict(r)
            if off is not None:
                d["pause"] = {"plus": r["tss"]["plus"] + int(off), "minus": r["tss"]["minus"] - int(off)}
            sw = np.exp(opts.tata_weight * (np.array([tata[r["name"], "+"], tata[r["name"], "-"]]) - 9.0))
            d["strand_share"] = {"plus": sw[0] / sw.sum(), "minus": sw[1] / sw.sum()}
            rr.append(d)
        out = out + weight * _shapes(rr, opts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from seq2reads.data.loader import center_crop, iter_batches
    from seq2reads.data.simulate import SPAN_HALF, SimOptions, load_truth
    from seq2reads.data.store import open_dataset
    from seq2reads.evaluation import metrics as M

    wd = Path(args.workdir)
    truth = load_truth(wd / "sim" / "truth.json")
    opts = SimOptions(**{k: v for k, v in truth["parameters"].items() if k in SimOptions.__dataclass_fields__})
    store = open_dataset(wd / "run" / "dataset")
    reg, L = store.regions, store.output_len
    idx = store.indices("test", kinds=("peak",))
    batch = next(iter_batches(store, idx, len(idx)))
    counts, mask = center_crop(batch["signal"], L).numpy(), center_crop(batch["mask"], L).numpy()
    by_name = {r["name"]: r for r in truth["regions"]}
    regions = [by_name[n] for n in reg["name"].to_numpy()[idx]]
    tata = {(i["region"], i["strand"]): i["score"] for i in truth["instances"] if i["role"] == "core"}
    # output window start (genome coordinate) of each test window: the centre L of its stored span
    starts = reg["start"].to_numpy()[idx].astype(int) + (reg["end"].to_numpy()[idx] - reg["start"].to_numpy()[idx]
                                                         - L).astype(int) // 2
    result = {}
    for name, blur in (("exact_pause", False), ("sequence_only", True)):
        S = oracle_shapes(regions, tata, opts, blur)
        per_cell = {}
        for ci, cell in enumerate(store.samples):
            prof = np.zeros((len(idx), 2, L))
            for j, r in enumerate(regions):
                a = starts[j] - (r["centre"] - SPAN_HALF)
                lo, hi = max(a, 0), min(a + L, 2 * SPAN_HALF)
                seg = np.zeros((2, L))
                seg[:, lo - a:hi - a] = S[j][:, lo:hi]
                prof[j] = r["expected_total"][cell] * seg + truth["background_rate"]
            p = prof / prof.sum((1, 2), keepdims=True)
            m = M.all_metrics(p, np.log1p(prof.sum((1, 2))), counts[:, ci], mask)
            per_cell[cell] = round(float(m["profile_pearson"]), 4)
        result[name] = {"per_cell_type": per_cell, "mean": round(float(np.mean(list(per_cell.values()))), 4)}
    line = json.dumps({
        "benchmark": "profile_oracle",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}",
        "profile_pearson_mean": {k: v["mean"] for k, v in result.items()},
        "output_len": int(L), "n_test": int(len(idx)),
        "profile_pearson_per_cell_type": {k: v["per_cell_type"] for k, v in result.items()},
        "simulator_version": truth.get("version"), "regions": int(truth["parameters"]["n_regions"]),
        "note": "oracle profiles from the simulator's shape function, scored like metrics.json; see the docstring",
    })
    print(line)
    if not args.no_write:
        (ROOT / "benchmarks" / "results" / "profile_oracle.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
