"""Benchmark: our DeepLIFT/SHAP path vs tangermeme's ``deep_lift_shap`` with identical settings.

Same model (the default BPNet: 64 filters, 8 layers, 2114 bp in, 1000 bp out, 3 cell types,
random weights unless ``--run`` names a trained run), same sequences (one-hot windows of the
simulated genome, or random), same 20 dinucleotide-shuffled references per sequence, same
targets (count and both profile strands of each cell type: what ``attribute`` computes by
default, 9 targets for 3 cell types).

- tangermeme: one ``deep_lift_shap(..., hypothetical=True)`` call per target, default batch
  size, given the same pre-drawn references tensor (so that the values are comparable; drawing
  the shuffles is then *not* in its time, which favours it).
- ours: ``seq2reads.interpret.attributions.deeplift_shap``: tangermeme's DeepLIFT rules (hooks),
  shuffles drawn once and shared by all targets (included in the time), one forward pass per
  batch of pairs for all targets followed by one backward pass per target, deltas from the same
  forward outputs. Same batch size (32 pairs) as tangermeme's default.

Prints one JSON line (seconds, speed-up, Pearson r of the hypothetical attributions over all
values) and writes it to ``benchmarks/results/attribution.json``.

Usage: ``python benchmarks/attribution.py [--n 16] [--shuffles 20] [--run RUN]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="sequences")
    ap.add_argument("--shuffles", type=int, default=20)
    ap.add_argument("--run", help="a trained run directory (default: the default BPNet, random weights)")
    ap.add_argument("--cells", type=int, default=3, help="cell types attributed (3 targets each)")
    ap.add_argument("--batch-size", type=int, default=32, help="our sequence-reference pairs per pass")
    args = ap.parse_args()

    from tangermeme.deep_lift_shap import deep_lift_shap
    from tangermeme.utils import random_one_hot

    from seq2reads.interpret import attributions as A
    from seq2reads.interpret.targets import make_target

    torch.manual_seed(0)
    if args.run:
        from seq2reads.models.io import load_model

        model = load_model(Path(args.run), "cpu").eval()
        L = model.input_len if hasattr(model, "input_len") else 2114
        what = f"trained run {args.run}"
    else:
        from seq2reads.models.bpnet import BPNet

        model = BPNet(n_cell_types=3, output_len=1000).eval()
        L = 2114
        what = "default BPNet (64 filters, 8 layers, 3 cell types), random weights"
    X = random_one_hot((args.n, 4, L), random_state=0).float()
    n_cells = model.n_cell_types if hasattr(model, "n_cell_types") else 3
    pairs = [(c, t) for c in range(min(args.cells, n_cells)) for t in ("count", "profile_plus", "profile_minus")]

    # Warm-up (numba compilation of the shuffle, first-call overheads) outside the timings.
    A.deeplift_shap(model, X[:1], pairs[:1], n_shuffles=2, seed=0)

    t0 = time.perf_counter()
    ours = A.deeplift_shap(model, X, pairs, n_shuffles=args.shuffles, seed=0, batch_size=args.batch_size)
    t_ours = time.perf_counter() - t0

    refs = A.shuffled_references(X, args.shuffles, 0)  # the same references ours drew (chunk seed 0)
    assert args.n <= 32, "references are re-drawn per 32-sequence chunk; keep --n <= 32 for identical refs"
    t0 = time.perf_counter()
    theirs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for c, t in pairs:
            theirs[(c, t)] = deep_lift_shap(make_target(model, c, t), X, references=refs, hypothetical=True,
                                            device="cpu").numpy()
    t_theirs = time.perf_counter() - t0

    r = {f"{c}.{t}": float(np.corrcoef(ours[(c, t)][0].ravel(), theirs[(c, t)].ravel())[0, 1]) for c, t in pairs}
    result = {
        "benchmark": "attribution",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared), torch {torch.__version__} CPU",
        "model": what, "n_sequences": args.n, "input_len": L, "shuffles": args.shuffles,
        "targets": [f"{c}.{t}" for c, t in pairs],
        "seconds_ours": round(t_ours, 2), "seconds_tangermeme": round(t_theirs, 2),
        "speedup": round(t_theirs / t_ours, 3), "pearson_min": round(min(r.values()), 6), "pearson": r,
        "max_abs_delta_count": float(np.abs(ours[(0, "count")][1]).max()),
        "torch_threads": torch.get_num_threads(),
        "note": "tangermeme given the same pre-drawn references (shuffling time not counted for it); "
                f"ours draws them (counted); batch {args.batch_size} pairs (tangermeme default 32)",
    }
    line = json.dumps(result)
    print(line)
    out = ROOT / "benchmarks" / "results" / "attribution.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from seq2reads.atomic import write_text_atomic

    write_text_atomic(out, line + "\n")


if __name__ == "__main__":
    main()
