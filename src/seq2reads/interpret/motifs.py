"""Motif discovery on attributions (TF-MoDISco, modisco-lite) annotated against JASPAR (TOMTOM).

``motifs_run(cfg)`` reads ``RUN/attributions/*.npz`` and writes ``RUN/motifs/`` (atomically):

- ``modisco.h5``: one group per ``{cell}.{target}`` holding modisco-lite's own layout
  (``pos_patterns/pattern_i``, ``neg_patterns/pattern_i``, written by ``modiscolite.io.save_pattern``).
- ``motifs.meme``: MEME-format PPMs of every pattern (trimmed), named ``{cell}.{target}.{pattern}``.
- ``logos/{cell}.{target}.{pattern}.png``: CWM logo (logomaker) titled with the best match.
- ``motifs.tsv``: one row per pattern (columns :data:`COLUMNS`).
- ``shared.tsv``: groups of patterns that are the same motif (same best JASPAR match with
  q < 0.05, or TOMTOM q < 0.05 between the patterns themselves), with the cell types each group
  is found in and whether it is ``shared`` (all cell types), ``specific`` (one) or ``partial``.

Details
-------
- TF-MoDISco runs on the central ``window.output`` bp of each explained window (where the
  predicted reads are), with ``max_seqlets_per_metacluster = interpret.max_seqlets``; the arrays
  are transposed to the ``(N, L, 4)`` layout of modisco-lite's Python API.
- Patterns are trimmed to the positions whose CWM mass is ≥ 30% of the pattern's maximum
  (modisco-lite's report rule), widened symmetrically to at least :data:`MIN_TRIM_WIDTH` bp
  within the pattern; the trimmed PPM is matched by memelite's TOMTOM against every matrix of the
  JASPAR release (both orientations). q-values: Benjamini-Hochberg over each pattern's p-values
  against all matrices.
- ``centre_offset_*``: seqlet centre minus the window centre, in bp (negative = upstream on the
  genome's + strand).
- ``strand_bias``: fraction of a pattern's seqlets whose orientation (the pattern as discovered)
  is on the strand of transcription. Each window's transcription direction is the strand with
  more observed reads over its output window in that cell type (a tie counts as +).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seq2reads.atomic import atomic_path
from seq2reads.errors import UserError

N_MATCHES = 3
COLUMNS = (["cell_type", "target", "pattern", "sign", "n_seqlets"]
           + [f"match{i}_{k}" for i in range(1, N_MATCHES + 1) for k in ("id", "name", "q")]
           + ["centre_offset_mean", "centre_offset_median", "strand_bias"])
SHARED_COLUMNS = ["group", "sign", "match_id", "match_name", "tf_family", "n_cell_types", "cell_types",
                  "category", "patterns"]
Q_MATCH = 0.05
#: Narrowest PPM sent to TOMTOM (bp). Why: attribution mass can sit on a motif's 4-bp core (an ETS
#: pattern of the motif benchmark trimmed to CCGG), too few columns for any match to reach
#: q < 0.05 against ~900 matrices (best ELK1-like match q 0.16); the same pattern's 10 bp around that
#: core (the aligned seqlets' flanks, TnCCGGAAG) matched the ETS family at q 0.005-0.011.
MIN_TRIM_WIDTH = 10
log = logging.getLogger(__name__)


# -- reusable pieces ----------------------------------------------------------------------------
def run_modisco(ohe: np.ndarray, attr: np.ndarray, max_seqlets: int = 2000, **kwargs):
    """TF-MoDISco (modisco-lite) on one-hot and hypothetical attributions.

    Parameters
    ----------
    ohe, attr : float32 (N, 4, L)
        One-hot sequences and hypothetical contributions (channels-first, as stored).

    Returns
    -------
    (pos_patterns, neg_patterns): lists of modisco-lite ``SeqletSet`` (possibly empty).
    """
    from modiscolite.tfmodisco import TFMoDISco

    o = np.ascontiguousarray(np.transpose(ohe, (0, 2, 1)), dtype=np.float32)
    a = np.ascontiguousarray(np.transpose(attr, (0, 2, 1)), dtype=np.float32)
    pos, neg = TFMoDISco(one_hot=o, hypothetical_contribs=a, max_seqlets_per_metacluster=max_seqlets,
                         verbose=False, **kwargs)
    return list(pos or []), list(neg or [])


def trim_bounds(cwm: np.ndarray, frac: float = 0.3, min_width: int = MIN_TRIM_WIDTH) -> tuple[int, int]:
    """``[start, end)`` of the positions of a CWM ``(w, 4)`` with ≥ ``frac`` of the max |mass|,
    widened about its centre to at least ``min_width`` positions (never past the CWM's ends)."""
    score = np.abs(cwm).sum(axis=1)
    keep = np.where(score >= frac * score.max())[0] if score.max() > 0 else np.arange(len(score))
    a, b = int(keep.min()), int(keep.max()) + 1
    w = min(max(min_width, b - a), len(score))
    a = min(max(a - (w - (b - a)) // 2, 0), len(score) - w)
    return a, a + w


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values along the last axis."""
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[-1]
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, -1) * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[..., ::-1], axis=-1)[..., ::-1]
    q = np.empty_like(ranked)
    np.put_along_axis(q, order, np.minimum(ranked, 1.0), -1)
    return q


def match_motifs(queries: Sequence[np.ndarray], db, n: int = N_MATCHES) -> list[list[dict]]:
    """TOMTOM (memelite) of query PPMs ``(4, w)`` against all matrices of a :class:`MotifDB`.

    Returns
    -------
    For each query, the ``n`` best matches ``{"id", "name", "family", "p", "q"}`` by p-value.
    """
    if not queries:
        return []
    from memelite import tomtom

    targets = [m.ppm for m in db.motifs]
    p = tomtom([np.asarray(q, dtype=np.float64) for q in queries], targets, n_jobs=1)[0]
    p = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=1.0)
    q = bh_qvalues(p)
    out = []
    for i in range(len(queries)):
        best = np.argsort(p[i], kind="stable")[:n]
        out.append([{"id": db.motifs[j].matrix_id, "name": db.motifs[j].name, "family": db.motifs[j].tf_family,
                     "p": float(p[i, j]), "q": float(q[i, j])} for j in best])
    return out


def meme_text(motifs: Sequence[tuple[str, np.ndarray]]) -> str:
    """MEME minimal-format text of named PPMs ``(4, w)``."""
    lines = ["MEME version 4", "", "ALPHABET= ACGT", "", "strands: + -", "",
             "Background letter frequencies", "A 0.25 C 0.25 G 0.25 T 0.25", ""]
    for name, ppm in motifs:
        lines += [f"MOTIF {name}", f"letter-probability matrix: alength= 4 w= {ppm.shape[1]} nsites= 20 E= 0"]
        lines += [" ".join(f"{v:.6f}" for v in col) for col in ppm.T]
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_logo(cwm: np.ndarray, title: str, path: Path) -> None:
    """CWM ``(w, 4)`` logo (logomaker) to a PNG."""
    import logomaker
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(cwm)), 2.0))  # wide enough for the title
    logomaker.Logo(pd.DataFrame(cwm, columns=list("ACGT")), ax=ax)
    ax.set_title(title, fontsize=8)
    ax.set_ylabel("contribution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------------
def motifs_run(cfg) -> Path:
    """TF-MoDISco per cell type and target, TOMTOM vs JASPAR, tables and logos in ``RUN/motifs/``."""
    import h5py
    import pandas as pd
    from modiscolite.io import save_pattern

    from seq2reads.data.store import open_dataset
    from seq2reads.interpret.attributions import attribution_files
    from seq2reads.interpret.jaspar import load_jaspar

    run = Path(cfg.run_dir)
    files = attribution_files(run)
    db = load_jaspar(cfg.interpret.motif_db)
    store = open_dataset(run / "dataset")
    out_len = store.output_len
    rows, memes, patterns_info, empty = [], [], [], []
    with atomic_path(run / "motifs") as tmp:
        (tmp / "logos").mkdir(parents=True)
        with h5py.File(tmp / "modisco.h5", "w") as h5:
            h5.attrs["format"] = "seq2reads-modisco (one modisco-lite group per cell.target)"
            for cell, target, npz in files:
                with np.load(npz) as z:
                    ohe, attr, index = z["ohe"], z["attr"], z["index"]
                L = ohe.shape[-1]
                lo = max((L - out_len) // 2, 0)
                W = min(out_len, L)
                try:
                    pos, neg = run_modisco(ohe[..., lo:lo + W], attr[..., lo:lo + W], cfg.interpret.max_seqlets)
                    why = ""
                except (ValueError, IndexError) as e:
                    # modisco-lite fails in some steps (e.g. clustering a handful of seqlets) instead of
                    # returning nothing; for the user that is the same outcome: no patterns.
                    pos, neg, why = [], [], f" ({type(e).__name__}: {e})"
                grp = h5.create_group(f"{cell}.{target}")
                grp.attrs["window_size"] = W
                if not pos and not neg:
                    empty.append(f"{cell}.{target}{why}")
                    continue
                direction = _transcription_direction(store, index, cell, out_len)
                for sign, pats in (("pos", pos), ("neg", neg)):
                    sub = grp.create_group(f"{sign}_patterns") if pats else None
                    for i, p in enumerate(pats):
                        save_pattern(p, sub.create_group(f"pattern_{i}"))
                        name = f"{cell}.{target}.{sign}_{i}"
                        a, b = trim_bounds(p.contrib_scores)
                        ppm = np.asarray(p.sequence[a:b], dtype=np.float64).T
                        ppm = ppm / np.maximum(ppm.sum(axis=0, keepdims=True), 1e-12)
                        memes.append((name, ppm))
                        patterns_info.append({"name": name, "cell": cell, "target": target, "sign": sign,
                                              "pattern": f"{sign}_{i}", "cwm": p.contrib_scores,
                                              "trim": (a, b), "ppm": ppm,
                                              **_seqlet_stats(p.seqlets, W, direction)})
        matches = match_motifs([m[1] for m in memes], db)
        for info, ms in zip(patterns_info, matches):
            row = {"cell_type": info["cell"], "target": info["target"], "pattern": info["pattern"],
                   "sign": info["sign"], "n_seqlets": info["n_seqlets"]}
            for i in range(N_MATCHES):
                m = ms[i] if i < len(ms) else {"id": "", "name": "", "q": np.nan}
                row.update({f"match{i + 1}_id": m["id"], f"match{i + 1}_name": m["name"], f"match{i + 1}_q": m["q"]})
            row.update({k: info[k] for k in ("centre_offset_mean", "centre_offset_median", "strand_bias")})
            rows.append(row)
            best = ms[0] if ms else None
            label = f"{best['name']} ({best['id']}, q={best['q']:.2g})" if best else "no match"
            a, b = info["trim"]
            plot_logo(info["cwm"][a:b], f"{info['name']} n={info['n_seqlets']}: {label}",
                      tmp / "logos" / f"{info['name']}.png")
        pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp / "motifs.tsv", sep="\t", index=False, float_format="%.4g")
        (tmp / "motifs.meme").write_text(meme_text(memes))
        shared = shared_table(patterns_info, matches, sorted({f[0] for f in files}))
        shared.to_csv(tmp / "shared.tsv", sep="\t", index=False)
        (tmp / "summary.json").write_text(json.dumps(
            {"motif_db": db.release, "n_patterns": len(rows), "no_patterns": empty,
             "window": out_len, "q_threshold": Q_MATCH}, indent=2))
    if empty:
        # logging, not warnings.warn: without a configured handler Python prints just the message line.
        log.warning(
            "seq2reads motifs: warning: TF-MoDISco found no patterns for %s: too few strong seqlets (fewer than "
            "100 per sign). Explain more regions (interpret.n_regions) or train the model longer; the tables "
            "have no rows for these.", ", ".join(empty))
    return run / "motifs"


def _transcription_direction(store, index: np.ndarray, cell: str, out_len: int) -> np.ndarray:
    """+1 / -1 per window: the strand with more observed reads over the output window."""
    c = list(store.samples).index(cell)
    lo = (store.span - out_len) // 2
    order = np.argsort(index)
    sig = np.asarray(store.signal[index[order]])[:, c, :, lo:lo + out_len].sum(axis=-1)  # (N, 2)
    d = np.where(sig[:, 0] >= sig[:, 1], 1, -1)
    out = np.empty_like(d)
    out[order] = d
    return out


def _seqlet_stats(seqlets, window: int, direction: np.ndarray) -> dict:
    centres = np.array([(s.start + s.end) / 2 - window / 2 for s in seqlets], dtype=float)
    fwd = np.array([1 if not s.is_revcomp else -1 for s in seqlets])
    dirs = direction[np.array([s.example_idx for s in seqlets], dtype=int)]
    return {"n_seqlets": len(seqlets),
            "centre_offset_mean": float(centres.mean()) if len(centres) else np.nan,
            "centre_offset_median": float(np.median(centres)) if len(centres) else np.nan,
            "strand_bias": float(np.mean(fwd == dirs)) if len(fwd) else np.nan}


def shared_table(patterns_info: list[dict], matches: list[list[dict]], cells: Sequence[str]):
    """Group patterns into motifs (same significant best JASPAR match, or TOMTOM-similar patterns)
    and say in which cell types each group is found."""
    import pandas as pd

    n = len(patterns_info)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        parent[find(i)] = find(j)

    best = [ms[0]["id"] if ms and ms[0]["q"] < Q_MATCH else None for ms in matches]
    by_id: dict[tuple[str, str], int] = {}
    for i, b in enumerate(best):
        if b is not None:
            key = (patterns_info[i]["sign"], b)
            if key in by_id:
                union(i, by_id[key])
            else:
                by_id[key] = i
    if n > 1:
        from memelite import tomtom

        ppms = [p["ppm"] for p in patterns_info]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # few targets: p-values only used to link near-identical patterns
            p = np.asarray(tomtom(ppms, ppms, n_jobs=1)[0], dtype=np.float64)
        q = bh_qvalues(np.nan_to_num(p, nan=1.0))
        for i in range(n):
            for j in range(i + 1, n):
                if patterns_info[i]["sign"] == patterns_info[j]["sign"] and max(q[i, j], q[j, i]) < Q_MATCH:
                    union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    rows = []
    for g, members in enumerate(sorted(groups.values(), key=lambda m: (-len(m), m[0]))):
        found = sorted({patterns_info[i]["cell"] for i in members}, key=list(cells).index)
        ids = [best[i] for i in members if best[i] is not None]
        mid = max(set(ids), key=ids.count) if ids else ""
        k = next((i for i in members if best[i] == mid), members[0])
        cat = "shared" if len(found) == len(cells) else ("specific" if len(found) == 1 else "partial")
        rows.append({"group": g, "sign": patterns_info[members[0]]["sign"], "match_id": mid,
                     "match_name": matches[k][0]["name"] if mid else "",
                     "tf_family": matches[k][0]["family"] if mid else "", "n_cell_types": len(found),
                     "cell_types": ",".join(found), "category": cat,
                     "patterns": ",".join(patterns_info[i]["name"] for i in members)})
    return pd.DataFrame(rows, columns=SHARED_COLUMNS)


def read_motifs(run_dir: str | Path):
    """``RUN/motifs/motifs.tsv`` as a DataFrame (for the report and the SAE step)."""
    import pandas as pd

    p = Path(run_dir) / "motifs" / "motifs.tsv"
    if not p.exists():
        raise UserError(f"no motifs in {p.parent}: run `seq2reads motifs {run_dir}` first.")
    return pd.read_csv(p, sep="\t")
