"""``seq2reads sae RUN``: activation store -> SAE training -> feature analysis, into ``RUN/sae/``.

Outputs (each written atomically):

- ``activations/``: the activation store (:mod:`seq2reads.sae.activations`); reused by a rerun when
  it was made by the same model, layer and window selection;
- ``sae.safetensors`` + ``sae.json``: the SAE (hyper-parameters, layer, normalisation, model hash);
- ``metrics.json``: ``fvu``, ``mean_l0``, ``dead_fraction``, ``delta_loss`` (+ relative),
  ``vectors_per_s`` and the settings;
- ``features.tsv``: one row per latent (:data:`seq2reads.sae.features.FEATURE_COLUMNS`), most
  significant enrichment first; ``enrichment.tsv``: every latent x cell-type 2x2 table with log
  odds, p and q; ``top_windows.tsv``: top (window, cell type, position) of each analysed latent;
- ``heatmap.png``: latent x cell-type log odds;
- ``attributions/latent{i}.npz``: ``ohe``, ``attr`` (hypothetical), ``delta``, ``index``, ``cell``,
  ``pos`` (+ ``reads_attr``, ``cell_attr`` for the encoder) of each analysed latent's top windows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from seq2reads.atomic import atomic_path, write_text_atomic
from seq2reads.errors import UserError


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _count_means(ds) -> np.ndarray:
    stats = ds.attrs.get("count_stats") or {}
    return np.array([float(stats.get(c, {}).get("mean", 1.0)) or 1.0 for c in ds.samples])


def build_store(cfg, model, ds, layer: str, mhash: str, path: Path, progress: bool = True):
    """Embed ``cfg.sae.n_windows`` windows (all cell types) into a new activation store at ``path``."""
    from seq2reads.data.loader import iter_batches
    from seq2reads.sae.activations import StoreWriter, iter_embeddings, open_store, select_windows

    rows, heldout = select_windows(ds.regions, cfg.sae.n_windows, cfg.sae.seed)
    n_cells = len(ds.samples)
    per_cell = cfg.model.type == "encoder"
    # windows per forward pass: the encoder runs each window once per cell type
    bs = max(1, min(64, 256 // (n_cells if per_cell else 1)))
    batches = iter_batches(ds, rows, batch_size=bs)
    emb_iter = iter_embeddings(model, batches, layer, cfg.model.type, n_cells, cell_means=_count_means(ds),
                               output_len=ds.output_len)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), desc=f"activations ({layer})", disable=not progress, leave=False)
    with atomic_path(path) as tmp:
        writer = None
        for emb, win, cell in emb_iter:
            if writer is None:
                writer = StoreWriter(tmp, emb.shape[1], {
                    "model_hash": mhash, "layer": layer, "model_type": cfg.model.type,
                    "cell_types": list(ds.samples), "per_cell": per_cell, "n_windows_requested": cfg.sae.n_windows,
                    "seed": cfg.sae.seed, "input_len": ds.input_len})
            writer.add(emb, win, cell)
            bar.update(len(np.unique(win)))
        bar.close()
        if writer is None:
            raise UserError("no windows to embed: the dataset is empty; rerun `seq2reads prepare`.")
        length = writer.length
        stride = int(getattr(cfg.model, "patch", 1))  # encoder tokens cover `patch` bp; CNN: 1 bp
        writer.close(rows, heldout, {"stride": stride, "offset": (ds.input_len - length * stride) // 2})
    return open_store(path, mhash, layer)


def _reusable(path: Path, mhash: str, layer: str, cfg) -> bool:
    from seq2reads.sae.activations import open_store

    if not path.exists():
        return False
    try:
        a = open_store(path).attrs
    except UserError:
        return False
    return (a.get("model_hash") == mhash and a.get("layer") == layer
            and a.get("n_windows_requested") == cfg.sae.n_windows and a.get("seed") == cfg.sae.seed)


def sae_run(cfg, progress: bool = True) -> Path:
    """Activation store -> train -> features; returns ``RUN/sae``.

    Raises
    ------
    UserError
        No trained model, an unknown ``sae.layer`` (valid ones listed), or ``sae.store`` made by
        another model or layer.
    """
    from seq2reads.data.loader import iter_batches
    from seq2reads.data.store import open_dataset
    from seq2reads.models.io import load_model
    from seq2reads.sae.activations import model_hash, open_store, resolve_layer
    from seq2reads.sae.model import save_sae
    from seq2reads.sae.train import evaluate_sae, model_loss_delta, sae_replacement, train_sae

    run = Path(cfg.run_dir)
    out = run / "sae"
    scfg = cfg.sae
    mhash = model_hash(run)
    model = load_model(run, "cpu").eval()
    ds = open_dataset(run / "dataset")
    layer = resolve_layer(model, scfg.layer, cfg.model.type)
    torch.manual_seed(scfg.seed)

    # 1. activations
    t0 = time.perf_counter()
    if scfg.store:
        store = open_store(scfg.store, mhash, layer)
    elif _reusable(out / "activations", mhash, layer, cfg):
        store = open_store(out / "activations", mhash, layer)
    else:
        store = build_store(cfg, model, ds, layer, mhash, out / "activations", progress)
    t_store = time.perf_counter() - t0
    if store.d < 1 or store.n_vectors < scfg.k:
        raise UserError(f"the activation store holds only {store.n_vectors} vectors; raise sae.n_windows.")

    # 2. training + evaluation
    res = train_sae(store, scfg.latents, scfg.k, kind=scfg.kind, l1=scfg.l1, epochs=scfg.epochs,
                    batch_size=scfg.batch_size, lr=scfg.lr, seed=scfg.seed, progress=progress)
    sae = res.sae
    ev = evaluate_sae(sae, store, progress=progress)
    val_rows = store.heldout_windows[:64]
    fn = sae_replacement(sae, store.mean, store.scale)
    cw = getattr(cfg.model, "count_weight", None)
    if cw is None:
        from seq2reads.models.losses import count_weight_from_data

        cw = count_weight_from_data(ds.attrs["count_stats"], len(ds.samples))
    delta = model_loss_delta(model, cfg.model.type, layer, fn, iter_batches(ds, val_rows, batch_size=16),
                             store.d, ds.output_len, count_weight=cw,
                             read_loss=getattr(cfg.model, "read_loss", "rms"))
    save_sae(sae, out, {"layer": layer, "model_hash": mhash, "model_type": cfg.model.type,
                        "mean": store.mean.tolist(), "scale": store.scale, "store": str(store.path)})

    # 3. features
    feats = analyse_features(cfg, model, sae, store, ds, layer, out, progress)

    metrics = {
        "fvu": ev["fvu"], "fvu_train": ev["fvu_train"], "mean_l0": ev["mean_l0"], "dead_fraction": ev["dead_fraction"],
        "delta_loss": delta["delta_loss"], "delta_loss_rel": delta["delta_loss_rel"], "loss": delta["loss"],
        "loss_sae": delta["loss_sae"], "delta_loss_windows": delta["n_windows"],
        "vectors_per_s": res.vectors_per_s, "train_seconds": res.seconds, "store_seconds": t_store,
        "n_vectors": store.n_vectors, "n_heldout_vectors": ev["n_heldout"], "d": store.d, "layer": layer,
        "kind": scfg.kind, "latents": scfg.latents, "k": scfg.k, "epochs": scfg.epochs,
        "n_enriched": feats["n_enriched"], "model_hash": mhash,
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    return out


def analyse_features(cfg, model, sae, store, ds, layer: str, out: Path, progress: bool = True) -> dict:
    """Thresholds, enrichment, top windows, attributions + motifs of the selected latents, planted
    truth; writes ``features.tsv``, ``enrichment.tsv``, ``top_windows.tsv``, ``heatmap.png`` and
    ``attributions/``."""
    import pandas as pd

    from seq2reads.data.loader import iter_batches
    from seq2reads.sae.features import (FEATURE_COLUMNS, best_per_latent, enrichment, latent_stats,
                                        planted_overlap, plot_heatmap, select_latents, top_pairs)

    scfg = cfg.sae
    cells = list(ds.samples)
    C = len(cells)
    a = store.attrs
    stride, offset = int(a.get("stride", 1)), int(a.get("offset", 0))
    stats = latent_stats(sae, store, C, progress=progress)
    active = stats.active()
    windows = store.windows
    pair_cell = np.tile(np.arange(C), len(windows))
    pair_window = np.repeat(windows, C)
    enr = enrichment(active, pair_cell, stats.present, cells)
    best = best_per_latent(enr)
    selected = select_latents(best, stats.frequency, scfg.max_features)

    truth = None
    if cfg.truth and Path(cfg.truth).exists():
        from seq2reads.data.simulate import load_truth

        truth = load_truth(cfg.truth)
    regions = ds.regions

    rows, top_rows = [], []
    labels: dict[int, str] = {}
    db = None
    if selected and scfg.motifs:
        from seq2reads.interpret.jaspar import load_jaspar

        db = load_jaspar(cfg.interpret.motif_db)
    with atomic_path(out / "attributions") as attr_dir:
        attr_dir.mkdir(parents=True)
        for lat in range(sae.n_latents):
            tp = top_pairs(stats, lat, scfg.top_windows)
            wins, cl = pair_window[tp], pair_cell[tp]
            pos = stats.pair_pos[tp, lat].astype(np.int64)
            bp = offset + pos * stride
            row = {"latent": lat, "frequency": stats.frequency[lat], "active_pairs": float(active[stats.present, lat].mean()),
                   "threshold": stats.threshold[lat], "top_cell_type": best.loc[lat, "top_cell_type"],
                   "log_odds": best.loc[lat, "log_odds"], "p": best.loc[lat, "p"], "q": best.loc[lat, "q"],
                   "best_match_id": "", "best_match_name": "", "match_q": np.nan, "n_patterns": 0,
                   "planted_motif": "", "planted_window_frac": np.nan, "planted_site_frac": np.nan,
                   "attr_seq": np.nan, "attr_reads": np.nan, "attr_cell": np.nan}
            if truth is not None and len(tp):
                ov = planted_overlap(truth, regions, wins, bp, ds.input_len, ds.jitter, stride)
                if ov:
                    m = max(ov, key=lambda k: (ov[k][1], ov[k][0]))
                    row.update(planted_motif=m, planted_window_frac=ov[m][0], planted_site_frac=ov[m][1])
                    row["planted"] = ov
            if lat in selected and len(tp):
                row.update(_analyse_latent(cfg, model, sae, store, ds, layer, lat, wins, cl, pos, bp, db,
                                           attr_dir, iter_batches))
                labels[lat] = row["best_match_name"] or (f"~{row['planted_motif']}" if row["planted_motif"] else "")
                for r, (w, c, p_, b_) in enumerate(zip(wins, cl, pos, bp)):
                    top_rows.append({"latent": lat, "rank": r, "window": int(w), "chrom": regions["chrom"].iloc[w],
                                     "start": int(regions["start"].iloc[w]) + ds.jitter + int(b_),
                                     "cell_type": cells[c], "position": int(p_),
                                     "activation": float(stats.pair_max[tp[r], lat])})
            rows.append(row)
    feats = pd.DataFrame(rows)
    planted = feats.pop("planted") if "planted" in feats else None
    feats = feats[FEATURE_COLUMNS].sort_values(["q", "log_odds"], ascending=[True, False])
    with atomic_path(out / "features.tsv") as tmp:
        feats.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    with atomic_path(out / "enrichment.tsv") as tmp:
        enr.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    with atomic_path(out / "top_windows.tsv") as tmp:
        pd.DataFrame(top_rows, columns=["latent", "rank", "window", "chrom", "start", "cell_type", "position",
                                        "activation"]).to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    if planted is not None:
        full = {int(lat): ov for lat, ov in zip(range(len(rows)), [r.get("planted") for r in rows]) if ov}
        write_text_atomic(out / "planted.json", json.dumps(full, default=_json_default))
    with atomic_path(out / "heatmap.png") as tmp:
        plot_heatmap(enr, best, labels, tmp)
    enriched = (best["q"] < 0.01) & (best["log_odds"] >= 1)
    return {"n_enriched": int(enriched.sum()), "selected": selected}


def _analyse_latent(cfg, model, sae, store, ds, layer, lat, wins, cl, pos, bp, db, attr_dir, iter_batches) -> dict:
    """Attributions (sequence, reads, cell type) and motifs of one latent over its top windows."""
    from seq2reads.sae.features import MOTIF_FLANK, latent_attributions, latent_motifs

    order = np.argsort(wins, kind="stable")
    batch = next(iter_batches(ds, wins[order], batch_size=len(wins)))  # top_windows rows (bounded)
    inv = np.argsort(order)
    X = batch["seq"][inv]
    sig = batch["signal"][inv]
    cells_t = torch.as_tensor(cl, dtype=torch.long)
    reads = sig[torch.arange(len(cl)), cells_t] if cfg.model.type == "encoder" else None
    res = latent_attributions(model, sae, layer, lat, X, torch.as_tensor(pos), store.mean, store.scale,
                              cfg.model.type, reads=reads, cells=cells_t, n_cells=len(ds.samples),
                              steps=cfg.interpret.ig_steps, seed=cfg.sae.seed,
                              shuffles=cfg.interpret.ig_shuffles)
    ohe = X.numpy()
    np.savez_compressed(attr_dir / f"latent{lat}.npz", ohe=ohe, index=wins, cell=cl, pos=pos, **res)
    L = ohe.shape[-1]
    # crop +-MOTIF_FLANK bp around each window's top position (clipped to the window) for TF-MoDISco
    w = min(2 * MOTIF_FLANK, L)
    lo = np.clip(bp - w // 2, 0, L - w)
    take = lo[:, None] + np.arange(w)[None]
    ohe_c = np.take_along_axis(ohe, take[:, None, :].repeat(4, 1), axis=2)
    attr_c = np.take_along_axis(res["attr"], take[:, None, :].repeat(4, 1), axis=2)
    n_pat, best = latent_motifs(ohe_c, attr_c, db, cfg.interpret.max_seqlets) if cfg.sae.motifs else (0, None)
    seq_mass = float(np.abs(res["attr"] * ohe).sum(axis=(1, 2)).mean())
    out = {"n_patterns": n_pat, "attr_seq": seq_mass}
    if "reads_attr" in res:
        out["attr_reads"] = float(np.abs(res["reads_attr"]).sum(axis=(1, 2)).mean())
        out["attr_cell"] = float(np.abs(res["cell_attr"]).sum(axis=1).mean())
    if best:
        out.update(best_match_id=best["id"], best_match_name=best["name"], match_q=best["q"])
    return out
