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


def test_trim_bounds_widens_short_cores_within_the_pattern():
    cwm = np.zeros((30, 4))
    cwm[12:16, 0] = 1.0  # attribution mass on 4 positions only
    assert M.trim_bounds(cwm, min_width=0) == (12, 16)
    a, b = M.trim_bounds(cwm)
    assert b - a == M.MIN_TRIM_WIDTH and a <= 12 and b >= 16
    edge = np.zeros((30, 4))
    edge[0:3, 1] = 1.0  # at the pattern's start: widened into the pattern, never past its ends
    assert M.trim_bounds(edge) == (0, M.MIN_TRIM_WIDTH)
    wide = np.zeros((30, 4))
    wide[5:20, 2] = 1.0  # already wider than the minimum: unchanged
    assert M.trim_bounds(wide) == (5, 20)
    assert M.trim_bounds(np.ones((6, 4))) == (0, 6)  # a pattern narrower than the minimum: all of it


def test_short_core_matches_jaspar_only_when_widened():
    """A pattern whose attributions sit on the ETS core of ELK1 (real JASPAR matrix, real TOMTOM):
    the widened PPM matches an ETS factor far more confidently than its 4-column core."""
    db = load_jaspar("JASPAR2024")
    elk1 = lookup(db, "ELK1")
    w = elk1.ppm.shape[1]
    ppm = np.full((4, w + 20), 0.25)
    ppm[:, 10 : 10 + w] = elk1.ppm
    core = int(np.argmax(elk1.ppm.max(axis=0) > 0.9))  # first near-certain column: the GGA(A) core
    cwm = np.zeros((w + 20, 4))
    cwm[10 + core : 10 + core + 4] = ppm.T[10 + core : 10 + core + 4]
    short = M.trim_bounds(cwm, min_width=0)
    assert short[1] - short[0] == 4
    a, b = M.trim_bounds(cwm)
    q_short = M.match_motifs([ppm[:, short[0] : short[1]]], db)[0][0]["q"]
    best = M.match_motifs([ppm[:, a:b]], db)[0][0]
    assert best["q"] < q_short / 10 and best["q"] < 0.05 and "Ets" in best["family"]


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
