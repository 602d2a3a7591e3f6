"""Per-latent analysis of a trained SAE: thresholds, top windows, cell-type enrichment, attributions
and motifs (SPEC.md, "Sparse autoencoders").

- **Threshold**: a normal is fitted (streaming sums over *all* vectors of the store) to each
  latent's activations where it fires (z > 0; the zeros of TopK/ReLU are "not active", not small
  activations, and including them puts the threshold so low that the maximum over a window's
  hundreds of positions nearly always exceeds it), and a latent counts as "on" where it exceeds
  mean + 3 sigma of that normal.
- **Units of enrichment**: (window, cell type) pairs. For the encoder every window is embedded once
  per cell type, so a pair is "window w run as cell type c"; for the CNN (whose embeddings do not
  depend on the cell type) each window appears once, labelled with its most active cell type. A
  pair is active for a latent when the latent's maximum over the pair's positions is above the
  threshold.
- **Enrichment** per latent and cell type: 2x2 table (pairs of that cell type vs the others, active
  vs not), log odds ratio with a 0.5 pseudocount per cell (Haldane-Anscombe), one-sided Fisher exact
  p (``scipy.stats.fisher_exact``, alternative "greater"), Benjamini-Hochberg q over all
  latent x cell-type tests (``scipy.stats.false_discovery_control``).
- **Top windows**: the pairs with the largest maximum activation, with the position of the max.
- **Attributions** (for the ``max_features`` most enriched latents): integrated gradients of the
  latent's activation at its top position (the ReLU of its encoder pre-activation, which equals the
  TopK activation where the latent is selected and is smooth along the path) w.r.t. the sequence
  (``interpret.ig_shuffles`` dinucleotide-shuffled baselines, averaged), and for the encoder also
  the reads (zero baseline) and the cell-type one-hot (uniform baseline); computed with the
  interpretation layer's :func:`~seq2reads.interpret.attributions.shuffled_ig`.
- **Motifs**: TF-MoDISco (modisco-lite) on the sequence attributions of the latent's top windows,
  cropped to +-``MOTIF_FLANK`` bp around the top position, patterns matched to JASPAR with TOMTOM
  (the interpretation layer's :func:`~seq2reads.interpret.motifs.run_modisco` /
  :func:`~seq2reads.interpret.motifs.match_motifs`).
- **Planted truth** (simulated data, ``cfg.truth``): the fraction of a latent's top windows that
  contain a planted instance of each motif (``window`` level), and whose top position lies within
  ``SITE_TOL`` bp of one (``site`` level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from seq2reads.sae.activations import CHUNK, ActivationStore
from seq2reads.sae.model import SparseAutoencoder

PSEUDOCOUNT = 0.5
MOTIF_FLANK = 100   # bp either side of a latent's top position given to TF-MoDISco
SITE_TOL = 10       # bp: a top position this close to a planted instance counts as on it
FEATURE_COLUMNS = ["latent", "frequency", "active_pairs", "threshold", "top_cell_type", "log_odds", "p", "q",
                   "best_match_id", "best_match_name", "match_q", "n_patterns", "planted_motif",
                   "planted_window_frac", "planted_site_frac", "attr_seq", "attr_reads", "attr_cell"]


@dataclass
class LatentStats:
    """Streaming statistics of every latent over an activation store.

    Attributes
    ----------
    mean, std : float64 (n,)
        Normal fitted to each latent's firing (> 0) activations over all vectors.
    frequency : float64 (n,)
        Fraction of vectors where the latent fires (> 0).
    pair_max : float32 (P, n)
        Maximum activation per (window, cell) pair; pair ``p = window_row * C + cell``.
    pair_pos : int32 (P, n)
        Token position of that maximum.
    present : bool (P,)
        Pairs that occur in the store.
    """

    mean: np.ndarray
    std: np.ndarray
    frequency: np.ndarray
    pair_max: np.ndarray
    pair_pos: np.ndarray
    present: np.ndarray
    n_cells: int

    @property
    def threshold(self) -> np.ndarray:
        return self.mean + 3 * self.std

    def active(self) -> np.ndarray:
        """Bool (P, n): pairs whose maximum exceeds the latent's threshold (and is > 0)."""
        thr = self.threshold.astype(np.float32)
        return (self.pair_max > thr[None]) & (self.pair_max > 0)


@torch.no_grad()
def latent_stats(sae: SparseAutoencoder, store: ActivationStore, n_cells: int, batch_size: int = 8192,
                 chunk: int = CHUNK, progress: bool = False) -> LatentStats:
    """One streaming pass over the store computing :class:`LatentStats` (memory O(P * n))."""
    from tqdm.auto import tqdm

    sae.eval()
    n = sae.n_latents
    windows = store.windows
    row_of = np.full(int(windows.max()) + 1, -1, np.int64)
    row_of[windows] = np.arange(len(windows))
    n_pairs = len(windows) * n_cells
    pmax = torch.zeros(n_pairs, n)
    ppos = torch.zeros(n_pairs, n, dtype=torch.int32)
    present = np.zeros(n_pairs, bool)
    s1 = torch.zeros(n, dtype=torch.float64)
    s2 = torch.zeros(n, dtype=torch.float64)
    fired = torch.zeros(n, dtype=torch.float64)
    total = 0
    for s, e in tqdm(store.chunk_bounds(chunk), desc="SAE latents", disable=not progress, leave=False):
        blk = store.read(s, e)
        pair = row_of[blk["window"]] * n_cells + blk["cell"]
        present[pair] = True
        for b in range(0, len(pair), batch_size):
            z = sae.encode(torch.from_numpy(blk["x"][b:b + batch_size]))
            p = torch.from_numpy(pair[b:b + batch_size])
            pos = torch.from_numpy(blk["pos"][b:b + batch_size]).to(torch.int32)
            zd = z.double()  # zeros add nothing to the sums: moments of the firing activations
            s1 += zd.sum(0)
            s2 += zd.pow(2).sum(0)
            fired += (z > 0).sum(0)
            total += z.shape[0]
            # chunk-local per-pair maximum and its position, then merged into the running ones
            uniq, inv = torch.unique(p, return_inverse=True)
            idx = inv[:, None].expand_as(z)
            cmax = torch.zeros(len(uniq), n).scatter_reduce(0, idx, z, "amax", include_self=False)
            at_max = z >= cmax[inv]
            cand = torch.where(at_max, pos[:, None].expand_as(z), torch.full_like(z, -1, dtype=torch.int32))
            cpos = torch.full((len(uniq), n), -1, dtype=torch.int32).scatter_reduce(0, idx, cand, "amax")
            better = cmax > pmax[uniq]
            pmax[uniq] = torch.where(better, cmax, pmax[uniq])
            ppos[uniq] = torch.where(better, cpos, ppos[uniq])
    nz = fired.clamp_min(1)
    mean = (s1 / nz).numpy()
    var = (s2 / nz).numpy() - mean**2
    return LatentStats(mean=mean, std=np.sqrt(np.maximum(var, 0)), frequency=(fired / max(total, 1)).numpy(),
                       pair_max=pmax.numpy(), pair_pos=ppos.numpy(), present=present, n_cells=n_cells)


def enrichment(active: np.ndarray, pair_cell: np.ndarray, present: np.ndarray, cell_types: Sequence[str]) -> pd.DataFrame:
    """Cell-type enrichment of every latent.

    Parameters
    ----------
    active : bool (P, n)
        Pairs on which each latent is active.
    pair_cell : int (P,)
        Cell type of each pair.
    present : bool (P,)
        Pairs that exist (others are ignored).
    cell_types : names of the C cell types.

    Returns
    -------
    DataFrame with one row per (latent, cell type): ``a`` active pairs of that cell type, ``b``
    inactive ones, ``c`` active pairs of other cell types, ``d`` inactive ones, ``log_odds``
    (natural log, pseudocount 0.5), one-sided Fisher ``p`` and BH ``q`` over all rows.
    """
    from scipy.stats import false_discovery_control, fisher_exact

    act = active[present]
    cell = pair_cell[present]
    rows = []
    for c, name in enumerate(cell_types):
        in_c = cell == c
        a = act[in_c].sum(0)
        b = in_c.sum() - a
        cc = act[~in_c].sum(0)
        d = (~in_c).sum() - cc
        for lat in range(act.shape[1]):
            tab = [[int(a[lat]), int(b[lat])], [int(cc[lat]), int(d[lat])]]
            p = fisher_exact(tab, alternative="greater").pvalue if (a[lat] + cc[lat]) else 1.0
            lo = np.log((a[lat] + PSEUDOCOUNT) * (d[lat] + PSEUDOCOUNT) / ((b[lat] + PSEUDOCOUNT) * (cc[lat] + PSEUDOCOUNT)))
            rows.append({"latent": lat, "cell_type": name, "a": int(a[lat]), "b": int(b[lat]), "c": int(cc[lat]),
                         "d": int(d[lat]), "log_odds": float(lo), "p": float(p)})
    df = pd.DataFrame(rows)
    df["q"] = false_discovery_control(df["p"].to_numpy()) if len(df) else []
    return df.sort_values(["latent", "cell_type"]).reset_index(drop=True)


def top_pairs(stats: LatentStats, latent: int, n: int) -> np.ndarray:
    """Indices of the ``n`` pairs with the largest activation of ``latent`` (> 0), best first."""
    v = np.where(stats.present, stats.pair_max[:, latent], 0)
    order = np.argsort(-v, kind="stable")[:n]
    return order[v[order] > 0]


def best_per_latent(enr: pd.DataFrame) -> pd.DataFrame:
    """Per latent, the cell type with the highest log odds and its statistics."""
    idx = enr.groupby("latent")["log_odds"].idxmax()
    best = enr.loc[idx, ["latent", "cell_type", "log_odds", "p", "q"]]
    return best.rename(columns={"cell_type": "top_cell_type"}).set_index("latent")


def select_latents(best: pd.DataFrame, frequency: np.ndarray, n: int) -> list[int]:
    """The ``n`` latents to analyse in depth: most significant enrichment (q, then log odds) first,
    among latents that fire at all."""
    df = best.copy()
    df["alive"] = frequency[df.index.to_numpy()] > 0
    df = df[df["alive"]].sort_values(["q", "log_odds"], ascending=[True, False])
    return [int(i) for i in df.index[:n]]


# -- planted truth -----------------------------------------------------------------------------
def planted_overlap(truth: dict, regions: pd.DataFrame, pair_windows: np.ndarray, pair_bp: np.ndarray,
                    input_len: int, jitter: int, stride: int, motifs: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    """Per motif: (fraction of windows containing a planted instance, fraction of top positions
    within ``SITE_TOL`` bp of one).

    ``pair_windows`` are dataset rows, ``pair_bp`` the top position in bp from the window's input
    start (0-based); genomic input start = region ``start + jitter``.
    """
    inst = pd.DataFrame(truth["instances"])
    if inst.empty or not len(pair_windows):
        return {}
    if motifs is not None:
        inst = inst[inst["motif"].isin(list(motifs))]
    out = {}
    chroms = regions["chrom"].to_numpy()[pair_windows]
    starts = regions["start"].to_numpy()[pair_windows].astype(np.int64) + jitter
    bp = starts + pair_bp
    for motif, grp in inst.groupby("motif"):
        win_hit = np.zeros(len(pair_windows), bool)
        site_hit = np.zeros(len(pair_windows), bool)
        for chrom in np.unique(chroms):
            sel = np.where(chroms == chrom)[0]
            g = grp[grp["chrom"] == chrom]
            if g.empty:
                continue
            s, e = g["start"].to_numpy()[None], g["end"].to_numpy()[None]
            ws, we = starts[sel][:, None], starts[sel][:, None] + input_len
            win_hit[sel] = ((s < we) & (e > ws)).any(1)
            ps, pe = bp[sel][:, None] - SITE_TOL, bp[sel][:, None] + stride + SITE_TOL
            site_hit[sel] = ((s < pe) & (e > ps)).any(1)
        out[motif] = (float(win_hit.mean()), float(site_hit.mean()))
    return out


# -- attributions of a latent ------------------------------------------------------------------
def latent_function(model, sae: SparseAutoencoder, layer: str, latent: int, pos: torch.Tensor,
                    mean: np.ndarray, scale: float, model_type: str):
    """``f(seq, [reads, cell]) -> (N,)``: the latent's activation (ReLU of its pre-activation) at
    token ``pos[i]`` of example ``i``. For the encoder ``cell`` is a float one-hot ``(N, C)``."""
    mu = torch.as_tensor(mean, dtype=torch.float32)
    w = sae.W_enc[:, latent]
    b = sae.b_enc[latent]

    def f(seq, reads=None, cell=None):
        emb = model.embed(seq, layer, reads=reads, cell=cell) if model_type == "encoder" else model.embed(seq, layer)
        # integrated_gradients stacks path points as rows (point, example): repeat the positions
        p = pos.to(emb.device).repeat(emb.shape[0] // len(pos))
        h = emb[torch.arange(emb.shape[0]), :, p]             # (rows, D)
        x = (h.float() - mu) / scale
        return torch.relu((x - sae.b_dec) @ w + b)

    return f


def latent_attributions(model, sae: SparseAutoencoder, layer: str, latent: int, X: torch.Tensor,
                        pos: torch.Tensor, mean: np.ndarray, scale: float, model_type: str,
                        reads: torch.Tensor | None = None, cells: torch.Tensor | None = None,
                        n_cells: int = 1, steps: int = 16, seed: int = 0, chunk: int = 16,
                        shuffles: int = 4) -> dict[str, np.ndarray]:
    """Integrated-gradient attributions of a latent's activation at ``pos`` (see module docstring),
    averaged over ``shuffles`` dinucleotide-shuffled sequence baselines per window
    (:func:`~seq2reads.interpret.attributions.shuffled_ig`).

    Returns ``attr`` (N, 4, L) hypothetical sequence contributions, ``delta`` (N,) completeness
    error, and for the encoder ``reads_attr`` (N, 2, L) and ``cell_attr`` (N, C).
    """
    from seq2reads.interpret.attributions import shuffled_ig, shuffled_references

    out: dict[str, list] = {"attr": [], "delta": [], "reads_attr": [], "cell_attr": []}
    for s in range(0, len(X), chunk):
        Xc = X[s:s + chunk].float()
        refs = shuffled_references(Xc, shuffles, seed + s)
        # shuffled_ig's rows are (window, baseline) pairs: each window's position repeated
        f = latent_function(model, sae, layer, latent, pos[s:s + chunk].repeat_interleave(shuffles), mean, scale,
                            model_type)
        if model_type == "encoder":
            Rc = reads[s:s + chunk].float()
            C1 = torch.nn.functional.one_hot(cells[s:s + chunk].long(), n_cells).float()
            hyp, other, delta = shuffled_ig(f, Xc, refs, steps, [Rc, C1],
                                            [torch.zeros_like(Rc), torch.full_like(C1, 1.0 / n_cells)])
            out["reads_attr"].append(other[0][0].detach().numpy())
            out["cell_attr"].append(other[0][1].detach().numpy())
        else:
            hyp, other, delta = shuffled_ig(f, Xc, refs, steps)
        out["attr"].append(hyp[0].detach().numpy())
        out["delta"].append(delta[:, 0].numpy())
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items() if v}


def latent_motifs(ohe: np.ndarray, attr: np.ndarray, db, max_seqlets: int = 2000) -> tuple[int, dict | None]:
    """TF-MoDISco on a latent's (cropped) top windows and TOMTOM of each pattern vs JASPAR.

    Returns ``(number of patterns, best match {"id", "name", "q"} over all patterns or None)``.
    """
    import warnings

    from seq2reads.interpret.motifs import match_motifs, run_modisco, trim_bounds

    n = len(ohe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pos, neg = run_modisco(ohe, attr, max_seqlets, min_metacluster_size=max(5, n // 5),
                                   final_min_cluster_size=max(3, n // 10), n_leiden_runs=4,
                                   sliding_window_size=15, flank_size=5)
        except (ValueError, IndexError, RuntimeError):  # too few seqlets for a pattern
            return 0, None
    pats = pos + neg
    if not pats:
        return 0, None
    ppms = []
    for p in pats:
        a, b = trim_bounds(p.contrib_scores)
        ppm = np.asarray(p.sequence[a:b], dtype=np.float64).T
        ppms.append(ppm / np.maximum(ppm.sum(axis=0, keepdims=True), 1e-12))
    matches = match_motifs(ppms, db, n=1)
    best = min((m[0] for m in matches if m), key=lambda m: m["q"], default=None)
    return len(pats), best


def plot_heatmap(enr: pd.DataFrame, best: pd.DataFrame, labels: dict[int, str], path, max_rows: int = 40) -> None:
    """Latent x cell-type heatmap of log odds (the ``max_rows`` most significant latents)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mat = enr.pivot(index="latent", columns="cell_type", values="log_odds")
    cells = list(dict.fromkeys(enr["cell_type"]))
    mat = mat[cells]
    order = best.sort_values(["q", "log_odds"], ascending=[True, False]).index[:max_rows]
    mat = mat.loc[order]
    vmax = float(np.nanmax(np.abs(mat.to_numpy()))) if mat.size else 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cells), 1.2 + 0.22 * len(mat)))
    im = ax.imshow(mat.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(cells)), cells, rotation=45, ha="right")
    ax.set_yticks(range(len(mat)), [f"{i} {labels.get(int(i), '')}".strip() for i in mat.index], fontsize=7)
    ax.set_xlabel("cell type")
    ax.set_ylabel("SAE latent (JASPAR match; ~ = planted motif at top positions)")
    ax.set_title("latent enrichment (log odds)")
    fig.colorbar(im, ax=ax, shrink=0.6, label="log odds")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
