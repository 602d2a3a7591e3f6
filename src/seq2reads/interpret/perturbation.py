"""In-silico perturbation: motif marginalisation and random-variation probes.

``marginalize_run(cfg, motif_ids)`` writes ``RUN/marginalize/`` (the folder atomically, replacing
an earlier one):

- ``effects.tsv``: one row per motif × cell type × strand (``plus``, ``minus``, ``both``):
  mean and s.d. of the change in predicted log counts (``both`` only: the model's count head),
  predicted expected reads before/after on that strand (``softmax(profile) * expm1(log_counts)``
  summed over the strand), their log2 fold change, and a Wilcoxon signed-rank p-value of the
  paired change.
- ``effects.json``: the same plus, per motif/cell type/strand, the mean profile-delta curve
  (expected reads after − before at each output position; the motif sits at the centre).
- ``{motif}.profile.png``: profile delta around the insertion per cell type and strand;
  ``log_counts.png``: bar chart of the log-count change per motif and cell type.
- ``probes.json`` / ``probes.png``: predicted log counts per cell type on real peak windows,
  their dinucleotide shuffles and iid random sequences with the genome's base composition — what
  the model predicts where the data did not pin it down.

Background sequences: the store's background windows (genome windows GC-matched to the regions
by ``prepare``), up to ``interpret.marginalize_n``; when there are fewer, dinucleotide shuffles of
peak windows (tangermeme) fill up the rest. The motif is each JASPAR matrix's consensus, put
at the centre by ``tangermeme.marginalize.marginalize`` (same backgrounds before and after).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seq2reads.atomic import atomic_path

STRANDS = ("plus", "minus")


def expected_counts(profile_logits: torch.Tensor, log_counts: torch.Tensor) -> np.ndarray:
    """Expected reads ``(N, C, 2, L)`` = softmax over both strands × expm1(log counts)."""
    n, c = log_counts.shape
    p = torch.softmax(profile_logits.float().reshape(n, c, -1), dim=-1).reshape(profile_logits.shape)
    return (p * torch.expm1(log_counts.float())[..., None, None]).numpy()


def predict_outputs(model, X: torch.Tensor, batch_size: int = 64):
    """``(profile_logits, log_counts)`` on CPU for one-hot ``X`` (tangermeme's batched predict)."""
    from tangermeme.predict import predict

    from seq2reads.interpret.attributions import model_device

    y = predict(model, X, batch_size=batch_size, device=model_device(model))
    return y[0], y[1]


def background_sequences(store, n: int, input_len: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """One-hot ``(n, 4, L)`` backgrounds and a description of where they come from."""
    from seq2reads.interpret.attributions import load_windows, shuffled_references

    bg = store.indices("train", kinds=("background",))
    bg = np.sort(np.concatenate([bg] + [store.indices(s, kinds=("background",)) for s in ("valid", "test")]))
    rng = np.random.default_rng(seed)
    if len(bg) > n:
        bg = np.sort(rng.choice(bg, n, replace=False))
    X, _ = load_windows(store, bg, input_len) if len(bg) else (torch.zeros(0, 4, input_len), None)
    source = f"{len(bg)} GC-matched genome background windows"
    if len(X) < n:
        peaks = np.sort(np.concatenate([store.indices(s, kinds=("peak",)) for s in ("train", "valid", "test")]))
        take = np.sort(rng.choice(peaks, min(n - len(X), len(peaks)), replace=False))
        P, _ = load_windows(store, take, input_len)
        S = shuffled_references(P, 1, seed)[:, 0]
        X = torch.cat([X, S])
        source += f" + {len(S)} dinucleotide shuffles of peak windows"
    return X, source


def marginalize_motif(model, X: torch.Tensor, consensus: str, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Predictions before/after putting ``consensus`` at the centre of every sequence of ``X``.

    Returns
    -------
    dict with ``logc_before``, ``logc_after`` (N, C) and ``exp_before``, ``exp_after`` (N, C, 2, L_out).
    """
    from tangermeme.marginalize import marginalize

    from seq2reads.interpret.attributions import model_device

    before, after = marginalize(model, X, consensus, batch_size=batch_size, device=model_device(model))
    return {"logc_before": before[1].float().numpy(), "logc_after": after[1].float().numpy(),
            "exp_before": expected_counts(*before), "exp_after": expected_counts(*after)}


def summarise_effects(motif, res: dict[str, np.ndarray], cells: Sequence[str]) -> tuple[list[dict], dict]:
    """Rows of ``effects.tsv`` and the JSON record (with profile-delta curves) of one motif."""
    from scipy.stats import wilcoxon

    rows, curves = [], {}
    dl = res["logc_after"] - res["logc_before"]
    for c, cell in enumerate(cells):
        curves[cell] = {}
        for s, strand in enumerate(STRANDS + ("both",)):
            if strand == "both":
                b = res["exp_before"][:, c].sum(axis=(1, 2))
                a = res["exp_after"][:, c].sum(axis=(1, 2))
                d = dl[:, c]
            else:
                b = res["exp_before"][:, c, s].sum(axis=-1)
                a = res["exp_after"][:, c, s].sum(axis=-1)
                d = np.log1p(a) - np.log1p(b)
                curves[cell][strand] = (res["exp_after"][:, c, s] - res["exp_before"][:, c, s]).mean(0).tolist()
            p = float(wilcoxon(d).pvalue) if len(d) > 1 and np.any(d != 0) else 1.0
            rows.append({"motif_id": motif.matrix_id, "motif_name": motif.name, "consensus": motif.consensus,
                         "cell_type": cell, "strand": strand,
                         "delta_log_counts_mean": float(d.mean()), "delta_log_counts_sd": float(d.std()),
                         "reads_before_mean": float(b.mean()), "reads_after_mean": float(a.mean()),
                         "log2_fold_change": float(np.log2((a.mean() + 1e-6) / (b.mean() + 1e-6))),
                         "wilcoxon_p": p, "n_backgrounds": int(len(d))})
    return rows, {"motif_id": motif.matrix_id, "motif_name": motif.name, "consensus": motif.consensus,
                  "tf_family": motif.tf_family, "profile_delta": curves,
                  "effects": rows}


def random_probes(model, store, input_len: int, n: int, seed: int = 0) -> dict:
    """Predicted log counts per cell type on real peaks, their dinucleotide shuffles and iid random
    sequences with the peaks' base composition."""
    from seq2reads.interpret.attributions import load_windows, shuffled_references

    rng = np.random.default_rng(seed)
    peaks = np.sort(np.concatenate([store.indices(s, kinds=("peak",)) for s in ("test", "valid")]))
    if len(peaks) < n:
        peaks = np.sort(np.concatenate([peaks, store.indices("train", kinds=("peak",))]))
    peaks = np.sort(rng.choice(peaks, min(n, len(peaks)), replace=False))
    real, _ = load_windows(store, peaks, input_len)
    comp = real.sum(dim=(0, 2)).double()
    comp = (comp / comp.sum()).numpy()
    codes = rng.choice(4, size=(len(real), input_len), p=comp)  # iid draws, peaks' base composition
    kinds = {"real": real, "dinuc_shuffled": shuffled_references(real, 1, seed)[:, 0],
             "random_iid": torch.from_numpy(np.eye(4, dtype=np.float32)[codes].transpose(0, 2, 1).copy())}
    out = {"base_composition": dict(zip("ACGT", comp.round(4).tolist())), "n": int(len(real)), "cells": {}}
    preds = {k: predict_outputs(model, x)[1].float().numpy() for k, x in kinds.items()}
    for c, cell in enumerate(store.samples):
        out["cells"][cell] = {k: {"mean": float(v[:, c].mean()), "sd": float(v[:, c].std()),
                                  "q05": float(np.quantile(v[:, c], 0.05)), "median": float(np.median(v[:, c])),
                                  "q95": float(np.quantile(v[:, c], 0.95)), "values": v[:, c].round(4).tolist()}
                              for k, v in preds.items()}
    return out


def marginalize_run(cfg, motif_ids: Sequence[str]) -> Path:
    """Insert JASPAR motifs into background sequences and run the random probes (``RUN/marginalize/``).

    Raises
    ------
    UserError
        An ID or name not in ``interpret.motif_db`` (with suggestions); nothing is written.
    """
    import pandas as pd

    from seq2reads.data.store import open_dataset
    from seq2reads.interpret.jaspar import load_jaspar, lookup
    from seq2reads.models.io import load_model

    run = Path(cfg.run_dir)
    db = load_jaspar(cfg.interpret.motif_db)
    motifs = [lookup(db, m) for m in motif_ids]  # all checked before any work
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(run, device).eval()
    store = open_dataset(run / "dataset")
    cells = list(store.samples)
    n = cfg.interpret.marginalize_n
    X, source = background_sequences(store, n, store.input_len, cfg.train.seed)
    rows, records = [], []
    for m in motifs:
        r, rec = summarise_effects(m, marginalize_motif(model, X, m.consensus), cells)
        rows += r
        records.append(rec)
    probes = random_probes(model, store, store.input_len, n, cfg.train.seed)
    with atomic_path(run / "marginalize") as tmp:
        tmp.mkdir()
        pd.DataFrame(rows).to_csv(tmp / "effects.tsv", sep="\t", index=False, float_format="%.5g")
        (tmp / "effects.json").write_text(json.dumps(
            {"backgrounds": source, "output_len": int(store.output_len), "motifs": records}, indent=1))
        (tmp / "probes.json").write_text(json.dumps(probes, indent=1))
        _plot_profiles(records, cells, tmp)
        _plot_bars(rows, cells, tmp / "log_counts.png")
        _plot_probes(probes, cells, tmp / "probes.png")
    return run / "marginalize"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in name)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_profiles(records: list[dict], cells: Sequence[str], folder: Path) -> None:
    plt = _plt()
    for rec in records:
        fig, axes = plt.subplots(len(cells), 1, figsize=(7, 1.8 * len(cells)), sharex=True, squeeze=False)
        for ax, cell in zip(axes[:, 0], cells):
            for strand, colour, sign in (("plus", "tab:blue", 1), ("minus", "tab:red", -1)):
                y = np.asarray(rec["profile_delta"][cell][strand])
                x = np.arange(len(y)) - len(y) // 2
                ax.plot(x, sign * y, color=colour, lw=0.8, label=f"{strand} strand" + (" (drawn negative)" if sign < 0 else ""))
            ax.axvline(0, color="grey", lw=0.5, ls="--")
            ax.set_ylabel(f"{cell}\nΔ reads")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        axes[0, 0].set_title(f"{rec['motif_name']} ({rec['motif_id']}, {rec['consensus']}) inserted at 0")
        axes[-1, 0].set_xlabel("position relative to the insertion (bp)")
        fig.tight_layout()
        fig.savefig(folder / f"{_safe(rec['motif_id'] + '.' + rec['motif_name'])}.profile.png", dpi=90)
        plt.close(fig)


def _plot_bars(rows: list[dict], cells: Sequence[str], path: Path) -> None:
    plt = _plt()
    both = [r for r in rows if r["strand"] == "both"]
    motifs = list(dict.fromkeys(f"{r['motif_name']} ({r['motif_id']})" for r in both))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(motifs) * len(cells) / 2), 3))
    w = 0.8 / len(cells)
    for c, cell in enumerate(cells):
        vals = [r["delta_log_counts_mean"] for r in both if r["cell_type"] == cell]
        errs = [r["delta_log_counts_sd"] for r in both if r["cell_type"] == cell]
        ax.bar(np.arange(len(motifs)) + c * w, vals, w, yerr=errs, label=cell, capsize=2)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(np.arange(len(motifs)) + 0.4 - w / 2, motifs, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("Δ predicted log counts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_probes(probes: dict, cells: Sequence[str], path: Path) -> None:
    plt = _plt()
    kinds = ["real", "dinuc_shuffled", "random_iid"]
    fig, axes = plt.subplots(1, len(cells), figsize=(3 * len(cells), 3), sharey=True, squeeze=False)
    for ax, cell in zip(axes[0], cells):
        ax.boxplot([probes["cells"][cell][k]["values"] for k in kinds], showfliers=False)
        ax.set_xticks(range(1, len(kinds) + 1), ["real", "shuffled", "random"], fontsize=8)
        ax.set_title(cell, fontsize=9)
    axes[0, 0].set_ylabel("predicted log counts")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
