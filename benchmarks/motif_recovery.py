"""Benchmark: are the planted motifs of the default simulated data recovered?

Pipeline: ``simulate`` (defaults: 3 cell types, 3000 regions) → ``prepare`` → ``train`` (the
default BPNet) → ``attribute`` → ``motifs`` → ``marginalize`` (every planted JASPAR matrix).
Training and interpretation settings can be reduced with ``--set`` (the defaults below are sized
for a 2-core CPU box; the JSON line records every override).

Scores (``truth.json`` lists the planted motifs, their JASPAR IDs, roles and cell types):

- ``recovery``: fraction of planted motifs with ≥ 50 instances that come back as a TF-MoDISco
  pattern (any cell type, target, sign) whose *best* TOMTOM match has q < 0.05 and is the planted
  matrix (same base ID) or a matrix of the same TF family (JASPAR's family annotation). Target:
  ≥ 0.9. ``recovery_strict``: the planted matrix itself among a pattern's three best matches
  (q < 0.05). The family rule is loose for the zinc-finger families (a GC box whose best match is
  PATZ1 counts for REST; GC-rich patterns matching CTCF count for YY1) and the strict one misses
  paralogs (an ETS core matching ETV4 does not count for ELK1), so both are reported.
- ``specificity``: for each cell-type-specific motif, found in its cell type, and in every other
  cell type either not found or with at most half the seqlets, counting the patterns whose sign is
  the motif's direction of effect (positive for an activator; ``ok_any_sign`` counts every sign).
  With the ``count_specific`` target (a cell type's log count minus the mean of the others') a
  specific activator shows as a positive pattern in its cell type and a negative one elsewhere.
- ``marginalisation``: for every activating motif (effect > 0), the mean change of predicted log
  counts is > 0 in each cell type where it is active.

Prints one JSON line and writes it to ``benchmarks/results/motif_recovery.json`` (with
``--variant V``: ``motif_recovery_V.json``, e.g. ``--variant attention --set model.attention_layers=1``).

Usage: ``python benchmarks/motif_recovery.py [--workdir DIR] [--set key=value ...] [--variant V]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_SET = [
    "train.max_epochs=8",
    "train.patience=3",
    "interpret.n_regions=1000",
    "interpret.shuffles=8",
    "interpret.targets=[count,count_specific]",
    "interpret.marginalize_n=64",
]


def score(truth: dict, motifs_tsv, effects_tsv, db, min_instances: int = 50) -> dict:
    """Recovery, specificity and marginalisation direction from the run's tables."""
    from seq2reads.interpret.jaspar import family_of

    def family(jid: str, planted: dict | None = None) -> set[str]:
        fam = set(filter(None, (planted or {}).get("tf_family") or [])) if planted else set()
        return fam | set(filter(None, family_of(db, jid).split("; ")))

    sig = motifs_tsv[motifs_tsv["match1_q"] < 0.05]
    planted = [m for m in truth["motifs"] if m["n_instances"] >= min_instances]
    per_motif, specific, marg = {}, {}, {}
    for m in planted:
        base = m["jaspar_id"].split(".")[0]
        fam = family(m["jaspar_id"], m)
        hit = sig[sig["match1_id"].astype(str).map(
            lambda j: j.split(".")[0] == base or bool(fam & family(j)))]
        # stricter: the planted matrix itself among a pattern's three best matches (q < 0.05). The
        # family rule credits zinc-finger families loosely (a GC box matching PATZ1 counts for REST,
        # GC-rich patterns matching CTCF count for YY1), so both are reported.
        own = np.zeros(len(motifs_tsv), bool)
        for k in (1, 2, 3):
            ids, qs = motifs_tsv.get(f"match{k}_id"), motifs_tsv.get(f"match{k}_q")
            if ids is not None and qs is not None:
                own |= (ids.astype(str).str.split(".").str[0] == base).to_numpy() & (qs < 0.05).to_numpy()
        per_motif[m["name"]] = {"jaspar_id": m["jaspar_id"], "role": m["role"], "n_instances": m["n_instances"],
                                "recovered": bool(len(hit)), "patterns": len(hit),
                                "seqlets_by_cell": hit.groupby("cell_type")["n_seqlets"].sum().to_dict(),
                                "recovered_strict": bool(own.any()),
                                "seqlets_by_cell_strict": motifs_tsv[own].groupby("cell_type")["n_seqlets"].sum().to_dict()}
        if m["role"] == "specific":
            # seqlets of the patterns that show the motif acting in its direction (positive patterns
            # for an activator): a negative count_specific pattern in another cell type says the
            # motif is weaker there than elsewhere, which is the specificity itself, not against it
            own_cells = m["cell_types"]
            want = "pos" if m["effect"] > 0 else "neg"

            def own_vs_others(rows):
                by = rows.groupby("cell_type")["n_seqlets"].sum().to_dict()
                n_own = int(sum(by.get(c, 0) for c in own_cells))
                others = [int(by.get(c, 0)) for c in truth["cell_types"] if c not in own_cells]
                return n_own, others, bool(n_own > 0 and all(o <= 0.5 * n_own for o in others))

            n_own, others, ok = own_vs_others(hit[hit["sign"] == want])
            specific[m["name"]] = {"sign": want, "own": n_own, "others": others, "ok": ok,
                                   "ok_any_sign": own_vs_others(hit)[2]}
    both = effects_tsv[effects_tsv["strand"] == "both"]
    for m in truth["motifs"]:
        if m["effect"] > 0 and m["role"] in ("shared", "specific"):
            rows = both[(both["motif_id"].str.split(".").str[0] == m["jaspar_id"].split(".")[0])]
            d = {c: float(rows[rows["cell_type"] == c]["delta_log_counts_mean"].mean()) for c in m["cell_types"]}
            marg[m["name"]] = {"delta_log_counts": d, "ok": bool(all(v > 0 for v in d.values()))}
    rec = [v["recovered"] for v in per_motif.values()]
    strict = [v["recovered_strict"] for v in per_motif.values()]
    return {"recovery": sum(rec) / max(len(rec), 1), "n_planted_ge50": len(rec),
            "recovery_strict": sum(strict) / max(len(strict), 1),
            "specificity_ok": sum(v["ok"] for v in specific.values()), "n_specific": len(specific),
            "marginalisation_ok": sum(v["ok"] for v in marg.values()), "n_activating": len(marg),
            "motifs": per_motif, "specific": specific, "marginalisation": marg}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/s2r_motif_recovery")
    ap.add_argument("--set", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", help="label of a non-default setting (e.g. attention): the line is written to "
                                      "motif_recovery_VARIANT.json, keeping the default model's file")
    args = ap.parse_args()

    import pandas as pd

    from seq2reads.config import load_config
    from seq2reads.data.simulate import load_truth, simulate
    from seq2reads.data.store import prepare
    from seq2reads.interpret.attributions import attribute_run
    from seq2reads.interpret.jaspar import load_jaspar
    from seq2reads.interpret.motifs import motifs_run
    from seq2reads.interpret.perturbation import marginalize_run
    from seq2reads.training.trainer import train

    wd = Path(args.workdir)
    sim = wd / "sim"
    times = {"simulate": None}
    t = time.perf_counter()
    if not (sim / "truth.json").exists():
        simulate(sim, seed=args.seed)
        times["simulate"] = round(time.perf_counter() - t, 1)
    overrides = [f"run_dir={wd / 'run'}", *DEFAULT_SET, *args.set]
    cfg = load_config(sim / "config.yaml", overrides)
    steps = [("prepare", lambda: prepare(cfg), wd / "run" / "dataset"),
             ("train", lambda: train(cfg), wd / "run" / "model" / "model.safetensors"),
             ("attribute", lambda: attribute_run(cfg), wd / "run" / "attributions" / "summary.json"),
             ("motifs", lambda: motifs_run(cfg), wd / "run" / "motifs" / "motifs.tsv")]
    for name, fn, done in steps:
        t = time.perf_counter()
        if done.exists():  # resumable: a finished step is not redone (its time is then null)
            times[name] = None
        else:
            fn()
            times[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {'reused' if times[name] is None else f'{times[name]} s'}", file=sys.stderr, flush=True)
    truth = load_truth(sim / "truth.json")
    t = time.perf_counter()
    marginalize_run(cfg, [m["jaspar_id"] for m in truth["motifs"]])
    times["marginalize"] = round(time.perf_counter() - t, 1)
    run = wd / "run"
    res = score(truth, pd.read_csv(run / "motifs" / "motifs.tsv", sep="\t"),
                pd.read_csv(run / "marginalize" / "effects.tsv", sep="\t"), load_jaspar(cfg.interpret.motif_db))
    metrics = {}
    if (run / "metrics.json").exists():
        metrics = json.loads((run / "metrics.json").read_text())
    result = {
        "benchmark": "motif_recovery", **({"variant": args.variant} if args.variant else {}),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared)",
        "overrides": overrides[1:], "seconds": times,
        "target_recovery": 0.9, **res, "model_metrics": metrics.get("test", {}).get("overall", {}),
    }
    line = json.dumps(result)
    print(line)
    from seq2reads.atomic import write_text_atomic

    name = f"motif_recovery_{args.variant}.json" if args.variant else "motif_recovery.json"
    write_text_atomic(ROOT / "benchmarks" / "results" / name, line + "\n")


if __name__ == "__main__":
    main()
