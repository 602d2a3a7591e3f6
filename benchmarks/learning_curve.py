"""Diagnostic: our CNN's test metrics against the number of simulated regions (a learning curve).

Issue 3's accuracy targets (profile / count Pearson >= 0.9 x the noise ceiling) are measured on the
default simulated data: 3,000 regions, of which ~1,800 are training peaks. This script asks whether
the gap to them is the model's or the data's: for each ``--regions N`` it simulates N regions (same
seed, same simulator defaults otherwise), prepares, trains and evaluates our BPNet exactly as
``benchmarks/accuracy.py`` does (:func:`accuracy.train_ours`, same ``--set`` overrides and epochs)
and records the test-peak metrics beside the ceiling. bpnet-lite is not trained here (its side of
the comparison is ``accuracy.py``'s).

Usage::

    python benchmarks/learning_curve.py --workdir DIR --regions 3000 10000 30000 [--epochs 30]
        [--threads 2] [--set KEY=VALUE ...] [--no-write]

Each size keeps its data and run in ``DIR/nN``; its figures go to ``DIR/nN/point.json`` once
evaluated, and a size whose ``point.json`` exists is not retrained (an interrupted curve
resumes). Prints one JSON line and writes it to ``benchmarks/results/learning_curve.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from accuracy import HEADLINE, RESULTS, _machine, train_ours  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="one sub-folder nN per size (kept; a finished size is reused)")
    p.add_argument("--regions", type=int, nargs="+", default=[3000, 10000, 30000])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from seq2reads.atomic import write_text_atomic

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    points = []
    for n in args.regions:
        work = Path(args.workdir) / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        done = work / "point.json"
        if done.exists():
            points.append(json.loads(done.read_text()))
            continue
        _, m, seconds = train_ours(work, n, args.seed, args.epochs, args.set, log)
        o, ceil = m["test"]["overall"], m["ceiling"]["overall"]
        point = {"regions": n, "test_peaks": m["info"]["n_windows"]["peaks"],
                 "train_seconds": round(seconds, 1),
                 "seq2reads": {k: o[k] for k in HEADLINE}, "ceiling": {k: ceil[k] for k in HEADLINE},
                 "fraction_of_ceiling": {k: round(o[k] / ceil[k], 4) for k in ("profile_pearson", "count_pearson")}}
        write_text_atomic(done, json.dumps(point) + "\n")
        log(json.dumps(point))
        points.append(point)
    line = {"benchmark": "learning_curve",
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(), "epochs": args.epochs, "seed": args.seed, "overrides": args.set,
            "metrics_scope": "test peaks, mean over cell types (SPEC metrics, seq2reads.evaluation)",
            "target": "issue 3: profile/count pearson >= 0.9 x ceiling (read off fraction_of_ceiling)",
            # one figure per size first (what the README's table shows), then every point in full
            **{k: {str(q["regions"]): round(q["seq2reads"][k], 4) for q in points}
               for k in ("profile_pearson", "count_pearson")},
            "ceiling": {k: {str(q["regions"]): round(q["ceiling"][k], 4) for q in points}
                        for k in ("profile_pearson", "count_pearson")},
            "points": {str(q["regions"]): q for q in points}}
    text = json.dumps(line)
    print(text)
    if not args.no_write:
        write_text_atomic(RESULTS / "learning_curve.json", text + "\n")
    return line


if __name__ == "__main__":
    main()
