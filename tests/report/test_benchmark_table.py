"""benchmarks/table.py: the README's benchmark table comes only from results files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_module():
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks" / "table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_lists_every_result_and_updates_the_readme(tmp_path):
    t = _table_module()
    res = tmp_path / "results"
    res.mkdir()
    (res / "loader.json").write_text(json.dumps({"benchmark": "loader", "windows_per_s": 23456.7, "target": ">= 20000",
                                                 "machine": "2-core CPU", "date": "2026-11-25T14:00:00Z"}) + "\n")
    (res / "sae.json").write_text("\n".join(json.dumps({"benchmark": "sae", "fvu": v, "machine": "cpu"}) for v in (0.1, 0.2)))
    md = t.markdown(res)
    lines = [line for line in md.splitlines() if line.startswith("| ") and "benchmark" not in line]
    assert len(lines) == 3
    assert "windows_per_s = 23,457" in md and "2026-11-25" in md and ">= 20000" in md
    assert "fvu = 0.1" in md and "fvu = 0.2" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{t.START}\nold\n{t.END}\nafter\n")
    t.write_readme(readme, res)
    text = readme.read_text()
    assert "old" not in text and "windows_per_s" in text and text.endswith("after\n")
    assert "No benchmark has been run yet" in t.markdown(tmp_path / "empty")


def test_a_headline_group_puts_its_nested_figures_first(tmp_path):
    """learning_curve's headline "count_pearson" names a group (count_pearson.3000, ...)."""
    t = _table_module()
    res = tmp_path / "results"
    res.mkdir()
    obj = {"benchmark": "learning_curve", "aaa": 1, "epochs": 30,
           "profile_pearson": {"3000": 0.77, "10000": 0.82}, "count_pearson": {"3000": 0.64, "10000": 0.72}}
    (res / "learning_curve.json").write_text(json.dumps(obj) + "\n")
    figures = t.row(res / "learning_curve.json", obj)[1].split("; ")
    assert figures[:4] == ["profile_pearson.3000 = 0.77", "profile_pearson.10000 = 0.82",
                           "count_pearson.3000 = 0.64", "count_pearson.10000 = 0.72"]
    assert set(figures[4:]) == {"aaa = 1", "epochs = 30"}


def test_a_variant_is_named_in_its_row_and_keeps_the_headlines(tmp_path):
    """motif_recovery --variant attention: its own row, labelled, with motif_recovery's headlines."""
    t = _table_module()
    obj = {"benchmark": "motif_recovery", "variant": "attention", "zzz": 2, "recovery": 1.0}
    f = tmp_path / "motif_recovery_attention.json"
    f.write_text(json.dumps(obj) + "\n")
    name, figures = t.row(f, obj)[:2]
    assert name == "motif_recovery (attention)"
    assert figures.split("; ") == ["recovery = 1", "zzz = 2"]
