"""Training-step throughput: seq2reads' BPNet vs bpnet-lite's BPNet, same architecture, same run.

One step = forward + loss + backward + gradient clipping + AdamW step, batch 64 of random one-hot
DNA (2114 bp in, 1000 bp out, 64 filters, 8 dilated layers, one stranded output) with Poisson
counts. bf16 autocast where the device supports it natively, else fp32 (reported). Each model
uses its own loss (bpnet-lite: ``_mixture_loss``; ours: masked multinomial NLL + count MSE).

The CNN's optional patch-attention block (``model.attention_layers: 1``; off by default), which
bpnet-lite has not, is timed in the same rounds (``seq2reads_attention_*``,
``attention_time_factor`` = its step time over the plain model's) but not compared.

Steps of the models are interleaved (A, B, C, A, B, C, ...) so that load from other processes on a
shared machine hits both alike; the median wall-clock step time is reported (the best too), and on
CPU also the median CPU time of the process per step (``*_windows_per_cpu_s``), which other
processes' load barely changes.

Usage::

    python benchmarks/train_step.py [--steps 6] [--batch 64] [--threads N]

Prints one JSON line and writes ``benchmarks/results/train_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seq2reads.models.bpnet import BPNet  # noqa: E402
from seq2reads.models.losses import combined_loss  # noqa: E402
from seq2reads.training.trainer import cpu_supports_bf16  # noqa: E402


def make_data(n: int, L_in: int, L_out: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 4, (n, L_in), generator=g)
    X = torch.nn.functional.one_hot(idx, 4).permute(0, 2, 1).float().contiguous()
    y = torch.poisson(torch.full((n, 1, 2, L_out), 0.5), generator=g)
    mask = torch.ones(n, L_out, dtype=torch.bool)
    return X.to(device), y.to(device), mask.to(device)


def ours_step(model, opt, X, y, mask, autocast):
    opt.zero_grad(set_to_none=True)
    with autocast():
        prof, lc = model(X)
    loss, _, _ = combined_loss(prof, lc, y, mask, torch.ones(1, device=X.device))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def lite_step(model, opt, X, y, mask, autocast):
    from bpnetlite.losses import _mixture_loss

    opt.zero_grad(set_to_none=True)
    with autocast():
        prof, lc = model(X)
    _, _, loss = _mixture_loss(y[:, 0], prof.float(), lc.float(), 1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


def measure(device: str, steps: int, batch: int, L_in: int = 2114, L_out: int = 1000) -> dict:
    from bpnetlite.bpnet import BPNet as LiteBPNet

    torch.manual_seed(0)
    bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()
    dtype = "bf16-autocast" if bf16 else "fp32"

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else nullcontext()

    ours = BPNet(n_cell_types=1, output_len=L_out, filters=64, layers=8).to(device)
    # with the optional patch-attention block: timed too, for its cost (not compared)
    ours_attn = BPNet(n_cell_types=1, output_len=L_out, filters=64, layers=8, attention_layers=1).to(device)
    lite = LiteBPNet(n_filters=64, n_layers=8, n_control_tracks=0, verbose=False).to(device)
    assert lite.trimming * 2 + L_out == L_in == ours.min_input_len
    X, y, mask = make_data(batch, L_in, L_out, device)
    runs = {
        "seq2reads": (ours, torch.optim.AdamW(ours.parameters(), lr=1e-3), ours_step),
        "bpnet_lite": (lite, torch.optim.AdamW(lite.parameters(), lr=1e-3), lite_step),
        "seq2reads_attention": (ours_attn, torch.optim.AdamW(ours_attn.parameters(), lr=1e-3), ours_step),
    }
    times = {k: [] for k in runs}
    cpu_times = {k: [] for k in runs}
    for it in range(steps + 1):  # the first round is warm-up
        for name, (model, opt, fn) in runs.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t, c = time.perf_counter(), time.process_time()
            loss = fn(model, opt, X, y, mask, autocast)
            loss.item()
            if device == "cuda":
                torch.cuda.synchronize()
            if it > 0:
                times[name].append(time.perf_counter() - t)
                cpu_times[name].append(time.process_time() - c)
    out = {"device": device, "precision": dtype, "batch": batch, "input_len": L_in, "output_len": L_out,
           "steps": steps}
    for name, ts in times.items():
        out[f"{name}_windows_per_s"] = round(batch / statistics.median(ts), 2)
        out[f"{name}_best_windows_per_s"] = round(batch / min(ts), 2)
        if device == "cpu":  # CPU seconds of this process: robust to other processes' load
            out[f"{name}_windows_per_cpu_s"] = round(batch / statistics.median(cpu_times[name]), 2)
    if device == "cpu":
        out["speedup_cpu_time"] = round(out["seq2reads_windows_per_cpu_s"] / out["bpnet_lite_windows_per_cpu_s"], 3)
    out["speedup"] = round(out["seq2reads_windows_per_s"] / out["bpnet_lite_windows_per_s"], 3)
    out["speedup_best"] = round(out["seq2reads_best_windows_per_s"] / out["bpnet_lite_best_windows_per_s"], 3)
    out["attention_time_factor"] = round(out["seq2reads_windows_per_s"] / out["seq2reads_attention_windows_per_s"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_step.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "train_step",
        "model": "BPNet 64 filters, 8 layers, 2114 -> 1000",
        "target_speedup": 1.5,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
                   f"{torch.backends.cpu.get_cpu_capability()}",
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpu": measure("cpu", args.steps, args.batch),
    }
    if torch.cuda.is_available():
        result["cuda"] = measure("cuda", max(args.steps, 20), args.batch)
        result["cuda"]["gpu"] = torch.cuda.get_device_name()
    result["meets_target"] = result["cpu"]["speedup"] >= 1.5
    line = json.dumps(result)
    print(line)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from seq2reads.atomic import write_text_atomic

    write_text_atomic(args.out, line + "\n")


if __name__ == "__main__":
    main()
