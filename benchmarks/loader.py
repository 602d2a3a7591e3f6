"""Loader throughput: augmented training windows/s from a prepared store.

2114 bp windows (jitter 128), 3 cell types, batch 64, jitter + reverse complement on, through the
same DataLoader the trainer uses (in memory, and streamed from Zarr chunks). Prints one JSON line
and writes it to benchmarks/results/loader.json. Target (SPEC.md): >= 20,000 windows/s on 2 cores.

    python benchmarks/loader.py [--regions 3000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def throughput(dm, seconds: float) -> float:
    """Windows/s of full passes over the training loader, for at least ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for batch in dm.train_dataloader():
            n += batch["seq"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="reuse a folder (keeps the simulated data)")
    args = ap.parse_args()

    from seq2reads.config import load_config
    from seq2reads.data.loader import S2RDataModule
    from seq2reads.data.simulate import simulate
    from seq2reads.data.store import open_dataset, prepare

    work = Path(args.workdir or tempfile.mkdtemp(prefix="s2r-loader-"))
    sim = work / "sim"
    if not (sim / "config.yaml").exists():
        simulate(sim, seed=0, n_cell_types=3, n_regions=args.regions)
    cfg = load_config(sim / "config.yaml", [f"run_dir={work / 'run'}"])
    if not (cfg.run_path / "dataset").exists():
        prepare(cfg)
    store = open_dataset(cfg.run_path / "dataset")
    n_train = len(store.indices("train"))
    res = {"benchmark": "loader", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "window": store.input_len,
           "span": store.span, "cell_types": len(store.samples), "batch_size": args.batch_size,
           "train_windows": n_train, "augment": "jitter+revcomp"}
    for mode, in_memory in (("memory", True), ("streaming", False)):
        dm = S2RDataModule(store, batch_size=args.batch_size, jitter=True, revcomp=True, in_memory=in_memory)
        throughput(dm, 1.0)  # warm-up: builds the in-memory split / fills caches
        res[f"windows_per_s_{mode}"] = round(throughput(dm, args.seconds), 1)
    res["target_windows_per_s"] = 20000
    res["meets_target"] = bool(res["windows_per_s_memory"] >= 20000)
    line = json.dumps(res)
    print(line)
    out = Path(__file__).parent / "results" / "loader.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(line + "\n")
    return res


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
