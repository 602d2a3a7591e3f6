"""The reduced demo end to end (`seq2reads demo --quick`): simulate, both models through every step,
the two reports with every section filled in, every image loading in headless Chromium; and a rerun
that skips every finished step."""

from __future__ import annotations

import json
import re
import time

import pytest

from seq2reads.cli import main
from seq2reads.pipeline import STEPS_DIR, pipeline_steps, read_record
from seq2reads.report.html import SECTIONS
from tests.report.chromium import dump_dom, images_loaded, screenshot


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    t0 = time.time()
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    return out, time.time() - t0


def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)" data-section="\w+">(.*?)</section>', text, flags=re.S))


@pytest.mark.parametrize("model", ["bpnet", "encoder"])
def test_quick_demo_report_has_every_section(quick_demo, model, tmp_path):
    out, seconds = quick_demo
    run = out / "runs" / model
    report = run / "report.html"
    assert report.exists()
    secs = _sections(report.read_text())
    assert list(secs) == [k for k, _, _ in SECTIONS]
    for key, body in secs.items():
        assert 'class="missing"' not in body and 'class="error"' not in body, (model, key, body[:800])
    other = "encoder" if model == "bpnet" else "bpnet"
    assert f"{other} (" in secs["metrics"] or f">{other}<" in secs["metrics"]  # the other model's column
    # every step recorded as done, with its config hash
    for step in pipeline_steps(["x"]):
        rec = read_record(run, step)
        assert rec is not None and rec["status"] == "done" and len(rec["hash"]) == 16, step
    dom = dump_dom(report, tmp_path / "profile")
    loaded, total = images_loaded(dom)
    assert total >= 8 and loaded == total, (loaded, total)
    if model == "bpnet":
        screenshot(report, tmp_path / "report.png", tmp_path / "profile2")


def test_quick_demo_rerun_skips_finished_steps(quick_demo, capsys):
    out, first = quick_demo
    t_model = (out / "runs" / "bpnet" / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    log = capsys.readouterr().out
    assert "skip simulate" in log
    for model in ("bpnet", "encoder"):
        steps = json.loads((out / "runs" / model / STEPS_DIR / "train.json").read_text())
        assert steps["status"] == "done"
    n_skips = sum(line.startswith("[seq2reads] skip ") for line in log.splitlines())
    assert n_skips == 2 * (len(pipeline_steps(["x"])) - 1) + 1, log  # all but the reports, plus simulate
    assert (out / "runs" / "bpnet" / "model" / "model.safetensors").stat().st_mtime_ns == t_model
    assert log.strip().splitlines()[-1].startswith("report: ")
