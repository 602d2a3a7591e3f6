"""Accuracy: our BPNet vs bpnet-lite's BPNet on the default simulated data, beside the noise ceiling.

Both models see the same dataset, splits, augmented training batches (our loader: jitter +
reverse complement) and number of epochs, and are scored with OUR metrics (seq2reads.evaluation)
on the same un-augmented test windows. The noise ceiling is the simulator's true rates.

bpnet-lite side (``bpnetlite.bpnet.BPNet``), set up the way its own ``bpnet fit`` command does:
multi-output with ``n_outputs = 2 * C`` (one softmax over every cell type's two strands, one total
count), no control tracks, Adam at ``train.lr``, its ``_mixture_loss`` (profile MNLL on peaks only,
log1p count MSE on all windows), gradient clipping at 1, count-loss weight = mean per-track
training-peak total (its CLI rule), the best validation-loss epoch kept (as its ``fit`` does). Its
per-cell-type prediction follows its own design: the cell type's slice of the joint softmax,
renormalised, and the total count split by that slice's share. No reverse-complement averaging
at test time for either model.

Targets (issue 3): profile_pearson and count_pearson >= 0.9 x the ceiling's, and not worse than
bpnet-lite on profile_jsd (lower is better), profile_pearson and count_pearson.

Usage::

    python benchmarks/accuracy.py [--epochs 10] [--workdir DIR] [--regions 3000] [--set KEY=VALUE ...]

``--set`` shrinks the problem for a slow machine (e.g. ``--set window.input=1024 --set
window.output=512 --set model.filters=32 --set model.layers=6``); the overrides are recorded.

Prints one JSON line and writes it to ``benchmarks/results/accuracy.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE = ("profile_pearson", "profile_spearman", "profile_jsd", "profile_mnll", "count_pearson",
            "count_spearman", "count_mse")


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return f"{platform.machine()} {os.cpu_count()} CPU cores" + (f", {gpu}" if gpu else "") + f", torch {torch.__version__}"


def train_bpnet_lite(cfg, store, epochs: int, device: str, log=print):
    """Train bpnet-lite's BPNet on our loader's batches; returns (model, seconds, count weight)."""
    from bpnetlite.bpnet import BPNet
    from bpnetlite.losses import _mixture_loss

    from seq2reads.data.loader import S2RDataModule, center_crop, iter_batches

    torch.manual_seed(cfg.train.seed)
    C, Lin, Lout = len(store.samples), store.input_len, store.output_len
    is_peak = torch.from_numpy((store.regions["kind"].to_numpy() == "peak").astype(np.int64))

    # Count-loss weight: bpnet-lite's CLI rule, the mean per-track total of the training peaks.
    train_peaks = store.indices("train", kinds=("peak",))
    totals = [center_crop(b["signal"], Lout).sum(-1).reshape(len(b["index"]), -1)
              for b in iter_batches(store, train_peaks, 256)]
    count_weight = float(torch.cat(totals).mean())

    model = BPNet(n_filters=cfg.model.filters, n_layers=cfg.model.layers, n_outputs=2 * C, n_control_tracks=0,
                  count_loss_weight=count_weight, trimming=(Lin - Lout) // 2, verbose=False).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    dm = S2RDataModule(store, batch_size=cfg.train.batch_size, jitter=True, revcomp=cfg.train.revcomp,
                       seed=cfg.train.seed)
    best, best_state = float("inf"), None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in dm.train_dataloader():
            X = batch["seq"].to(device)
            y = center_crop(batch["signal"], Lout).reshape(len(X), 2 * C, Lout).to(device)
            opt.zero_grad()
            logits, logc = model(X)
            _, _, loss = _mixture_loss(y, logits, logc, model.count_loss_weight, is_peak[batch["index"]].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        model.eval()
        val, n = 0.0, 0
        with torch.no_grad():
            for batch in dm.val_dataloader():
                X = batch["seq"].to(device)
                y = center_crop(batch["signal"], Lout).reshape(len(X), 2 * C, Lout).to(device)
                logits, logc = model(X)
                val += float(_mixture_loss(y, logits, logc, model.count_loss_weight)[2]) * len(X)
                n += len(X)
        val /= max(n, 1)
        log(f"bpnet-lite epoch {epoch + 1}/{epochs}: val loss {val:.3f}")
        if val < best:
            best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), seconds, count_weight


def bpnet_lite_predictor(model, C: int, Lout: int, device: str, batch_size: int = 64):
    """fn(batch) -> (probs (B, C, 2, L), log_counts (B, C)) from bpnet-lite's joint outputs."""

    def fn(batch):
        with torch.inference_mode():
            logits, logc = [], []
            for b in range(0, len(batch["seq"]), batch_size):
                lg, lc = model(batch["seq"][b : b + batch_size].to(device))
                logits.append(lg.float().cpu())
                logc.append(lc.float().cpu())
        logits = torch.cat(logits).double().reshape(-1, C, 2, Lout)
        logc = torch.cat(logc).double().reshape(-1)
        logp = torch.log_softmax(logits.reshape(len(logits), -1), dim=-1).reshape(-1, C, 2 * Lout)
        share = torch.logsumexp(logp, dim=-1)  # (B, C) log share of each cell type
        probs = torch.softmax(logits.reshape(-1, C, 2 * Lout), dim=-1).reshape(-1, C, 2, Lout)
        total = torch.expm1(logc).clamp_min(0)[:, None] * share.exp()  # expected count per cell type
        return probs.numpy(), torch.log1p(total).numpy()

    return fn


def train_ours(work: Path, regions: int, seed: int, epochs: int, sets: list[str], log=print):
    """Simulate (unless ``work/sim`` exists), prepare, train and evaluate our BPNet in ``work``.

    Returns (config, ``metrics.json`` dict, training seconds). ``sets`` are config overrides.
    """
    from seq2reads.config import load_config
    from seq2reads.data.simulate import simulate
    from seq2reads.data.store import prepare
    from seq2reads.evaluation.evaluate import evaluate_run
    from seq2reads.training.trainer import train

    sim = work / "sim"
    if not (sim / "truth.json").exists():
        log(f"simulating {regions} regions ...")
        simulate(sim, seed=seed, n_regions=regions)
    cfg = load_config(sim / "config.yaml", [f"run_dir={work / 'run'}", f"train.max_epochs={epochs}",
                                            f"train.seed={seed}", *sets])
    if not (cfg.run_path / "dataset").exists():
        log("preparing ...")
        prepare(cfg)
    log(f"training seq2reads BPNet for {epochs} epochs ...")
    t0 = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - t0
    return cfg, evaluate_run(cfg, progress=False), seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--regions", type=int, default=3000, help="simulated regions (simulate's default: 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="keep the data and runs here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both models (e.g. window.input=1024); recorded in the JSON line")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/accuracy.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from seq2reads.atomic import write_text_atomic
    from seq2reads.data.store import open_dataset
    from seq2reads.evaluation.evaluate import evaluate_predictors

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="s2r-accuracy-")
        work = Path(tmp.name)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    sim = work / "sim"
    cfg, ours, ours_seconds = train_ours(work, args.regions, args.seed, args.epochs, args.set, log)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    store = open_dataset(cfg.run_path / "dataset")
    log(f"training bpnet-lite BPNet for {args.epochs} epochs ...")
    lite, lite_seconds, lite_cw = train_bpnet_lite(cfg, store, args.epochs, device, log)
    idx = store.indices("test")
    lite_eval = evaluate_predictors(store, idx, {"lite": bpnet_lite_predictor(lite, len(store.samples),
                                                                              store.output_len, device)},
                                    cfg.train.batch_size, progress=False)["lite"]

    def pick(d):
        return {k: d[k] for k in HEADLINE} if d else None

    ceil = ours["ceiling"]["overall"] if ours.get("ceiling") else None
    o, lt = ours["test"]["overall"], lite_eval["overall"]
    targets = {}
    if ceil:
        for k in ("profile_pearson", "count_pearson"):
            targets[f"{k}_ge_0.9_ceiling"] = bool(o[k] is not None and o[k] >= 0.9 * ceil[k])

    def not_worse(ours, lite, lower_is_better=False):  # None: undefined (a constant prediction's r)
        if ours is None or lite is None:
            return ours is not None
        return bool(ours <= lite if lower_is_better else ours >= lite)

    targets["profile_jsd_not_worse_than_bpnet_lite"] = not_worse(o["profile_jsd"], lt["profile_jsd"], True)
    for k in ("profile_pearson", "count_pearson"):
        targets[f"{k}_not_below_bpnet_lite"] = not_worse(o[k], lt[k])
    line = {
        "benchmark": "accuracy",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "data": {"simulated_regions": args.regions, "seed": args.seed, "cell_types": list(store.samples),
                 "simulator_version": json.loads((sim / "truth.json").read_text()).get("version"),
                 "window": [store.input_len, store.output_len], "test_peaks": ours["info"]["n_windows"]["peaks"]},
        "epochs": args.epochs,
        "overrides": args.set,
        "model": {"filters": cfg.model.filters, "layers": cfg.model.layers, "batch_size": cfg.train.batch_size},
        "metrics_scope": "test peaks, mean over cell types (SPEC metrics, seq2reads.evaluation)",
        "seq2reads": pick(o),
        "bpnet_lite": pick(lt),
        "ceiling": pick(ceil),
        "baseline": pick(ours["baseline"]["overall"]),
        "train_seconds": {"seq2reads": round(ours_seconds, 1), "bpnet_lite": round(lite_seconds, 1)},
        "bpnet_lite_count_loss_weight": round(lite_cw, 3),
        "target": "profile/count pearson >= 0.9 x ceiling; not worse than bpnet-lite on jsd, profile/count pearson",
        "targets_met": targets,
    }
    text = json.dumps(line)
    print(text)
    if not args.no_write:
        write_text_atomic(RESULTS / "accuracy.json", text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return line


if __name__ == "__main__":
    main()
