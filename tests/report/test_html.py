"""The HTML report: sections with real inputs, plain notes for missing inputs, images that load."""

from __future__ import annotations

import re
import shutil

import pytest

from seq2reads.config import validate_config
from seq2reads.report.html import SECTIONS, fmt, metric_subsets, per_cell_subsets, report_run
from tests.report.chromium import dump_dom, images_loaded, screenshot


def _sections(text: str) -> dict[str, str]:
    """{section key: its HTML} from a report."""
    return dict(re.findall(r'<section id="(\w+)" data-section="\w+">(.*?)</section>', text, flags=re.S))


def test_report_of_an_empty_run_says_what_is_missing(tmp_path):
    cfg = validate_config({"run_dir": str(tmp_path / "run"), "genome": "g.fa", "regions": "r.bed",
                           "samples": [{"name": "A", "plus": "a+.bw", "minus": "a-.bw"}]})
    path = report_run(cfg)
    text = path.read_text()
    secs = _sections(text)
    assert list(secs) == [k for k, _, _ in SECTIONS]
    for key, body in secs.items():
        assert 'class="missing"' in body, key
        assert 'class="error"' not in body, key
    assert "seq2reads prepare CONFIG" in secs["data"]
    assert "seq2reads sae RUN" in secs["sae"]
    assert not list(path.parent.glob(".*tmp*"))  # written atomically, nothing left behind
    dom = dump_dom(path, tmp_path / "profile")
    assert images_loaded(dom) == (0, 0)


def test_metric_subsets_flattens_nested_metrics():
    m = {"overall": {"peaks": {"profile_pearson": 0.5, "count_pearson": 0.7},
                     "all": {"profile_pearson": 0.4}},
         "per_cell_type": {"A": {"peaks": {"profile_pearson": 0.1}}}}
    subs = metric_subsets(m)
    assert subs == {"peaks": {"profile_pearson": 0.5, "count_pearson": 0.7}, "all": {"profile_pearson": 0.4}}
    assert metric_subsets({"profile_jsd": 0.3, "n": 5}) == {"overall": {"profile_jsd": 0.3, "n": 5.0}}
    # evaluate's layout: SPEC keys (= peaks) repeated under "peaks", plus "all"; the duplicate is dropped
    peaks = {"overall": {"profile_pearson": 0.5}, "per_cell_type": {"A": {"profile_pearson": 0.6}}}
    full = {"overall": peaks["overall"], "per_cell_type": peaks["per_cell_type"], "peaks": peaks,
            "all": {"overall": {"profile_pearson": 0.3}, "per_cell_type": {"A": {"profile_pearson": 0.2}}}}
    assert metric_subsets(full) == {"peaks": {"profile_pearson": 0.5}, "all": {"profile_pearson": 0.3}}
    assert per_cell_subsets(full) == {"peaks": {"A": {"profile_pearson": 0.6}}, "all": {"A": {"profile_pearson": 0.2}}}


def test_fmt_numbers():
    assert fmt(0.123456) == "0.123"
    assert fmt(12345) == "12,345"
    assert fmt(1.5e-8) == "1.50e-08"
    assert fmt(float("nan")) == "–"


@pytest.fixture(scope="module")
def evaluated_run(bpnet_run, tmp_path_factory):
    """A copy of the session's trained BPNet run, evaluated (so that the shared run stays untouched)."""
    from seq2reads.config import load_config
    from seq2reads.evaluation.evaluate import evaluate_run

    run = tmp_path_factory.mktemp("report") / "bpnet"
    # Only prepare + train outputs: other tests may have run later steps on the shared run.
    later = ("checkpoints", "report.html", "attributions", "motifs", "marginalize", "sae", ".steps")
    shutil.copytree(bpnet_run.run_path, run, ignore=shutil.ignore_patterns(*later))
    cfg = load_config(run / "config.yaml", [f"run_dir={run}"])
    evaluate_run(cfg)
    return cfg


def test_report_of_a_trained_run_renders_in_chromium(evaluated_run, tmp_path):
    path = report_run(evaluated_run)
    text = path.read_text()
    secs = _sections(text)
    for key in ("data", "training", "metrics", "tracks"):
        assert 'class="missing"' not in secs[key] and 'class="error"' not in secs[key], (key, secs[key][:500])
    # real content: the split table, curves, the metric names beside baseline and ceiling, one track per example
    assert "test" in secs["data"] and "peak" in secs["data"]
    assert "profile_pearson" in secs["metrics"] and "baseline" in secs["metrics"] and "ceiling" in secs["metrics"]
    n_tracks = secs["tracks"].count("<img")
    assert n_tracks == evaluated_run.report.example_regions
    for key in ("motifs", "marginalize", "sae"):  # not run here: said plainly
        assert 'class="missing"' in secs[key]
    assert "src=\"http" not in text and "src='http" not in text  # self-contained
    dom = dump_dom(path, tmp_path / "profile")
    loaded, total = images_loaded(dom)
    assert total >= 3 + n_tracks and loaded == total
    png = screenshot(path, tmp_path / "report.png", tmp_path / "profile2")
    assert png.stat().st_size > 10_000
