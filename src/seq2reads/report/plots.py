"""Figures of the HTML report, drawn with matplotlib and embedded as base64 PNG data URIs.

Every function returns a ``data:image/png;base64,...`` string so that the report is one
self-contained file.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report is written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
STRAND_COLOURS = {"plus": "#1f5fa8", "minus": "#c0392b"}

plt.rcParams.update({
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
})


def fig_to_uri(fig, dpi: int = 110) -> str:
    """Render a matplotlib figure to a PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_to_uri(path: str | Path) -> str | None:
    """A PNG file as a data URI, or None when the file is not a PNG."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_MAGIC):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# -- training ----------------------------------------------------------------------------------
def _component(col: str) -> tuple[str, str]:
    """Split a logged column into (phase, component): 'train/profile_nll_step' -> ('train', 'profile_nll')."""
    phase, _, name = col.partition("/")
    name = re.sub(r"_(step|epoch)$", "", name)
    return phase, name


def loss_curve_figures(metrics: pd.DataFrame) -> list[tuple[str, str]]:
    """Loss curves of every logged component, train and validation on the same axes.

    Parameters
    ----------
    metrics : DataFrame
        Lightning CSVLogger ``metrics.csv``: a ``step`` column and columns such as ``train/loss``,
        ``val/loss``, ``train/profile_nll``, ``train/w_reads`` (loss-balancing weights), ``lr-*``.

    Returns
    -------
    list of (title, data URI)
    """
    if "step" not in metrics.columns:
        metrics = metrics.assign(step=np.arange(len(metrics)))
    cols = [c for c in metrics.columns if "/" in c and pd.api.types.is_numeric_dtype(metrics[c])]
    groups: dict[str, dict[str, list[str]]] = {}
    weights: list[str] = []
    for c in cols:
        phase, name = _component(c)
        if name.startswith("w_") or name.startswith("weight"):
            weights.append(c)
        elif name in ("lr", "learning_rate") or name.startswith("lr-"):
            continue
        elif phase in ("train", "val", "valid", "validation"):
            groups.setdefault(name, {}).setdefault(phase, []).append(c)
    # One column per phase: per-step values for training, per-epoch values for validation.
    losses = {name: {ph: _pick(cands, ph) for ph, cands in by_phase.items()} for name, by_phase in groups.items()}
    lr_cols = [c for c in metrics.columns if c.startswith("lr") or _component(c)[1] in ("lr", "learning_rate")]
    xmax = float(metrics["step"].max()) if metrics["step"].notna().any() else 1.0
    out: list[tuple[str, str]] = []
    names = sorted(losses, key=lambda n: (n != "loss", n))
    if names:
        ncol = min(3, len(names))
        nrow = int(np.ceil(len(names) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            for phase, col in sorted(losses[name].items(), key=lambda kv: kv[0] != "train"):
                d = metrics[["step", col]].dropna()
                if d.empty:
                    continue
                style = dict(lw=1.0, alpha=0.85) if phase == "train" else dict(lw=1.6, marker="o", ms=4)
                ax.plot(d["step"], d[col], color=PALETTE[0 if phase == "train" else 1], label=phase, **style)
            ax.set_xlim(-0.02 * xmax, xmax * 1.02 + 1e-9)
            ax.set_title(name)
            ax.set_xlabel("step")
            _maybe_log(ax, metrics[[c for c in losses[name].values()]])
            ax.legend()
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        out.append(("Loss components (train per step, validation per epoch)", fig_to_uri(fig)))
    if weights or lr_cols:
        n = int(bool(weights)) + int(bool(lr_cols))
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 2.8), squeeze=False)
        k = 0
        if weights:
            ax = axes[0, k]
            k += 1
            for i, c in enumerate(sorted(weights)):
                d = metrics[["step", c]].dropna()
                ax.plot(d["step"], d[c], color=PALETTE[i % len(PALETTE)], lw=1.1, label=_component(c)[1])
            ax.set_title("adaptive loss weights")
            ax.set_xlabel("step")
            _maybe_log(ax, metrics[weights])
            ax.legend()
        if lr_cols:
            ax = axes[0, k]
            for i, c in enumerate(lr_cols):
                d = metrics[["step", c]].dropna()
                ax.plot(d["step"], d[c], color=PALETTE[i], lw=1.1)
            ax.set_title("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            ax.set_xlabel("step")
        fig.tight_layout()
        out.append(("Loss-balancing weights and learning rate", fig_to_uri(fig)))
    return out


def _pick(cands: list[str], phase: str) -> str:
    order = ("_step", "", "_epoch") if phase == "train" else ("", "_epoch", "_step")
    for suffix in order:
        for c in cands:
            plain = not re.search(r"_(step|epoch)$", c)
            if (suffix and c.endswith(suffix)) or (not suffix and plain):
                return c
    return cands[0]


def _maybe_log(ax, values: pd.DataFrame) -> None:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size and v.min() > 0 and v.max() / v.min() > 50:
        ax.set_yscale("log")


# -- data --------------------------------------------------------------------------------------
def counts_figure(totals: dict[str, dict[str, np.ndarray]], gc: dict[str, np.ndarray] | None = None) -> str:
    """Histograms of log10(1 + total counts in the output window) per cell type, peaks vs background,
    and (if given) the GC fraction of peak and background windows.

    ``totals[cell][kind]`` is a 1-D array of per-window totals (reads, both strands).
    """
    cells = list(totals)
    n = len(cells) + (1 if gc else 0)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.6), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        allv = np.concatenate([np.asarray(v, float) for v in totals[cell].values()] or [np.zeros(1)])
        bins = np.linspace(0, np.log10(1 + allv.max()) + 1e-6, 30)
        for i, (kind, v) in enumerate(sorted(totals[cell].items())):
            if len(v):
                ax.hist(np.log10(1 + np.asarray(v, float)), bins=bins, alpha=0.6, color=PALETTE[i], label=kind)
        ax.set_title(cell)
        ax.set_xlabel("log10(1 + reads per window)")
        ax.legend()
    if gc:
        ax = axes[0, -1]
        allgc = np.concatenate([np.asarray(v, float) for v in gc.values()])
        lo, hi = (np.nanmin(allgc) - 0.02, np.nanmax(allgc) + 0.02) if allgc.size else (0.0, 1.0)
        for i, (kind, v) in enumerate(sorted(gc.items())):
            if len(v):
                ax.hist(v, bins=np.linspace(lo, hi, 31), alpha=0.6, color=PALETTE[i], label=kind, density=True)
        ax.set_title("GC fraction")
        ax.set_xlabel("GC")
        ax.legend()
    axes[0, 0].set_ylabel("windows")
    fig.tight_layout()
    return fig_to_uri(fig)


# -- metrics -----------------------------------------------------------------------------------
def metric_bars_figure(columns: dict[str, dict[str, float]], metrics: Sequence[str]) -> str:
    """Grouped bars: one group per metric, one bar per column (model, baseline, ceiling, ...)."""
    metrics = [m for m in metrics if any(np.isfinite(c.get(m, np.nan)) for c in columns.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 0.8, 2.6), squeeze=False)
    names = list(columns)
    for ax, m in zip(axes[0], metrics):
        vals = [columns[n].get(m, np.nan) for n in names]
        bars = ax.bar(range(len(names)), [v if np.isfinite(v) else 0 for v in vals],
                      color=[_column_colour(n, i) for i, n in enumerate(names)])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(m)
    fig.tight_layout()
    return fig_to_uri(fig)


def _column_colour(name: str, i: int) -> str:
    if name == "baseline":
        return "#b0b0b0"
    if name == "ceiling":
        return "#555555"
    return PALETTE[i % len(PALETTE)]


# -- tracks ------------------------------------------------------------------------------------
def tracks_figure(observed: np.ndarray, predicted: np.ndarray, cells: Sequence[str], title: str,
                  start: int) -> str:
    """Observed vs predicted stranded tracks of one window, one panel per cell type.

    Parameters
    ----------
    observed, predicted : (C, 2, L) arrays
        Per-base reads (observed) and expected reads (predicted), strand 0 = plus, 1 = minus.
        The minus strand is drawn below zero.
    start : int
        Genomic start of the output window (0-based), for the x axis.
    """
    C, _, L = observed.shape
    x = start + np.arange(L)
    fig, axes = plt.subplots(C, 1, figsize=(9.5, 1.55 * C + 0.5), sharex=True, squeeze=False)
    for c, ax in enumerate(axes[:, 0]):
        for s, sign, key in ((0, 1, "plus"), (1, -1, "minus")):
            ax.fill_between(x, 0, sign * observed[c, s], step="mid", color="#9a9a9a", lw=0,
                            label="observed" if s == 0 else None)
            ax.plot(x, sign * predicted[c, s], color=STRAND_COLOURS[key], lw=1.1,
                    label=f"predicted {key}")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel(cells[c], rotation=0, ha="right", va="center", fontsize=9)
        tot_o, tot_p = observed[c].sum(), predicted[c].sum()
        ax.text(1.0, 0.97, f"obs {tot_o:.0f} / pred {tot_p:.0f} reads", transform=ax.transAxes, ha="right",
                va="top", fontsize=7, color="#444")
    axes[0, 0].legend(loc="upper left", ncol=3)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("position (bp)")
    axes[-1, 0].ticklabel_format(axis="x", style="plain", useOffset=False)
    fig.tight_layout(h_pad=0.3)
    return fig_to_uri(fig)


def heatmap_figure(matrix: pd.DataFrame, title: str, cmap: str = "RdBu_r", center: float | None = 0.0) -> str:
    """A labelled heatmap (rows x columns) with a colour bar."""
    v = matrix.to_numpy(float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * v.shape[1], 0.8 + 0.22 * v.shape[0]))
    if center is not None:
        lim = np.nanmax(np.abs(v - center)) or 1.0
        im = ax.imshow(v, cmap=cmap, vmin=center - lim, vmax=center + lim, aspect="auto")
    else:
        im = ax.imshow(v, cmap=cmap, aspect="auto")
    ax.set_xticks(range(v.shape[1]), [str(c) for c in matrix.columns], rotation=30, ha="right")
    ax.set_yticks(range(v.shape[0]), [str(r) for r in matrix.index])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig_to_uri(fig)
