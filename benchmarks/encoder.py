"""Masked encoder benchmarks: training throughput/memory, and S2R accuracy beside the CNN.

``speed``: training steps of the masked task (span masks, all four losses, adaptive balancing with
its extra gradient evaluations, AdamW step) on random one-hot windows and Poisson reads, at the
default encoder size (d_model 128, depth 4, 4 heads, patch 1, 2114 bp windows) and at the patched
setting the accuracy run uses; tokens/s = windows x tokens per window / step time. Each setting runs
in a fresh process so its peak resident memory (``resource.getrusage``, ``ru_maxrss``) is its own;
``rss_before_mb`` is the process after building the model, before the first step. On a GPU the
peak allocated CUDA memory is reported instead.

``accuracy``: on the default simulated data (``seq2reads simulate`` defaults: 3000 regions, 3 cell
types, 2114/1000 bp windows), train ``model.type=encoder`` through ``seq2reads.training.trainer.train``
in an S2R-heavy setting (``s2r_prob`` 0.75) and score S2R mode with ``evaluate_run`` (the same
metrics as the CNN) beside the true-rate ceiling; the CNN's figures come from the same data in
``benchmarks/results/accuracy.json`` when it exists (or ``--with-cnn`` trains it here). The loss
curves (``RUN/logs/metrics.csv``) are copied to ``benchmarks/results/encoder_loss_curve.csv``.

Usage::

    python benchmarks/encoder.py speed [--threads 2]
    python benchmarks/encoder.py accuracy [--epochs 8] [--workdir DIR] [--patch 14] [--reuse]

Prints JSON lines and writes them to ``benchmarks/results/encoder_speed.json`` /
``encoder_accuracy.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HEADLINE = ("profile_pearson", "profile_jsd", "profile_mnll", "count_pearson", "count_spearman", "count_mse")


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return f"{platform.machine()} {os.cpu_count()} CPU cores" + (f", {gpu}" if gpu else "") + f", torch {torch.__version__}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _write(name: str, lines: list[dict]) -> None:
    from seq2reads.atomic import write_text_atomic

    write_text_atomic(RESULTS / name, "".join(json.dumps(x) + "\n" for x in lines))


# -- speed -------------------------------------------------------------------------------------
def _speed_one(spec: dict) -> dict:
    """One setting, in this process: returns tokens/s and memory."""
    from seq2reads.config import validate_config
    from seq2reads.models.encoder import MaskedEncoder
    from seq2reads.training.encoder_task import MaskedEncoderTask

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cells = ["A", "B", "C"]
    length, out = spec["input"], spec["output"]
    cfg = validate_config({
        "run_dir": "x", "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": c, "plus": "p.bw", "minus": "m.bw"} for c in cells],
        "window": {"input": length, "output": out, "jitter": 0},
        "model": {"type": "encoder", **spec["model"]},
    })
    torch.manual_seed(0)
    model = MaskedEncoder.from_config(cfg.model, len(cells), length, out).to(device)
    task = MaskedEncoderTask(cfg, model, {"samples": cells}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = spec["batch"]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 4, (b, length), generator=g)
    batch = {"seq": torch.nn.functional.one_hot(codes, 4).permute(0, 2, 1).float().to(device),
             "signal": torch.poisson(torch.full((b, 3, 2, length), 0.5), generator=g).to(device),
             "mask": torch.ones(b, length, dtype=torch.bool, device=device)}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step():
        parts, *_ = task._masked_step(batch)
        losses = {k: v for k, (v, n) in parts.items() if n > 0}
        task.balancer.update(losses, model.last_shared_layer())
        loss = task.balancer.combine(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt_step = (time.perf_counter() - t0) / spec["steps"]
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_step = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / spec["steps"]
    tokens = length // cfg.model.patch
    res = {
        "setting": spec["name"], "window": [length, out], "model": spec["model"], "batch": b,
        "tokens_per_window": tokens, "params": sum(p.numel() for p in model.parameters()),
        "step_seconds": round(dt_step, 3), "windows_per_s": round(b / dt_step, 2),
        "tokens_per_s": round(b * tokens / dt_step, 1), "bases_per_s": round(b * length / dt_step, 1),
        "device": device, "threads": torch.get_num_threads(),
        # the box is shared: CPU seconds per step and the load average say how much of the wall
        # time was ours
        "cpu_seconds_per_step": round(cpu_step, 3), "tokens_per_cpu_s": round(b * tokens / max(cpu_step, 1e-9), 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if device == "cuda":
        res["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        res["rss_before_mb"] = round(rss_before, 1)
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return res


SPEED_SETTINGS = [
    {"name": "default (patch 1, 2114 bp)", "input": 2114, "output": 1000, "batch": 4, "steps": 2,
     "model": {"d_model": 128, "depth": 4, "heads": 4, "patch": 1}},
    {"name": "accuracy-run setting (patch 14, 2114 bp)", "input": 2114, "output": 1000, "batch": 16, "steps": 3,
     "model": {"d_model": 128, "depth": 4, "heads": 4, "patch": 14}},
    {"name": "256 bp at base resolution", "input": 256, "output": 128, "batch": 16, "steps": 3,
     "model": {"d_model": 128, "depth": 4, "heads": 4, "patch": 1}},
]


def speed(args) -> list[dict]:
    lines = []
    for spec in SPEED_SETTINGS:
        spec = {**spec, "threads": args.threads}
        out = subprocess.run([sys.executable, __file__, "_one", json.dumps(spec)], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        res = json.loads(out.stdout.strip().splitlines()[-1])
        line = {"benchmark": "encoder_speed", "date": _now(), "machine": _machine(), **res}
        print(json.dumps(line), flush=True)
        lines.append(line)
    if not args.no_write:
        _write("encoder_speed.json", lines)
    return lines


# -- accuracy ----------------------------------------------------------------------------------
def _two_phase_note(csv_path: Path) -> dict:
    """Summarise the training curve of the read loss: value at each tenth of training, and
    whether a plateau is followed by a later, steeper drop (a two-phase curve)."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(csv_path)
    col = "train/loss_reads"
    if col not in df:
        return {"note": "no train/loss_reads column"}
    y = df[col].dropna().to_numpy()
    if len(y) < 20:
        return {"note": "too few steps"}
    k = max(1, len(y) // 20)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    tenths = [float(smooth[int(i * (len(smooth) - 1) / 10)]) for i in range(11)]
    drops = -np.diff(tenths)
    # two-phase: a segment with almost no progress (< 10% of the total drop) followed by a later
    # segment that drops at least 3x more
    total = max(tenths[0] - tenths[-1], 1e-12)
    two_phase = any(drops[i] < 0.1 * total and drops[j] > 3 * max(drops[i], 0) and drops[j] > 0.1 * total
                    for i in range(1, len(drops)) for j in range(i + 1, len(drops)))
    return {"read_loss_at_tenths": [round(t, 4) for t in tenths], "two_phase_drop_visible": bool(two_phase)}


def encoder_config(sim: Path, patch: int) -> Path:
    """The simulator's config with its model section replaced by an encoder one (same folder, so
    relative paths still resolve)."""
    import yaml

    raw = yaml.safe_load((sim / "config.yaml").read_text())
    raw["model"] = {"type": "encoder", "patch": patch}
    out = sim / "config.encoder.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def accuracy(args) -> dict:
    from seq2reads.config import load_config
    from seq2reads.data.simulate import simulate
    from seq2reads.data.store import prepare
    from seq2reads.evaluation.evaluate import evaluate_run
    from seq2reads.training.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    sim = work / "sim"
    if not (sim / "truth.json").exists():
        log("simulating ...")
        simulate(sim, seed=args.seed, n_regions=args.regions)
    cfg = load_config(encoder_config(sim, args.patch), [
        f"run_dir={work / 'encoder'}", f"train.max_epochs={args.epochs}", f"train.seed={args.seed}",
        f"train.batch_size={args.batch_size}", f"train.patience={args.epochs}", f"model.s2r_prob={args.s2r_prob}",
        f"model.d_model={args.d_model}", f"model.depth={args.depth}", "model.heads=4", *args.set])
    if not (cfg.run_path / "dataset").exists():
        log("preparing ...")
        prepare(cfg)
    if args.reuse and (cfg.run_path / "model" / "model.safetensors").exists():
        # Score a finished run of the same settings again (e.g. after the CNN's accuracy.json was
        # regenerated); the training time comes from the run's own start/end records.
        from seq2reads.training.trainer import read_history

        hist = read_history(cfg.run_path)
        stamp = lambda h: dt.datetime.strptime(h["time"], "%Y-%m-%dT%H:%M:%S").timestamp()  # noqa: E731
        seconds = stamp([h for h in hist if h["event"] == "end"][-1]) - stamp(hist[0])
        log(f"reusing the trained run in {cfg.run_path}")
    else:
        log(f"training the encoder for {args.epochs} epochs ...")
        t0 = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - t0
    res = evaluate_run(cfg, progress=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    curve = cfg.run_path / "logs" / "metrics.csv"
    curve_note = {}
    if curve.exists():
        if not args.no_write:  # --no-write leaves every file under benchmarks/results/ as it is
            shutil.copyfile(curve, RESULTS / "encoder_loss_curve.csv")
        curve_note = _two_phase_note(curve)

    cnn = None
    acc_file = RESULTS / "accuracy.json"
    if acc_file.exists():
        try:
            line = json.loads(acc_file.read_text().strip().splitlines()[-1])
            cnn = {"metrics": line.get("seq2reads"), "source": "benchmarks/results/accuracy.json",
                   "date": line.get("date"), "epochs": line.get("epochs"), "data": line.get("data")}
        except (ValueError, IndexError):
            cnn = None

    def pick(d):
        return {k: d.get(k) for k in HEADLINE} if d else None

    o = res["test"]["overall"]
    ceil = res["ceiling"]
    targets = {}
    if ceil:
        for k in ("profile_pearson", "count_pearson"):
            targets[f"{k}_ge_0.8_ceiling"] = bool(o[k] is not None and o[k] >= 0.8 * ceil[k])
    if cnn and cnn["metrics"]:
        for k in ("profile_pearson", "count_pearson"):
            targets[f"{k}_ge_cnn"] = bool(o[k] is not None and cnn["metrics"].get(k) is not None
                                          and o[k] >= cnn["metrics"][k])
    line = {
        "benchmark": "encoder_accuracy", "date": _now(), "machine": _machine(),
        "data": {"simulated_regions": args.regions, "seed": args.seed, "cell_types": res["info"]["cell_types"],
                 "simulator_version": json.loads((work / "sim" / "truth.json").read_text()).get("version"),
                 "window": [cfg.window.input, cfg.window.output], "test_peaks": res["info"]["n_windows"]["peaks"]},
        "model": cfg.model.model_dump(mode="json"), "epochs": args.epochs, "batch_size": args.batch_size,
        "train_seconds": round(seconds, 1),
        "metrics_scope": "S2R mode, test peaks, mean over cell types (SPEC metrics, evaluate_run)",
        "encoder_s2r": pick(o), "ceiling": pick(ceil), "baseline": pick(res["baseline"]),
        "cnn": cnn, "masked": res.get("masked"), "loss_curve": curve_note,
        "target": "S2R profile/count pearson >= 0.8 x ceiling (aim: >= CNN)", "targets_met": targets,
    }
    print(json.dumps(line), flush=True)
    if not args.no_write:
        _write("encoder_accuracy.json", [line])
    return line


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        print(json.dumps(_speed_one(json.loads(argv[1]))))
        return None
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--threads", type=int, default=None)
    sp.add_argument("--no-write", action="store_true")
    ap = sub.add_parser("accuracy")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--regions", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patch", type=int, default=14, help="2114 = 2 x 7 x 151: 14 gives 151 tokens")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--s2r-prob", type=float, default=0.75)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--workdir", default="/tmp/s2r-encoder-bench")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="score the finished run in --workdir instead of retraining")
    args = p.parse_args(argv)
    return speed(args) if args.what == "speed" else accuracy(args)


if __name__ == "__main__":
    main()
