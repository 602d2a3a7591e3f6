"""Training: outputs, determinism, resume after SIGKILL, NaN guard, 2-process DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from seq2reads.cli import main
from seq2reads.config import dump_config
from seq2reads.training.trainer import read_history, resolve_precision, train
from tests.conftest import SMALL_BPNET, small_config

REPO = Path(__file__).resolve().parents[2]
QUICK = ["train.limit_val_batches=1", "train.warmup_steps=2"]


def _run_with_dataset(prepared_run, sim_dir, tmp_path, name, extra=()):
    """A new run dir sharing the prepared dataset (copied), with extra --set overrides."""
    cfg = small_config(sim_dir, tmp_path / name, [*SMALL_BPNET, *QUICK, *extra])
    shutil.copytree(prepared_run.run_path / "dataset", cfg.run_path / "dataset")
    return cfg


def _write_config(cfg, path: Path) -> Path:
    path.write_text(dump_config(cfg))
    return path


def _weights(path: Path) -> dict:
    """Weights of a run directory or its model folder."""
    from safetensors.torch import load_file

    from seq2reads.models.io import model_dir

    return load_file(str(model_dir(path) / "model.safetensors"))


def _cli_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return env


def test_trained_run_outputs(bpnet_run):
    import seq2reads

    run = bpnet_run.run_path
    assert sorted(p.name for p in (run / "model").iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["cell_types"] == bpnet_run.cell_types
    assert len(meta["extra"]["count_weight"]) == len(bpnet_run.cell_types)
    assert all(w >= 1.0 for w in meta["extra"]["count_weight"])
    assert (run / "config.yaml").exists()
    m = pd.read_csv(run / "logs" / "metrics.csv")
    # (the cell-type split loss and its columns: test_cell_share_loss_is_logged_and_trains)
    for col in ("train/loss", "train/profile_nll", "train/count_mse", "val/loss", "val/profile_nll"):
        assert col in m.columns and m[col].notna().any(), col
    assert m["val/loss"].dropna().map(float).apply(lambda v: v == v).all()
    assert (run / "checkpoints" / "last.ckpt").exists() and (run / "checkpoints" / "best.ckpt").exists()
    model = seq2reads.load_model(run)
    x = torch.zeros(2, 4, bpnet_run.window.input)
    prof, lc = model(x)
    assert prof.shape == (2, len(bpnet_run.cell_types), 2, bpnet_run.window.output)
    assert lc.shape == (2, len(bpnet_run.cell_types))
    hist = read_history(run)
    assert hist[0]["event"] == "start" and hist[0]["global_step"] == 0 and hist[-1]["event"] == "end"


def test_precision_auto_is_fp32_or_bf16():
    assert resolve_precision("32") == "32-true"
    assert resolve_precision("bf16-mixed") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") in ("32-true", "bf16-mixed")


def test_same_seed_same_weights(prepared_run, sim_dir, tmp_path):
    a = _run_with_dataset(prepared_run, sim_dir, tmp_path, "a", ["train.max_steps=3"])
    b = _run_with_dataset(prepared_run, sim_dir, tmp_path, "b", ["train.max_steps=3"])
    wa, wb = _weights(train(a)), _weights(train(b))
    assert not torch.are_deterministic_algorithms_enabled()  # no process-wide flag left behind
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # ... and training changed them (a different seed starts elsewhere).
    c = _run_with_dataset(prepared_run, sim_dir, tmp_path, "c", ["train.max_steps=3", "train.seed=7"])
    wc = _weights(train(c))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def _train_until_checkpoint(prepared_run, sim_dir, tmp_path, name, sig):
    """Start ``seq2reads train`` in a subprocess, send ``sig`` once ``last.ckpt`` exists.

    Returns (config, process after it ended, its stderr text, path of last.ckpt).
    """
    cfg = _run_with_dataset(prepared_run, sim_dir, tmp_path, name,
                            ["train.max_epochs=200", "train.checkpoint_every=2", "train.patience=1000"])
    path = _write_config(cfg, tmp_path / f"{name}.yaml")
    last = cfg.run_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "seq2reads.cli", "train", str(path)], env=_cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return cfg, proc, err.decode(), last


def test_resume_after_sigkill(prepared_run, sim_dir, tmp_path):
    cfg, _, _, last = _train_until_checkpoint(prepared_run, sim_dir, tmp_path, "resume", signal.SIGKILL)
    assert not (cfg.run_path / "model").exists()  # killed before the end
    step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert step > 0
    # Rerun (a few more steps): it starts at the checkpoint's step, not 0.
    cfg2 = small_config(sim_dir, cfg.run_path, [*SMALL_BPNET, *QUICK, f"train.max_steps={step + 2}",
                                                "train.max_epochs=200", "train.checkpoint_every=2",
                                                "train.patience=1000"])
    train(cfg2)
    starts = [h for h in read_history(cfg.run_path) if h["event"] == "start"]
    assert starts[0]["global_step"] == 0
    assert starts[-1]["global_step"] == step and starts[-1]["resumed_from"].endswith("last.ckpt")
    ends = [h for h in read_history(cfg.run_path) if h["event"] == "end"]
    assert ends[-1]["global_step"] == step + 2
    m = pd.read_csv(cfg.run_path / "logs" / "metrics.csv")
    assert m["step"].min() < step  # the rows from before the kill are kept
    assert (cfg.run_path / "model" / "model.safetensors").exists()


def test_sigterm_exits_143_with_a_resume_hint(prepared_run, sim_dir, tmp_path):
    """SIGTERM (a scheduler's pre-emption) must not look like a finished run (exit status 0)."""
    cfg, proc, err, _ = _train_until_checkpoint(prepared_run, sim_dir, tmp_path, "term", signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    assert not (cfg.run_path / "model").exists()


def test_nan_guard_stops_and_keeps_good_weights(prepared_run, sim_dir, tmp_path):
    cfg = _run_with_dataset(prepared_run, sim_dir, tmp_path, "nan",
                            ["train.lr=1e30", "train.warmup_steps=0", "train.max_steps=20",
                             "train.checkpoint_every=1", "train.grad_clip=0"])
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):
        out = train(cfg)
    end = [h for h in read_history(cfg.run_path) if h["event"] == "end"][-1]
    assert end["global_step"] < 20  # stopped early
    ck = torch.load(cfg.run_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())
    meta = json.loads((out / "model.json").read_text())
    assert meta["extra"]["stopped_nonfinite"] is True
    assert all(torch.isfinite(v).all() for v in _weights(cfg.run_path).values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(prepared_run, sim_dir, tmp_path):
    cfg = _run_with_dataset(prepared_run, sim_dir, tmp_path, "ddp",
                            ["train.max_steps=2", "train.devices=2", "train.strategy=ddp",
                             "train.accelerator=cpu"])
    path = _write_config(cfg, tmp_path / "ddp.yaml")
    env = dict(_cli_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    r = subprocess.run([sys.executable, "-m", "seq2reads.cli", "train", str(path)], env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in r.stderr or "world_size=2" in r.stderr.replace(" ", "") or "2 processes" in r.stderr
    assert (cfg.run_path / "model" / "model.safetensors").exists()
    end = [h for h in read_history(cfg.run_path) if h["event"] == "end"][-1]
    assert end["global_step"] == 2


def test_train_before_prepare_exits_2(sim_dir, tmp_path, capsys):
    cfg = small_config(sim_dir, tmp_path / "noprep", SMALL_BPNET)
    path = _write_config(cfg, tmp_path / "c.yaml")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seq2reads prepare" in err[0]
    assert not (tmp_path / "noprep" / "model").exists()


def test_window_too_short_exits_2_naming_minimum(prepared_run, sim_dir, tmp_path, capsys):
    from seq2reads.config import BPNetModel
    from seq2reads.models.registry import min_input_len

    cfg = _run_with_dataset(prepared_run, sim_dir, tmp_path, "short")
    path = _write_config(cfg, tmp_path / "s.yaml")
    need = min_input_len(BPNetModel(filters=16, layers=8, profile_kernel=25), cfg.window.output)
    assert need > cfg.window.input
    assert main(["train", str(path), "--set", "model.layers=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"at least {need} bp" in err[0]
    assert not (cfg.run_path / "model").exists() and not (cfg.run_path / "checkpoints").exists()


def test_cell_share_loss_is_logged_and_trains(prepared_run, sim_dir, tmp_path):
    cfg = _run_with_dataset(prepared_run, sim_dir, tmp_path, "share",
                            ["model.cell_share_weight=1.0", "train.max_epochs=1", "train.checkpoint_every=100"])
    train(cfg)
    m = pd.read_csv(cfg.run_path / "logs" / "metrics.csv")
    for col in ("train/cell_share_nll", "val/cell_share_nll"):
        assert col in m.columns and m[col].notna().any() and (m[col].dropna() >= 0).all(), col
