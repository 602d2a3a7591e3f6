"""The command line: help texts, user errors (exit 2, one line), and `run`'s skip / --only / --from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from seq2reads.cli import STEPS, build_parser, main
from tests.conftest import SMALL_BPNET, small_config

COMMANDS = ["simulate", "prepare", "train", "evaluate", "predict", "attribute", "motifs", "marginalize", "sae",
            "report", "run", "demo"]


def test_console_script_help():
    exe = Path(sys.executable).with_name("seq2reads")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for c in COMMANDS:
        assert c in res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: seq2reads {command}")


def test_every_command_is_in_the_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def _write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


BASE = {"run_dir": "run", "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": "A", "plus": "a.plus.bw", "minus": "a.minus.bw"}]}


@pytest.mark.parametrize("raw, hint", [
    ({**BASE, "trian": {"max_epochs": 2}}, "Did you mean 'train'?"),
    ({**BASE, "train": {"max_epoch": 2}}, "Did you mean 'max_epochs'?"),
    ({**BASE, "report": {"example_region": 2}}, "Did you mean 'example_regions'?"),
])
def test_config_typo_exits_2_with_a_suggestion(tmp_path, capsys, raw, hint):
    cfg = _write_config(tmp_path / "c.yaml", raw)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert hint in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_unknown_step_is_rejected(tmp_path, capsys):
    cfg = _write_config(tmp_path / "c.yaml", BASE)
    with pytest.raises(SystemExit) as e:
        main(["run", str(cfg), "--only", "trian"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_only_needs_upstream_outputs(tmp_path, capsys):
    cfg = _write_config(tmp_path / "c.yaml", BASE)
    assert main(["run", str(cfg), "--only", "evaluate"]) == 2
    err = capsys.readouterr().err
    assert "needs the outputs of 'train'" in err and "--from train" in err


def test_run_steps_match_the_spec_order():
    assert STEPS == ("prepare", "train", "evaluate", "attribute", "motifs", "sae", "report")


# -- skip / --only / --from with real steps (prepare, train) --------------------------------------
@pytest.fixture
def cli_config(sim_dir, tmp_path):
    """A small config file (run in tmp_path/run) that `seq2reads run` can take."""
    cfg = small_config(sim_dir, tmp_path / "run", [*SMALL_BPNET, "train.max_epochs=1"])
    raw = cfg.model_dump(mode="json")
    return _write_config(tmp_path / "config.yaml", raw)


def _mtime(p: Path) -> float:
    return os.stat(p).st_mtime_ns


def test_run_skips_prepare_when_config_hash_matches(cli_config, tmp_path, capsys):
    from seq2reads.config import load_config
    from seq2reads.pipeline import read_record, run_all, step_hash

    run = tmp_path / "run"
    assert main(["run", str(cli_config), "--only", "prepare"]) == 0
    rec = read_record(run, "prepare")
    assert rec["status"] == "done" and rec["hash"] == step_hash(load_config(cli_config), "prepare")
    assert "dataset" in rec["outputs"]
    t_dataset = _mtime(run / "dataset")

    logs: list[str] = []
    run_all(load_config(cli_config), until="prepare", log=logs.append)
    assert any(line.startswith("[seq2reads] skip prepare: up to date") for line in logs), logs
    assert _mtime(run / "dataset") == t_dataset

    # a data setting changed: prepare runs again and says why
    logs.clear()
    run_all(load_config(cli_config, ["window.jitter=8"]), until="prepare", log=logs.append)
    assert any("prepare: config changed since it ran" in line for line in logs), logs
    assert _mtime(run / "dataset") != t_dataset

    # a missing output is noticed
    import shutil

    shutil.rmtree(run / "dataset")
    logs.clear()
    run_all(load_config(cli_config, ["window.jitter=8"]), until="prepare", log=logs.append)
    assert any("output missing (dataset)" in line for line in logs), logs
    assert (run / "dataset").exists()


def test_run_resumes_interrupted_step_and_from_forces_later_steps(cli_config, tmp_path, capsys):
    from seq2reads.config import load_config
    from seq2reads.pipeline import read_record, record_path, run_all

    run = tmp_path / "run"
    cfg = load_config(cli_config)
    run_all(cfg, until="train", log=lambda s: None)
    model = run / "model" / "model.safetensors"
    t_model, t_dataset = _mtime(model), _mtime(run / "dataset")
    stamp_prepare = read_record(run, "prepare")["stamp"]

    # everything up to date: both skipped
    logs: list[str] = []
    run_all(cfg, until="train", log=logs.append)
    assert sum(line.startswith("[seq2reads] skip ") for line in logs) == 2, logs

    # --from train: prepare still skipped, train forced
    time.sleep(0.01)
    logs.clear()
    run_all(cfg, from_step="train", until="train", log=logs.append)
    assert any(line.startswith("[seq2reads] skip prepare") for line in logs)
    assert any(line == "[seq2reads] train: forced" for line in logs), logs
    assert _mtime(model) != t_model and _mtime(run / "dataset") == t_dataset
    assert read_record(run, "prepare")["stamp"] == stamp_prepare

    # an interrupted step (record left 'running') is resumed, not skipped
    rec = read_record(run, "train")
    rec["status"] = "running"
    record_path(run, "train").write_text(json.dumps(rec))
    logs.clear()
    run_all(cfg, until="train", log=logs.append)
    assert any("train: interrupted earlier: resuming" in line for line in logs), logs
    assert read_record(run, "train")["status"] == "done"

    # rerunning prepare makes train stale (its upstream changed)
    logs.clear()
    run_all(cfg, only_step="prepare", log=logs.append)
    run_all(cfg, until="train", log=logs.append)
    assert any("train: prepare was rerun since" in line for line in logs), logs
