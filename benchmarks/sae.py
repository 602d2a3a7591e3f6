"""SAE benchmarks (SPEC.md, "Performance"; issue "Sparse autoencoders").

Two parts, each printing one JSON line and writing it under ``benchmarks/results/``:

``--part scale`` (``sae_scale.json``)
    10^7 vectors of width 256 go through the real activation store (:class:`StoreWriter`, float16
    Zarr) and the real streaming training / evaluation code; peak memory (``ru_maxrss``) must stay
    <= 4 GB. The vectors are synthesised from a random linear model of sparse features (1024 unit
    directions, 16 active per vector, exponential magnitudes, a constant offset and Gaussian noise)
    because no model here emits 10^7 embeddings in reasonable CPU time; everything after the
    synthesis is the production path.

``--part targets`` (``sae_targets.json``)
    ``sae_run`` on a trained encoder run on the default simulated data (``--run``; when absent the
    data is simulated with the defaults and an encoder trained with the default encoder config plus
    any ``--set`` overrides, which are recorded in the JSON). Checks: FVU <= 0.2 at K = 16 with 256
    latents, dead latents <= 10 %, and for every planted cell-type-specific TF at least one latent
    enriched in that TF's cell type (log odds >= 1, q < 0.01) whose top windows carry the motif
    (TOMTOM best match of its TF-MoDISco patterns is that TF, or >= 50 % of its top windows contain
    a planted instance of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores ({platform.node() or 'unknown'})"


def _emit(name: str, rec: dict) -> None:
    rec = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": _machine(), **rec}
    line = json.dumps(rec, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(line, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from seq2reads.atomic import write_text_atomic

    write_text_atomic(RESULTS / f"{name}.json", line + "\n")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def scale(n_vectors: int, d: int, latents: int, k: int, epochs: int, batch_size: int, workdir: Path,
          threads: int | None = None) -> dict:
    import scipy.sparse as sp
    import torch

    from seq2reads.atomic import atomic_path
    from seq2reads.sae.activations import CHUNK, StoreWriter, open_store
    from seq2reads.sae.train import evaluate_sae, train_sae

    torch.set_num_threads(threads or max(1, min(4, os.cpu_count() or 1)))
    rng = np.random.default_rng(0)
    n_feat, k_true = 1024, 16
    dic = rng.normal(size=(n_feat, d)).astype(np.float32)
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    offset = rng.normal(2.0, 0.5, size=d).astype(np.float32)
    per_window, block = 256, CHUNK
    path = workdir / "scale_acts"
    t0 = time.perf_counter()
    with atomic_path(path) as tmp:
        w = StoreWriter(tmp, d, {"model_hash": "synthetic", "layer": "synthetic"})
        for s in range(0, n_vectors, block):
            n = min(block, n_vectors - s)
            cols = rng.integers(0, n_feat, size=n * k_true)
            vals = (rng.exponential(1.0, size=n * k_true) + 0.5).astype(np.float32)
            z = sp.csr_matrix((vals, cols, np.arange(0, n * k_true + 1, k_true)), shape=(n, n_feat))
            x = np.asarray(z @ dic) + offset + 0.05 * rng.standard_normal((n, d), dtype=np.float32)
            gidx = np.arange(s, s + n)
            w.add_vectors(x, gidx // per_window, gidx % per_window, (gidx // per_window) % 3)
        n_windows = -(-n_vectors // per_window)
        wins = np.arange(n_windows)
        w.close(wins, wins % 100 == 99)  # 1 % of windows held out for evaluation
    t_store = time.perf_counter() - t0
    store = open_store(path, "synthetic")
    res = train_sae(store, latents, k, epochs=epochs, batch_size=batch_size, lr=1e-3, progress=False)
    t1 = time.perf_counter()
    ev = evaluate_sae(res.sae, store)
    t_eval = time.perf_counter() - t1
    disk_gb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024**3
    return {"n_vectors": store.n_vectors, "d": d, "latents": latents, "k": k, "epochs": epochs,
            "batch_size": batch_size, "store_vectors_per_s": store.n_vectors / t_store,
            "train_vectors_per_s": res.vectors_per_s, "eval_vectors_per_s": store.n_vectors / t_eval,
            "store_seconds": t_store, "train_seconds": res.seconds, "store_disk_gb": disk_gb,
            "fvu": ev["fvu"], "mean_l0": ev["mean_l0"], "dead_fraction": ev["dead_fraction"],
            "peak_rss_gb": _peak_gb(), "target_peak_rss_gb": 4.0, "pass": _peak_gb() <= 4.0,
            "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}


def targets(run: Path | None, workdir: Path, overrides: list[str]) -> dict:
    import pandas as pd

    from seq2reads.config import load_config, load_run_config
    from seq2reads.data.simulate import load_truth, simulate
    from seq2reads.sae.pipeline import sae_run

    sae_set = ["sae.latents=256", "sae.k=16", "sae.kind=topk"]
    t0 = time.perf_counter()
    if run is None:
        sim = workdir / "sim"
        if not (sim / "config.yaml").exists():
            simulate(sim)
        run = workdir / "encoder_run"
        # the simulator's config names a BPNet; the model section is replaced whole (default encoder)
        cfg = load_config(sim / "config.yaml", [f"run_dir={run}", "model={type: encoder}", *overrides, *sae_set])
        if not (run / "model" / "model.safetensors").exists():
            from seq2reads.data.store import prepare
            from seq2reads.training.trainer import train

            prepare(cfg)
            train(cfg)
    else:
        cfg = load_run_config(run, [*overrides, *sae_set])
    if cfg.model.type != "encoder":
        raise SystemExit(f"{run} is a {cfg.model.type} run; the targets are defined on the encoder")
    t_model = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = sae_run(cfg, progress=False)
    t_sae = time.perf_counter() - t1
    metrics = json.loads((out / "metrics.json").read_text())
    feats = pd.read_csv(out / "features.tsv", sep="\t")
    enr = pd.read_csv(out / "enrichment.tsv", sep="\t")
    planted = json.loads((out / "planted.json").read_text()) if (out / "planted.json").exists() else {}
    truth = load_truth(cfg.truth)
    specific = [m for m in truth["motifs"] if m.get("role") == "specific"]
    per_tf = {}
    for m in specific:
        cell = m["cell_types"][0]
        hits = enr[(enr.cell_type == cell) & (enr.log_odds >= 1) & (enr.q < 0.01)]
        best = None
        for lat in hits.latent:
            ov = planted.get(str(int(lat)), {}).get(m["name"], [0.0, 0.0])
            row = feats[feats.latent == lat].iloc[0]
            name = str(row.best_match_name) if isinstance(row.best_match_name, str) else ""
            tomtom = bool(name) and name.upper() == m["name"].upper() and row.match_q < 0.05
            ok = tomtom or ov[0] >= 0.5
            cand = {"latent": int(lat), "log_odds": float(hits[hits.latent == lat].log_odds.iloc[0]),
                    "q": float(hits[hits.latent == lat].q.iloc[0]), "window_frac": ov[0], "site_frac": ov[1],
                    "tomtom": tomtom, "ok": ok}
            if best is None or (cand["ok"], cand["window_frac"]) > (best["ok"], best["window_frac"]):
                best = cand
        per_tf[m["name"]] = {"cell_type": cell, "n_enriched_latents": int(len(hits)), "best": best,
                             "pass": bool(best and best["ok"])}
    checks = {"fvu<=0.2": metrics["fvu"] <= 0.2, "dead<=0.1": metrics["dead_fraction"] <= 0.1,
              "every_specific_tf": all(v["pass"] for v in per_tf.values())}
    return {"run": str(run), "overrides": overrides, "model": cfg.model.model_dump(), "sae": cfg.sae.model_dump(),
            "fvu": metrics["fvu"], "mean_l0": metrics["mean_l0"], "dead_fraction": metrics["dead_fraction"],
            "delta_loss": metrics["delta_loss"], "delta_loss_rel": metrics["delta_loss_rel"],
            "vectors_per_s": metrics["vectors_per_s"], "n_vectors": metrics["n_vectors"],
            "layer": metrics["layer"], "n_enriched": metrics["n_enriched"], "per_tf": per_tf, "checks": checks,
            "pass": all(checks.values()), "model_seconds": t_model, "sae_seconds": t_sae, "peak_rss_gb": _peak_gb()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["scale", "targets"], required=True)
    p.add_argument("--vectors", type=float, default=1e7)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--latents", type=int, default=256)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--run", type=Path, help="trained encoder run directory (targets)")
    p.add_argument("--set", action="append", default=[], help="config overrides when training (targets)")
    p.add_argument("--workdir", type=Path, default=HERE / ".work")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (scale; default: up to 4)")
    a = p.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.part == "scale":
        rec = scale(int(a.vectors), a.d, a.latents, a.k, a.epochs, a.batch_size, a.workdir, a.threads)
        _emit("sae_scale", rec)
    else:
        _emit("sae_targets", targets(a.run, a.workdir, a.set))
    return 0


if __name__ == "__main__":
    sys.exit(main())
