"""Motif discovery: modisco-lite + TOMTOM against JASPAR; the empty case."""

import json
import os

import numpy as np
import pandas as pd

from seq2reads.interpret import motifs as M
from seq2reads.interpret.jaspar import load_jaspar, lookup


def test_bh_qvalues_monotone_and_bounded():
    p = np.array([[0.01, 0.04, 0.03, 0.5, 0.001]])
    q = M.bh_qvalues(p)
    assert np.all(q >= p) and np.all(q <= 1)
    assert np.allclose(q[0, 4], 0.005) and np.allclose(q[0, 0], 0.025)


def test_tomtom_finds_the_matrix_itself():
    db = load_jaspar("JASPAR2024")
    gata = lookup(db, "GATA1")
    ms = M.match_motifs([gata.ppm], db)[0]
    assert ms[0]["id"] == gata.matrix_id and ms[0]["q"] < 0.05


def _fake_attribution_run(tmp_path, src_run, seed=0, n=12):
    """A run folder sharing the dataset of ``src_run`` with random attributions (no motifs in them)."""
    run = tmp_path / "run"
    (run / "attributions").mkdir(parents=True)
    os.symlink(src_run.run_path / "dataset", run / "dataset")
    rng = np.random.default_rng(seed)
    L = src_run.window.input
    ohe = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n, L))].transpose(0, 2, 1)
    cell = src_run.cell_types[0]
    np.savez(run / "attributions" / f"{cell}.count.npz", ohe=ohe, attr=rng.normal(size=ohe.shape).astype(np.float32),
             delta=np.zeros(n, np.float32), index=np.arange(n))
    (run / "attributions" / "summary.json").write_text(json.dumps(
        {"files": [{"cell": cell, "target": "count", "file": f"{cell}.count.npz"}]}))
    return src_run.model_copy(update={"run_dir": str(run)})


def test_modisco_without_patterns_gives_empty_valid_tables(prepared_run, tmp_path, caplog):
    cfg = _fake_attribution_run(tmp_path, prepared_run)
    out = M.motifs_run(cfg)
    assert "TF-MoDISco found no patterns" in caplog.text and "interpret.n_regions" in caplog.text
    table = pd.read_csv(out / "motifs.tsv", sep="\t")
    assert list(table.columns) == M.COLUMNS and len(table) == 0
    assert list(pd.read_csv(out / "shared.tsv", sep="\t").columns) == M.SHARED_COLUMNS
    assert (out / "motifs.meme").read_text().startswith("MEME version")
    assert (out / "modisco.h5").exists()


def test_motifs_on_bpnet_run(bpnet_run, caplog):
    from seq2reads.interpret.attributions import attribute_run

    if not (bpnet_run.run_path / "attributions" / "summary.json").exists():
        one = bpnet_run.interpret.model_copy(update={"cell_types": bpnet_run.cell_types[:1]})
        attribute_run(bpnet_run.model_copy(update={"interpret": one}))
    out = M.motifs_run(bpnet_run)
    table = pd.read_csv(out / "motifs.tsv", sep="\t")
    assert list(table.columns) == M.COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    if len(table) == 0:  # tiny test model: allowed, but then the user must have been told
        assert summary["no_patterns"] and "no patterns" in caplog.text
    else:
        assert set(table["sign"]) <= {"pos", "neg"} and (table["n_seqlets"] > 0).all()
        assert len(list((out / "logos").glob("*.png"))) == len(table)
        assert (table["strand_bias"].between(0, 1)).all()
