"""``seq2reads report RUN``: one self-contained HTML page summarising a run.

Sections: run summary, data, training curves, test metrics (beside the baseline, the noise
ceiling and any other runs named in ``report.compare_runs``), predicted vs observed tracks,
motifs with their JASPAR matches, marginalisation, and the sparse autoencoder. Every image is an
embedded PNG (base64), so the file can be mailed or archived on its own. A section whose inputs
are missing says so in a sentence; it never stops the report.

A tiny inline script records on ``<body>`` how many images decoded (``data-images-loaded`` /
``data-images-total``), which the test reads back from headless Chromium.
"""

from __future__ import annotations

import html
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from seq2reads import __version__
from seq2reads.atomic import write_text_atomic
from seq2reads.config import Config
from seq2reads.report import plots

METRIC_ORDER = ("profile_mnll", "profile_jsd", "profile_pearson", "profile_spearman",
                "count_pearson", "count_spearman", "count_mse")
# Which direction is better, for the arrows in the metric tables.
LOWER_IS_BETTER = {"profile_mnll", "profile_jsd", "count_mse"}
SUBSET_TITLES = {"peaks": "peaks", "all": "peaks + background", "overall": "all test windows"}
EXTRA_TITLES = {"masked": "Masked reconstruction (encoder: masked spans of reads and sequence, masked cell type)"}
BAR_METRICS = ("profile_pearson", "profile_jsd", "count_pearson", "count_spearman")


class Missing(Exception):
    """A section's inputs are not there (yet); the message says which and how to make them."""


# -- small HTML helpers ------------------------------------------------------------------------
def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: object, digits: int = 3) -> str:
    """Numbers with ``digits`` significant figures; p/q-values in scientific notation when small."""
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
            return f"{f:.2e}"
        if f == int(f) and abs(f) >= 100:
            return f"{int(f):,}"
        return f"{f:.{digits}g}" if abs(f) < 1 else f"{f:.{max(digits, len(str(int(abs(f)))))}g}"
    return esc(v)


def table(rows: Sequence[Sequence[object]], header: Sequence[str], cls: str = "", raw_cols: Sequence[int] = ()) -> str:
    """An HTML table; numbers are formatted and right-aligned; ``raw_cols`` hold trusted HTML."""
    out = [f'<div class="tablewrap"><table class="{esc(cls)}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:
        cells = []
        for j, v in enumerate(r):
            if j in raw_cols:
                cells.append(f"<td>{v}</td>")
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                cells.append(f'<td class="num">{fmt(v)}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def df_table(df: pd.DataFrame, max_rows: int = 30, image_cols: Sequence[str] = ()) -> str:
    """A DataFrame as an HTML table (first ``max_rows`` rows); ``image_cols`` hold data URIs."""
    df = df.loc[:, [c for c in df.columns if c in image_cols or not df[c].isna().all()]]
    shown = df.head(max_rows)
    rows = []
    for _, r in shown.iterrows():
        row = []
        for c in shown.columns:
            v = r[c]
            if c in image_cols:
                row.append(f'<img class="logo" src="{v}" alt="logo">' if isinstance(v, str) and v else "")
            else:
                row.append(v)
        rows.append(row)
    raw = [i for i, c in enumerate(shown.columns) if c in image_cols]
    note = f'<p class="note">first {max_rows} of {len(df)} rows</p>' if len(df) > max_rows else ""
    return table(rows, [str(c) for c in shown.columns], raw_cols=raw) + note


def figure(uri: str, caption: str = "", cls: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="{cls}"><img src="{uri}" alt="{esc(caption or "figure")}">{cap}</figure>'


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", comment=None)


# -- sections ----------------------------------------------------------------------------------
def section_data(cfg: Config, run: Path) -> str:
    """Windows per split and kind, cell types, read counts per window."""
    ds_path = run / "dataset"
    if not ds_path.exists():
        raise Missing("no dataset yet: run `seq2reads prepare CONFIG`.")
    from seq2reads.data.store import open_dataset

    store = open_dataset(ds_path)
    reg = store.regions
    counts = reg.groupby(["split", "kind"]).size().unstack(fill_value=0)
    splits = [s for s in ("train", "valid", "test") if s in counts.index] + [s for s in counts.index if s not in ("train", "valid", "test")]
    kinds = list(counts.columns)
    rows = [[s, *[int(counts.loc[s, k]) for k in kinds], int(counts.loc[s].sum())] for s in splits]
    rows.append(["all", *[int(counts[k].sum()) for k in kinds], int(counts.values.sum())])
    chroms = reg.groupby("split")["chrom"].unique()
    chrom_rows = [[s, ", ".join(sorted(map(str, chroms.get(s, []))))] for s in splits]

    # Reads in the output window per cell type and kind (a sample of windows keeps this cheap).
    rng = np.random.default_rng(0)
    n = len(reg)
    idx = np.sort(rng.choice(n, size=min(n, 1500), replace=False))
    sig = np.asarray(store.signal[idx])  # (n, C, 2, S)
    S = sig.shape[-1]
    lo = (S - store.output_len) // 2
    tot = sig[..., lo: lo + store.output_len].sum(axis=(2, 3))  # (n, C)
    kinds_s = reg["kind"].to_numpy()[idx]
    totals = {cell: {k: tot[kinds_s == k, c] for k in np.unique(kinds_s)} for c, cell in enumerate(store.samples)}
    cell_rows = []
    for c, cell in enumerate(store.samples):
        pk = tot[kinds_s == "peak", c]
        bg = tot[kinds_s == "background", c]
        cell_rows.append([cell, float(np.median(pk)) if len(pk) else np.nan, float(np.mean(pk)) if len(pk) else np.nan,
                          float(np.median(bg)) if len(bg) else np.nan, f"{(pk > 0).mean():.0%}" if len(pk) else "–"])
    gc = {k: reg["gc"].to_numpy()[reg["kind"].to_numpy() == k] for k in reg["kind"].unique()} if "gc" in reg else None
    fig = plots.counts_figure(totals, gc)
    spec = (f"Windows of {store.input_len:,} bp input → {store.output_len:,} bp output, jitter ±{store.jitter} bp; "
            f"assay <b>{esc(store.attrs.get('assay', cfg.assay))}</b>; {len(store.samples)} cell types.")
    return (
        f"<p>{spec}</p>"
        '<div class="cols"><div>'
        "<h3>Windows per split</h3>" + table(rows, ["split", *kinds, "total"]) +
        "<h3>Chromosomes per split</h3>" + table(chrom_rows, ["split", "chromosomes"]) +
        "</div><div>"
        "<h3>Reads per output window</h3>" +
        table(cell_rows, ["cell type", "peak median", "peak mean", "background median", "peaks with reads"]) +
        f'<p class="note">From {len(idx):,} of {n:,} windows.</p>'
        "</div></div>" + figure(fig, "Reads per output window (both strands) by cell type, peaks vs background; "
                                     "and the GC fraction of each kind of window (background is GC-matched).")
    )


def section_training(cfg: Config, run: Path) -> str:
    """Loss curves of every logged component (Lightning CSVLogger metrics.csv)."""
    files = sorted((run / "logs").rglob("metrics.csv")) if (run / "logs").exists() else []
    if not files:
        raise Missing("no training log (logs/metrics.csv): run `seq2reads train CONFIG`.")
    # The newest log (a resumed run may write a new version folder); concatenated in order.
    df = pd.concat([pd.read_csv(f) for f in sorted(files, key=lambda f: f.stat().st_mtime)], ignore_index=True)
    figs = plots.loss_curve_figures(df)
    if not figs:
        raise Missing(f"{files[-1]} holds no train/ or val/ columns.")
    last = []
    for c in df.columns:
        if "/" in c and pd.api.types.is_numeric_dtype(df[c]):
            s = df[c].dropna()
            if len(s):
                last.append([c, float(s.iloc[0]), float(s.iloc[-1]), float(s.min()), len(s)])
    best = ""
    if "val/loss" in df:
        v = df[["step", "val/loss"]].dropna()
        if len(v):
            b = v.loc[v["val/loss"].idxmin()]
            best = f"<p>Best validation loss <b>{fmt(float(b['val/loss']))}</b> at step {int(b['step']):,}.</p>"
    epochs = int(df["epoch"].max()) + 1 if "epoch" in df and df["epoch"].notna().any() else None
    steps = int(df["step"].max()) + 1 if "step" in df and df["step"].notna().any() else None
    summary = f"<p>{fmt(epochs) if epochs else '?'} epoch{'s' if epochs != 1 else ''}, {fmt(steps) if steps else '?'} optimisation steps.</p>"
    body = "".join(figure(u, t) for t, u in figs)
    return (summary + best + body + "<details><summary>Every logged value (first, last, minimum)</summary>" +
            table(last, ["column", "first", "last", "min", "points"]) + "</details>")


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _dedupe(out: dict) -> dict:
    """Drop the unnamed 'overall' subset when a named subset (e.g. 'peaks') holds the same numbers."""
    if "overall" in out and any(k != "overall" and v == out["overall"] for k, v in out.items()):
        out = {k: v for k, v in out.items() if k != "overall"}
    return out


def metric_subsets(node: object) -> dict[str, dict[str, float]]:
    """Flatten a metrics node into {subset name: {metric: value}}.

    Accepts flat dicts of metrics and nestings such as ``{"overall": {...}, "per_cell_type": {...},
    "peaks": {"overall": ...}, "all": {...}}`` (per-cell-type entries are left out here; see
    :func:`per_cell_subsets`). An ``overall`` level adds no name.
    """
    out: dict[str, dict[str, float]] = {}

    def visit(n, name):
        if not isinstance(n, dict):
            return
        flat = _numbers(n)
        if flat:
            out.setdefault(name or "overall", flat)
        for k, v in n.items():
            if k != "per_cell_type" and isinstance(v, dict):
                visit(v, name if k == "overall" else (f"{name} · {k}" if name else k))

    visit(node, "")
    return _dedupe(out)


def per_cell_subsets(node: object) -> dict[str, dict[str, dict[str, float]]]:
    """{subset: {cell: metrics}} from the ``per_cell_type`` entries anywhere under ``node``."""
    out: dict[str, dict[str, dict[str, float]]] = {}

    def visit(n, name):
        if not isinstance(n, dict):
            return
        pc = n.get("per_cell_type")
        if isinstance(pc, dict):
            cells = {cell: _numbers(m) for cell, m in pc.items() if isinstance(m, dict) and _numbers(m)}
            if cells:
                out.setdefault(name or "overall", cells)
        for k, v in n.items():
            if k != "per_cell_type" and isinstance(v, dict):
                visit(v, name if k == "overall" else (f"{name} · {k}" if name else k))

    visit(node, "")
    return _dedupe(out)


def _ordered(metrics: Sequence[str]) -> list[str]:
    known = [m for m in METRIC_ORDER if m in metrics]
    return known + sorted(m for m in metrics if m not in METRIC_ORDER)


def _run_label(run: Path) -> str:
    try:
        info = json.loads((run / "model" / "model.json").read_text())
        mtype = info.get("model", {}).get("type", "")
    except (OSError, json.JSONDecodeError):
        mtype = ""
    return f"{run.name}" + (f" ({mtype})" if mtype and mtype != run.name else "")


def section_metrics(cfg: Config, run: Path) -> str:
    """Test metrics beside the baseline, the ceiling, and other runs' test metrics."""
    p = run / "metrics.json"
    if not p.exists():
        raise Missing("no metrics.json: run `seq2reads evaluate RUN`.")
    m = json.loads(p.read_text())
    test = metric_subsets(m.get("test", {}))
    base = metric_subsets(m.get("baseline", {}))
    ceil = metric_subsets(m.get("ceiling", {}))
    others: dict[str, dict[str, dict[str, float]]] = {}
    missing_others = []
    for o in cfg.report.compare_runs:
        op = Path(o)
        if (op / "metrics.json").exists():
            others[_run_label(op)] = metric_subsets(json.loads((op / "metrics.json").read_text()).get("test", {}))
        else:
            missing_others.append(str(op))
    me = _run_label(run) + " ★"
    parts = ['<p>Test split (held-out chromosomes). ★ = this run. Arrows: ↑ higher is better, ↓ lower is better. '
             "The <i>baseline</i> predicts the average training profile scaled to the mean count; the "
             "<i>ceiling</i> is what the true rates (simulated data) or a replicate reach.</p>"]
    for sub, vals in test.items():
        counts = {k: v for k, v in vals.items() if k.startswith("n_")}
        vals = {k: v for k, v in vals.items() if not k.startswith("n_")}
        cols = {me: vals}
        for name, o in others.items():
            if sub in o:
                cols[name] = o[sub]
        cols["baseline"] = _match(base, sub)
        cols["ceiling"] = _match(ceil, sub)
        names = _ordered(set().union(*[{k for k in c if not k.startswith("n_")} for c in cols.values()]))
        rows = [[f"{n} {'↓' if n in LOWER_IS_BETTER else '↑'}", *[c.get(n, np.nan) for c in cols.values()]] for n in names]
        note = ", ".join(f"{k.removeprefix('n_').replace('_', ' ')}: {fmt(int(v))}" for k, v in counts.items())
        parts.append(f"<h3>Overall — {esc(SUBSET_TITLES.get(sub, sub))}</h3>" + table(rows, ["metric", *cols], cls="metrics")
                     + (f'<p class="note">Windows — {esc(note)}.</p>' if note else ""))
        bar_metrics = [b for b in BAR_METRICS if b in names]
        if bar_metrics:
            parts.append(figure(plots.metric_bars_figure(cols, bar_metrics), f"Overall test metrics, {SUBSET_TITLES.get(sub, sub)}"))
    for sub, cells in per_cell_subsets(m.get("test", {})).items():
        names = _ordered(set().union(*[{k for k in v if not k.startswith("n_")} for v in cells.values()]))
        rows = [[cell, *[vals.get(n, np.nan) for n in names]] for cell, vals in cells.items()]
        parts.append(f"<h3>Per cell type — {esc(SUBSET_TITLES.get(sub, sub))}</h3>" + table(rows, ["cell type", *names], cls="metrics"))
    extra = {k: v for k, v in m.items() if k not in ("test", "baseline", "ceiling", "info") and isinstance(v, dict)}
    for k, v in extra.items():
        subs = metric_subsets(v)
        if subs:
            names = _ordered(set().union(*[set(x) for x in subs.values()]))
            rows = [[n, *[s.get(n, np.nan) for s in subs.values()]] for n in names]
            title = EXTRA_TITLES.get(k, k.replace("_", " "))
            parts.append(f"<h3>{esc(title)}</h3>" + table(rows, ["metric", *[s if s != "overall" else "value" for s in subs]],
                                                         cls="metrics"))
    notes = [("baseline", (m.get("baseline") or {}).get("note") if isinstance(m.get("baseline"), dict) else None),
             ("ceiling", (m.get("ceiling") or {}).get("note") if isinstance(m.get("ceiling"), dict) else m.get("ceiling_note"))]
    for k, note in notes:
        if isinstance(note, str) and note:
            parts.append(f'<p class="note"><b>{k}</b>: {esc(note)}</p>')
    if missing_others:
        parts.append(f'<p class="missing">No metrics yet for compared run(s): {esc(", ".join(missing_others))}.</p>')
    return "".join(parts)


def _match(subsets: dict[str, dict[str, float]], sub: str) -> dict[str, float]:
    if sub in subsets:
        return subsets[sub]
    if len(subsets) == 1:
        return next(iter(subsets.values()))
    for k, v in subsets.items():
        if sub.endswith(k) or k.endswith(sub):
            return v
    return {}


def section_tracks(cfg: Config, run: Path) -> str:
    """Predicted vs observed stranded tracks for example test peaks, every cell type."""
    if not (run / "model" / "model.safetensors").exists():
        raise Missing("no trained model: run `seq2reads train CONFIG`.")
    if not (run / "dataset").exists():
        raise Missing("no dataset: run `seq2reads prepare CONFIG`.")
    n_ex = cfg.report.example_regions
    if n_ex == 0:
        raise Missing("report.example_regions is 0.")
    import torch

    from seq2reads.data.genome import one_hot
    from seq2reads.data.store import open_dataset
    from seq2reads.evaluation.predict import inference_model, predict_windows
    from seq2reads.models.io import load_model

    store = open_dataset(run / "dataset")
    idx = store.indices("test", kinds=("peak",))
    if len(idx) == 0:
        raise Missing("the test split has no peak windows.")
    sig = np.asarray(store.signal[idx])  # (n, C, 2, S)
    S, Lo, Li = sig.shape[-1], store.output_len, store.input_len
    lo = (S - Lo) // 2
    obs = sig[..., lo: lo + Lo]  # (n, C, 2, Lo)
    tot = obs.sum(axis=(2, 3))  # (n, C)
    chosen = _example_windows(tot, n_ex)
    rows = idx[chosen]
    codes = np.asarray(store.seq[np.sort(rows)])
    order = np.argsort(np.argsort(rows))  # back to the chosen order
    codes = codes[order]
    li = (S - Li) // 2
    X = one_hot(codes[:, li: li + Li])
    model = inference_model(cfg, load_model(run, device="cpu").eval())  # as evaluate and predict see it
    with torch.no_grad():
        logits, log_counts = predict_windows(model, X, batch_size=16)
    logits = np.asarray(logits, dtype=np.float64)
    N, C = logits.shape[:2]
    flat = logits.reshape(N, C, -1)
    prob = np.exp(flat - flat.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    total = np.maximum(np.expm1(np.asarray(log_counts, dtype=np.float64)), 0.0)  # a count below 0 means none
    pred = (prob * total[..., None]).reshape(logits.shape)
    reg = store.regions
    parts = [f"<p>{len(rows)} test peaks (held-out chromosomes), chosen as the busiest window overall and the most "
             "cell-type-specific window of each cell type. Grey: observed reads (plus strand up, minus strand "
             "down); lines: the model's expected reads (profile × predicted total).</p>"]
    for j, (r, ch) in enumerate(zip(rows, chosen)):
        info = reg.iloc[int(r)]
        start = int(info["centre"]) - Lo // 2
        title = f"{info['chrom']}:{start:,}-{start + Lo:,}  {info.get('name', '')}"
        parts.append(figure(plots.tracks_figure(obs[ch], pred[j], store.samples, title, start)))
    return "".join(parts)


def _example_windows(tot: np.ndarray, n: int) -> list[int]:
    """Row indices: the highest-count window, then the most specific window of each cell type."""
    chosen = [int(np.argmax(tot.sum(1)))]
    frac = tot / np.maximum(tot.sum(1, keepdims=True), 1)
    busy = tot.sum(1) >= np.quantile(tot.sum(1), 0.5)
    for c in range(tot.shape[1]):
        if len(chosen) >= n:
            break
        score = np.where(busy, frac[:, c], -1)
        score[chosen] = -2
        chosen.append(int(np.argmax(score)))
    order = np.argsort(-tot.sum(1))
    for i in order:
        if len(chosen) >= n:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return chosen[:n]


def _find_logo(logos: Path, name: str) -> str | None:
    """The logo PNG of a pattern (``logos/{cell}.{target}.{pattern}.png``) as a data URI."""
    p = logos / f"{name}.png"
    return plots.png_file_to_uri(p) if p.exists() else None


def _match_cell(row: pd.Series, i: int) -> str:
    mid, name, q = row.get(f"match{i}_id"), row.get(f"match{i}_name"), row.get(f"match{i}_q")
    if not isinstance(mid, str) or not mid:
        return "–"
    strong = isinstance(q, float) and q < 0.05
    txt = f"{esc(name)} <span class=\"note\">{esc(mid)}, q={fmt(q, 2)}</span>"
    return f"<b>{txt}</b>" if strong else txt


def _planted(cfg: Config) -> list[dict]:
    """Planted motifs of simulated data (``truth.json``), or [] for real data."""
    if not cfg.truth or not Path(cfg.truth).exists():
        return []
    try:
        truth = json.loads(Path(cfg.truth).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [m for m in truth.get("motifs", []) if isinstance(m, dict) and m.get("jaspar_id")]


def section_motifs(cfg: Config, run: Path) -> str:
    """TF-MoDISco patterns with logos and their best JASPAR matches (TOMTOM)."""
    mdir = run / "motifs"
    tsv = mdir / "motifs.tsv"
    if not tsv.exists():
        raise Missing("no motifs.tsv: run `seq2reads motifs RUN` (after `seq2reads attribute RUN`).")
    df = read_tsv(tsv)
    summary = {}
    if (mdir / "summary.json").exists():
        summary = json.loads((mdir / "summary.json").read_text())
    parts = []
    if df.empty:
        parts.append("<p>TF-MoDISco found no patterns in the attributions (the table is empty).</p>")
    else:
        have = {"cell_type", "target", "pattern"} <= set(df.columns)
        rows = []
        for _, r in df.iterrows():
            name = f"{r['cell_type']}.{r['target']}.{r['pattern']}" if have else str(r.iloc[0])
            uri = _find_logo(mdir / "logos", name)
            logo = f'<img class="logo" src="{uri}" alt="{esc(name)}">' if uri else "–"
            rows.append([logo, r.get("cell_type", ""), r.get("target", ""), r.get("pattern", ""),
                         r.get("n_seqlets", np.nan), _match_cell(r, 1), _match_cell(r, 2),
                         r.get("centre_offset_median", np.nan), r.get("strand_bias", np.nan)])
        parts.append(
            f"<p>{len(df)} patterns from TF-MoDISco on the attributions, each compared with TOMTOM to JASPAR "
            f"CORE vertebrates non-redundant ({esc(summary.get('motif_db', cfg.interpret.motif_db))}); "
            "bold matches have q &lt; 0.05. Offset: median seqlet centre relative to the window centre (bp); "
            "strand: fraction of seqlets on the strand of transcription.</p>"
            + table(rows, ["logo", "cell type", "target", "pattern", "seqlets", "best match", "second match",
                           "offset", "strand"], cls="motifs", raw_cols=(0, 5, 6)))
    if summary.get("no_patterns"):
        parts.append(f'<p class="note">No patterns for: {esc(", ".join(summary["no_patterns"]))}.</p>')
    shared = mdir / "shared.tsv"
    if shared.exists():
        sdf = read_tsv(shared)
        if not sdf.empty:
            keep = [c for c in ("match_name", "match_id", "sign", "category", "n_cell_types", "cell_types", "patterns")
                    if c in sdf.columns]
            parts.append("<h3>Shared and cell-type-specific patterns</h3>" + df_table(sdf[keep] if keep else sdf, 30))
    planted = _planted(cfg)
    if planted and not df.empty:
        ids = [c for c in df.columns if c.endswith("_id") and c.startswith("match")]
        rows = []
        for m in planted:
            base = str(m["jaspar_id"]).split(".")[0]
            hit = df[[any(str(v).split(".")[0] == base for v in r[ids]) for _, r in df.iterrows()]] if ids else df.iloc[:0]
            best = df[df.get("match1_id", pd.Series("", index=df.index)).astype(str).str.split(".").str[0] == base]
            rows.append([m.get("name", ""), m["jaspar_id"], m.get("role", ""), ", ".join(m.get("cell_types", [])),
                         int(m.get("n_instances", 0)),
                         ", ".join(sorted(set(best["cell_type"]))) if len(best) and "cell_type" in best else "–",
                         len(hit)])
        parts.append("<h3>Planted motifs (simulated data)</h3>"
                     "<p class=\"note\">Which planted JASPAR matrices come back as a pattern's best match, and in "
                     "which cell types' attributions.</p>"
                     + table(rows, ["TF", "JASPAR", "role", "active in", "sites (planted + chance)", "best match in",
                                   "patterns matching"]))
    return "".join(parts)


def section_marginalize(cfg: Config, run: Path) -> str:
    """Predicted effect of inserting known motifs into background sequences."""
    mdir = run / "marginalize"
    if not mdir.exists():
        raise Missing("no marginalisation: run `seq2reads marginalize RUN --motif ID...` "
                      "(e.g. the JASPAR IDs of motifs you expect).")
    parts = ["<p>Each motif's consensus inserted at the centre of background sequences; the change in the "
             "model's predicted log total count and expected reads per cell type and strand.</p>"]
    eff = mdir / "effects.tsv"
    pngs = sorted(mdir.glob("*.png"), key=lambda f: (f.name != "log_counts.png", f.name.startswith("probes"), f.name))
    for f in pngs:
        if f.name.startswith("probes"):
            continue
        if uri := plots.png_file_to_uri(f):
            parts.append(figure(uri, f.stem.replace(".profile", ": profile change").replace("_", " ")))
    if eff.exists():
        df = read_tsv(eff)
        parts.append("<details><summary>Effect table (effects.tsv)</summary>" + df_table(df, max_rows=60) + "</details>")
    for f in sorted(mdir.glob("*.tsv")):
        if f.name != "effects.tsv":
            parts.append(f"<h3>{esc(f.name)}</h3>" + df_table(read_tsv(f), max_rows=40))
    probes = [f for f in pngs if f.name.startswith("probes")]
    if probes:
        parts.append("<h3>Random-variation probes</h3><p>Predicted log counts on real peaks, their dinucleotide "
                     "shuffles and random sequences: what the model does where the data did not pin it down.</p>")
        parts += [figure(u) for f in probes if (u := plots.png_file_to_uri(f))]
    if len(parts) == 1:
        raise Missing(f"{mdir} holds no tables or figures.")
    return "".join(parts)


SAE_METRICS = ("fvu", "mean_l0", "dead_fraction", "delta_loss", "delta_loss_rel", "loss", "loss_sae", "vectors_per_s")


def section_sae(cfg: Config, run: Path) -> str:
    """SAE quality metrics, the latent x cell-type heatmap and the top features."""
    sdir = run / "sae"
    if not (sdir / "features.tsv").exists() and not (sdir / "metrics.json").exists():
        raise Missing("no SAE outputs: run `seq2reads sae RUN`.")
    parts = []
    mp = sdir / "metrics.json"
    if mp.exists():
        m = json.loads(mp.read_text())
        flat = dict((k, v) for k, v in _flatten(m) if isinstance(v, (int, float, str)) and not isinstance(v, bool))
        main_rows = [[k, flat[k]] for k in SAE_METRICS if k in flat]
        rest = [[k, v] for k, v in flat.items() if k not in SAE_METRICS]
        parts.append("<p>A sparse autoencoder on the model's per-position embeddings. FVU: fraction of variance "
                     "unexplained; L0: active latents per position; delta loss: change in the model's own loss "
                     "when the layer's activations are replaced by the SAE reconstruction.</p>"
                     '<div class="cols"><div>' + table(main_rows, ["quantity", "value"]) + "</div><div>"
                     "<details><summary>Settings and other values</summary>" + table(rest, ["key", "value"]) +
                     "</details></div></div>")
    hp = sdir / "heatmap.png"
    if hp.exists() and (uri := plots.png_file_to_uri(hp)):
        parts.append(figure(uri, "Latent × cell-type enrichment (log-odds of being active in each cell type)"))
    fp = sdir / "features.tsv"
    if fp.exists():
        df = read_tsv(fp)
        keep = [c for c in ("latent", "frequency", "top_cell_type", "log_odds", "q", "best_match_name",
                            "best_match_id", "match_q", "planted_motif", "planted_window_frac",
                            "attr_seq", "attr_reads", "attr_cell") if c in df.columns]
        parts.append(f"<h3>Top features (of {len(df)} latents)</h3>" + df_table(df[keep] if keep else df, max_rows=20))
    for f in sorted(sdir.glob("*.png")):
        if f.name != "heatmap.png" and (uri := plots.png_file_to_uri(f)):
            parts.append(figure(uri, f.stem.replace("_", " ")))
    return "".join(parts)


def _flatten(d: object, prefix: str = ""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, d


SECTIONS: list[tuple[str, str, Callable[[Config, Path], str]]] = [
    ("data", "Data", section_data),
    ("training", "Training", section_training),
    ("metrics", "Test metrics", section_metrics),
    ("tracks", "Predicted vs observed tracks", section_tracks),
    ("motifs", "Motifs and JASPAR matches", section_motifs),
    ("marginalize", "Marginalisation", section_marginalize),
    ("sae", "Sparse autoencoder features", section_sae),
]


# -- page --------------------------------------------------------------------------------------
def _summary(cfg: Config, run: Path) -> str:
    model = cfg.model.model_dump()
    mtype = model.pop("type")
    keys = ("filters", "layers") if mtype == "bpnet" else ("d_model", "depth", "heads", "patch")
    msum = ", ".join(f"{k} {model[k]}" for k in keys if k in model)
    n_params = ""
    mj = run / "model" / "model.json"
    if mj.exists():
        try:
            extra = json.loads(mj.read_text()).get("extra", {})
            if "n_params" in extra:
                n_params = f", {int(extra['n_params']):,} parameters"
        except (OSError, json.JSONDecodeError, ValueError):
            pass
    steps = []
    for s in ("prepare", "train", "evaluate", "attribute", "motifs", "marginalize", "sae"):
        try:
            rec = json.loads((run / ".steps" / f"{s}.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("status") == "done":
            steps.append(f"{s} {rec.get('seconds', 0):.0f} s")
    items = [
        ("model", f"<b>{esc(mtype)}</b> ({esc(msum)}{n_params})"),
        ("cell types", esc(", ".join(cfg.cell_types))),
        ("assay", esc(cfg.assay)),
        ("window", f"{cfg.window.input:,} → {cfg.window.output:,} bp"),
        ("run folder", f"<code>{esc(run)}</code>"),
        ("steps", esc(" · ".join(steps)) if steps else "–"),
    ]
    return "<dl class=\"summary\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#e3e6ec; --accent:#1f5fa8; --bg:#fbfbfd; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#14213d; color:#fff; padding:22px 0 18px; }
header .wrap, main { max-width:1120px; margin:0 auto; padding:0 28px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:600; letter-spacing:-0.3px; }
header .sub { color:#c9d3e6; font-size:13px; }
dl.summary { display:grid; grid-template-columns:max-content 1fr; gap:3px 18px; margin:14px 0 0; font-size:13.5px; }
dl.summary dt { color:#9fb0cf; } dl.summary dd { margin:0; } dl.summary code { color:#fff; }
nav.toc { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; margin:22px 0 6px; }
nav.toc ol { margin:4px 0; padding-left:20px; columns:2; font-size:14px; }
nav.toc a { color:var(--accent); text-decoration:none; } nav.toc a:hover { text-decoration:underline; }
nav.toc .flag { color:#a15c00; font-size:12px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:6px 24px 18px; margin:18px 0; }
section h2 { font-size:20px; margin:14px 0 8px; border-bottom:2px solid var(--accent); display:inline-block; padding-bottom:2px; }
h3 { font-size:15px; margin:18px 0 6px; color:#2b3447; }
table { border-collapse:collapse; margin:6px 0 10px; font-size:13px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
th { background:#f2f4f8; font-weight:600; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fafbfc; }
td.num { text-align:right; font-variant-numeric:tabular-nums; font-family:ui-monospace, "SFMono-Regular", Menlo, monospace; font-size:12.5px; }
table.metrics td:first-child { white-space:nowrap; }
figure { margin:12px 0; } figure img { max-width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:2px; }
img.logo { height:72px; max-width:340px; display:block; }
.tablewrap { overflow-x:auto; max-width:100%; }
.cols { display:flex; gap:28px; flex-wrap:wrap; } .cols > div { flex:1 1 400px; }
.note { color:var(--muted); font-size:12.5px; margin:2px 0; }
.missing { background:#fff7e6; border-left:4px solid #f0a020; padding:8px 12px; color:#6b4a00; }
.error { background:#fdecec; border-left:4px solid #d33; padding:8px 12px; color:#7a1010; white-space:pre-wrap; font-size:12.5px; }
details { margin:8px 0; } summary { cursor:pointer; color:var(--accent); font-size:13.5px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:10px 0 28px; }
"""

# Counts decoded images so that a headless browser can check that every figure loaded.
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
});
"""


def render_report(cfg: Config, log: Callable[[str], None] | None = None) -> str:
    """The report's HTML text (see :func:`report_run`)."""
    run = cfg.run_path
    log = log or (lambda msg: print(msg, file=sys.stderr))
    blocks, toc = [], []
    for key, title, func in SECTIONS:
        flag = ""
        try:
            body = func(cfg, run)
        except Missing as e:
            body = f'<p class="missing">Not available: {esc(e)}</p>'
            flag = ' <span class="flag">(missing)</span>'
        except Exception as e:  # a broken input must not cost the whole report: show it, say it
            log(f"[seq2reads] report: section '{title}' failed: {type(e).__name__}: {e}")
            body = (f'<p class="error">This section could not be drawn: {esc(type(e).__name__)}: {esc(e)}</p>'
                    f"<details><summary>traceback</summary><pre>{esc(traceback.format_exc())}</pre></details>")
            flag = ' <span class="flag">(error)</span>'
        blocks.append(f'<section id="{key}" data-section="{key}"><h2>{esc(title)}</h2>{body}</section>')
        toc.append(f'<li><a href="#{key}">{esc(title)}</a>{flag}</li>')
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>seq2reads report: {esc(run.name)}</title>
<style>{CSS}</style></head>
<body>
<header><div class="wrap">
<h1>seq2reads report · {esc(run.name)}</h1>
<div class="sub">Sequence-to-read model of nascent transcription · created {created} · seq2reads {esc(__version__)}</div>
{_summary(cfg, run)}
</div></header>
<main>
<nav class="toc"><b>Contents</b><ol>{''.join(toc)}</ol></nav>
{''.join(blocks)}
</main>
<footer>seq2reads {esc(__version__)} · config hash {esc(cfg.section_hash())}</footer>
<script>{SCRIPT}</script>
</body></html>
"""


def report_run(cfg: Config) -> Path:
    """Write ``RUN/report.html`` (self-contained) and return its path."""
    out = cfg.run_path / "report.html"
    return write_text_atomic(out, render_report(cfg))
