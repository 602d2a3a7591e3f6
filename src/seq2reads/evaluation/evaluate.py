"""Test-set evaluation of a trained run: ``seq2reads evaluate RUN`` → ``RUN/metrics.json``.

The model (CNN, or the encoder in S2R mode: both map one-hot ``(N, 4, L_in)`` to
``(profile_logits (N, C, 2, L_out), log_counts (N, C))``) is run on the un-augmented test windows
(centre crop), averaged with its prediction for their reverse complements when
``predict.revcomp_average`` is on (the default; :mod:`seq2reads.models.revcomp`). Observed counts
are the stored signal's centre ``L_out`` positions; excluded positions (the store's mask) are
dropped from every metric.

``metrics.json`` layout (SPEC.md's keys first; every metric dict holds the seven SPEC metric names
plus ``n_regions``, ``n_zero_count``, ``n_undefined_profile_pearson``)::

    {"test": {"overall": {...}, "per_cell_type": {cell: {...}},      # peaks only (SPEC keys)
              "peaks": {"overall": {...}, "per_cell_type": {...}},    # same numbers, explicit
              "all":   {"overall": {...}, "per_cell_type": {...}}},   # peaks + background
     "baseline": {<metric>: value, ...,                               # = baseline peaks overall
                  "overall", "per_cell_type", "peaks", "all": as in "test", "note": "..."},
     "ceiling":  same layout as "baseline", or null (then "ceiling_note" says why),
     "masked":   {...}  (encoder runs only: masked-reconstruction metrics),
     "info":     {split, model_type, cell_types, n_windows, definitions}}

Definitions
-----------
- Profile metrics are computed per region and cell type over both strands' positions jointly,
  then summarised by the **median** over regions with reads (zero-count regions are excluded
  and counted in ``n_zero_count``). ``profile_jsd`` is the Jensen-Shannon **distance**, base 2.
  ``profile_mnll`` is the multinomial NLL in nats per region (see :mod:`.metrics`).
- Count metrics compare predicted ``log_counts`` with observed ``log(1 + total)`` across regions.
- ``overall`` = mean over cell types of the per-cell-type values.
- **Baseline** (average profile): per cell type, the mean normalised profile of the training peaks
  (un-augmented; mixed with 1e-6 of a uniform profile so no position has probability 0) and
  a constant count, the mean training-peak ``log(1 + total)``. Its count correlations are
  undefined (constant prediction) and reported as null.
- **Ceiling**: for simulated data (``cfg.truth`` → ``truth.json``) the true per-base rates,
  i.e. profile = rates normalised, count = ``log(1 + sum of rates)``; else, when the dataset
  holds a replicate signal, the replicate predicting the observed track (same 1e-6 uniform
  mixing); else null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from seq2reads.atomic import write_text_atomic
from seq2reads.errors import UserError
from seq2reads.evaluation import metrics as M
from seq2reads.evaluation.predict import inference_model, load_trained_model, predict_windows, progress_iter

UNIFORM_MIX = 1e-6  # weight of a uniform profile mixed into non-model profiles (finite MNLL)
MAX_BASELINE_WINDOWS = 5000  # training peaks averaged for the baseline (seeded subsample above)
HEADLINE = ("profile_pearson", "profile_jsd", "profile_mnll", "count_pearson", "count_spearman", "count_mse")


# -- accumulating per-region metrics -----------------------------------------------------------
class _Collector:
    """Per-region profile metrics and log counts of one predictor, per cell type, over batches."""

    def __init__(self, n_cells: int) -> None:
        self.n_cells = n_cells
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, probs: np.ndarray, pred_log_counts: np.ndarray, counts: np.ndarray, mask: np.ndarray) -> None:
        """probs, counts: (B, C, 2, L); pred_log_counts: (B, C); mask: (B, L)."""
        part: dict[str, list] = {k: [] for k in (*M.PROFILE_METRICS, "total", "pred_log", "obs_log")}
        for c in range(self.n_cells):
            per = M.per_region_profile_metrics(probs[:, c], counts[:, c], mask)
            for k in (*M.PROFILE_METRICS, "total"):
                part[k].append(per[k])
            part["pred_log"].append(np.asarray(pred_log_counts[:, c], dtype=np.float64))
            part["obs_log"].append(M.observed_log_counts(counts[:, c], mask))
        self.parts.append({k: np.stack(v, axis=1) for k, v in part.items()})  # each (B, C)

    def summary(self, select: np.ndarray, cells: list[str]) -> dict:
        """{"overall", "per_cell_type"} over the selected rows (bool over all added rows)."""
        allv = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        per_cell = {}
        for c, cell in enumerate(cells):
            per = {k: allv[k][select, c] for k in (*M.PROFILE_METRICS, "total")}
            per_cell[cell] = M.summarize(per, allv["pred_log"][select, c], allv["obs_log"][select, c])
        return {"overall": M.mean_over_cell_types(per_cell), "per_cell_type": per_cell}


def _flat(section: dict) -> dict:
    """SPEC shows baseline/ceiling as flat metric dicts: add the peaks-overall metrics as top-level keys."""
    return {**{k: section["overall"][k] for k in M.METRICS}, **section}


def evaluate_predictors(store, indices: np.ndarray, predictors: dict, batch_size: int = 64,
                        progress: bool = True) -> dict[str, dict]:
    """Score several predictors on the same un-augmented windows with the SPEC metrics.

    Parameters
    ----------
    store : DatasetStore
    indices : int array
        Store rows to evaluate (e.g. ``store.indices("test")``).
    predictors : dict name -> fn(batch) -> (probs (B, C, 2, L_out), log_counts (B, C))
        ``batch`` is a loader batch (``seq``, ``signal``, ``mask``, ``index``); ``probs`` are profile
        probabilities (both strands of a cell type jointly), ``log_counts`` predicted log(1 + total).

    Returns
    -------
    dict name -> {"overall", "per_cell_type", "peaks": {...}, "all": {...}}; "overall" and
    "per_cell_type" are the peaks-only values.
    """
    from seq2reads.data.loader import center_crop, iter_batches

    cells = list(store.samples)
    L = store.output_len
    indices = np.asarray(indices, dtype=np.int64)
    is_peak = store.regions["kind"].to_numpy()[indices] == "peak"
    cols = {name: _Collector(len(cells)) for name in predictors}
    batches = iter_batches(store, indices, batch_size)
    for batch in progress_iter(batches, math.ceil(len(indices) / batch_size), "evaluating", progress):
        counts = center_crop(batch["signal"], L).numpy()
        mask = center_crop(batch["mask"], L).numpy()
        for name, fn in predictors.items():
            probs, logc = fn(batch)
            cols[name].add(np.asarray(probs), np.asarray(logc), counts, mask)
    out = {}
    for name, col in cols.items():
        peaks = col.summary(is_peak, cells)
        everything = col.summary(np.ones_like(is_peak), cells)
        out[name] = {"overall": peaks["overall"], "per_cell_type": peaks["per_cell_type"], "peaks": peaks,
                     "all": everything}
    return out


# -- references --------------------------------------------------------------------------------
def average_profile_baseline(store, batch_size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The average-profile baseline from training peaks.

    Returns
    -------
    probs : float64 (C, 2, L_out)
        Mean normalised profile per cell type (mixed with ``UNIFORM_MIX`` of a uniform profile).
    log_count : float64 (C,)
        Mean ``log(1 + total)`` of the training peaks' output windows, per cell type.
    """
    from seq2reads.data.loader import center_crop, iter_batches

    idx = store.indices("train", kinds=("peak",))
    if len(idx) == 0:
        idx = store.indices("train")
    if len(idx) == 0:
        raise UserError("the dataset has no training windows, so there is no baseline: check splits in the config.")
    if len(idx) > MAX_BASELINE_WINDOWS:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_BASELINE_WINDOWS, replace=False))
    C, L = len(store.samples), store.output_len
    prof_sum = np.zeros((C, 2, L))
    n_prof = np.zeros(C)
    logc_sum = np.zeros(C)
    for batch in iter_batches(store, idx, batch_size):
        counts = center_crop(batch["signal"], L).numpy().astype(np.float64)
        mask = center_crop(batch["mask"], L).numpy()
        counts = counts * mask[:, None, None, :]
        total = counts.sum(axis=(2, 3))  # (B, C)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.where(total[..., None, None] > 0, counts / total[..., None, None], 0.0)
        prof_sum += norm.sum(axis=0)
        n_prof += (total > 0).sum(axis=0)
        logc_sum += np.log1p(total).sum(axis=0)
    probs = prof_sum / np.maximum(n_prof, 1)[:, None, None]
    probs = _mix_uniform(np.where(n_prof[:, None, None] > 0, probs, 1.0 / (2 * L)))
    return probs, logc_sum / len(idx)


def _mix_uniform(p: np.ndarray) -> np.ndarray:
    """Normalise over the last two axes and mix in ``UNIFORM_MIX`` of a uniform profile."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(axis=(-2, -1), keepdims=True)
    n = p.shape[-1] * p.shape[-2]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(s > 0, p / s, 1.0 / n)
    return (1 - UNIFORM_MIX) * p + UNIFORM_MIX / n


class TruthRates:
    """True per-base rates of simulated data, read from the bigWigs listed in ``truth.json``.

    ``truth.json`` holds ``"rates": {cell: {"plus": path, "minus": path}}`` with paths relative
    to its own folder (absolute paths are used as they are).
    """

    def __init__(self, truth_path: str | Path, cells: list[str]) -> None:
        import pyBigWig

        truth_path = Path(truth_path)
        if not truth_path.exists():
            raise UserError(f"truth file {truth_path} (config key 'truth') not found: fix the path or remove the key.")
        try:
            truth = json.loads(truth_path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"truth file {truth_path} is not valid JSON: re-create it with `seq2reads simulate`.") from None
        rates = truth.get("rates") if isinstance(truth, dict) else None
        if not isinstance(rates, dict):
            raise UserError(f"truth file {truth_path} has no 'rates' entry: re-create it with `seq2reads simulate`.")
        missing = [c for c in cells if c not in rates]
        if missing:
            raise UserError(
                f"truth file {truth_path} has no true rates for cell type(s) {missing} (it has {sorted(rates)}): "
                "use the truth.json written with this data set."
            )
        self.files = []
        for c in cells:
            pair = []
            for strand in ("plus", "minus"):
                p = Path(rates[c][strand])
                p = p if p.is_absolute() else truth_path.parent / p
                if not p.exists():
                    raise UserError(f"true-rate bigWig {p} listed in {truth_path} not found: re-run `seq2reads simulate`.")
                pair.append(pyBigWig.open(str(p)))
            self.files.append(pair)

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Rates ``float64 (C, 2, end - start)``; zero outside the chromosome or without data."""
        out = np.zeros((len(self.files), 2, end - start))
        for c, pair in enumerate(self.files):
            for s, bw in enumerate(pair):
                length = bw.chroms(chrom)
                if not length:
                    continue
                lo, hi = max(start, 0), min(end, length)
                if hi > lo:
                    v = np.abs(np.nan_to_num(np.asarray(bw.values(chrom, lo, hi, numpy=True), dtype=np.float64)))
                    out[c, s, lo - start : hi - start] = v
        return out

    def close(self) -> None:
        for pair in self.files:
            for bw in pair:
                bw.close()


def _ceiling_source(cfg, store):
    """``(fn(batch) -> (probs (B, C, 2, L), log_counts (B, C)), kind, closer)`` or ``(None, note, None)``."""
    from seq2reads.data.loader import center_crop

    L, span = store.output_len, store.span
    if cfg.truth:
        rates = TruthRates(cfg.truth, list(store.samples))
        regions = store.regions

        def from_truth(batch):
            rows = batch["index"].numpy()
            off = (span - L) // 2
            vals = np.stack([rates.values(str(regions["chrom"].iat[r]), int(regions["start"].iat[r]) + off,
                                          int(regions["start"].iat[r]) + off + L) for r in rows])
            return vals / np.maximum(vals.sum(axis=(2, 3), keepdims=True), 1e-300), np.log1p(vals.sum(axis=(2, 3)))

        return from_truth, "true rates from " + str(cfg.truth), rates.close
    rep = getattr(store, "replicate_signal", None)
    has = np.asarray(getattr(store, "has_replicate", None) or [False] * len(store.samples), dtype=bool)
    if rep is not None and has.any():

        def from_replicate(batch):
            rows = batch["index"].numpy()
            order = np.argsort(rows, kind="stable")
            r = np.empty((len(rows), *rep.shape[1:]), dtype=np.float64)
            sel = rows[order]
            got = rep.oindex[sel] if hasattr(rep, "oindex") else rep[sel]  # Zarr: orthogonal row selection
            r[order] = np.asarray(got, dtype=np.float64)
            r = np.asarray(center_crop(r, L))
            mask = center_crop(batch["mask"], L).numpy()
            r = r * mask[:, None, None, :]
            probs, logc = _mix_uniform(r), np.log1p(r.sum(axis=(2, 3)))
            probs[:, ~has], logc[:, ~has] = np.nan, np.nan  # no replicate: no ceiling for that cell type
            return probs, logc

        missing = [s for s, h in zip(store.samples, has) if not h]
        note = "replicate predicting the observed track" + (f" (none for {missing}: null there)" if missing else "")
        return from_replicate, note, None
    return None, ("no noise ceiling: the config gives no 'truth' (simulated data) and the samples have no "
                  "replicates; add replicates to the samples to get one"), None


# -- main entry ------------------------------------------------------------------------------
def open_run_dataset(run: Path):
    """The run's prepared dataset; :class:`UserError` when ``prepare`` has not run."""
    path = run / "dataset"
    if not path.exists():
        raise UserError(f"no dataset in {path}: run `seq2reads prepare CONFIG` (with run_dir: {run}) first.")
    from seq2reads.data.store import open_dataset

    return open_dataset(path)


def evaluate_run(cfg, batch_size: int | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Evaluate a trained run on its test split and write ``RUN/metrics.json`` atomically.

    Parameters
    ----------
    cfg : seq2reads.config.Config
        The run's config.
    batch_size : int, optional
        Windows per forward pass (default ``train.batch_size``).

    Returns
    -------
    dict, the content of ``metrics.json`` (layout in the module docstring).

    Raises
    ------
    UserError
        No trained model or dataset, a model file from another version, no test windows.
    """
    run = Path(cfg.run_dir)
    model = load_trained_model(run, device)
    store = open_run_dataset(run)
    cells = list(store.samples)
    idx = store.indices("test")
    if len(idx) == 0:
        raise UserError(
            f"the dataset has no test windows (splits.test = {list(cfg.splits.test)}): "
            "name test chromosomes that hold regions in splits.test and re-run prepare."
        )
    is_peak = store.regions["kind"].to_numpy()[idx] == "peak"
    bs = batch_size or cfg.train.batch_size
    L = store.output_len

    base_probs, base_logc = average_profile_baseline(store, max(bs, 256))

    net = inference_model(cfg, model)

    def from_model(batch):
        logits, logc = predict_windows(net, batch["seq"], bs)
        if logits.shape[1:] != (len(cells), 2, L):
            raise UserError(
                f"the model predicts {tuple(logits.shape[1:])} (cell types, strands, positions) per window but the "
                f"dataset holds {(len(cells), 2, L)}: evaluate with the dataset the model was trained on."
            )
        return M.softmax_profile(logits, axis_start=2), logc

    def from_baseline(batch):
        n = len(batch["index"])
        return np.broadcast_to(base_probs, (n, *base_probs.shape)), np.broadcast_to(base_logc, (n, len(cells)))

    ceiling_fn, ceiling_note, ceiling_close = _ceiling_source(cfg, store)
    predictors = {"test": from_model, "baseline": from_baseline}
    if ceiling_fn is not None:
        predictors["ceiling"] = ceiling_fn
    try:
        sections = evaluate_predictors(store, idx, predictors, bs, progress)
    finally:
        if ceiling_close is not None:
            ceiling_close()

    result: dict = {
        "test": sections["test"],
        "baseline": {**_flat(sections["baseline"]),
                     "note": "average training-peak profile per cell type with a constant count (mean training "
                             "log(1+total)); count correlations are undefined for a constant and reported as null"},
        "ceiling": None,
    }
    if ceiling_fn is not None:
        result["ceiling"] = {**_flat(sections["ceiling"]), "note": ceiling_note}
    else:
        result["ceiling_note"] = ceiling_note
    if getattr(cfg.model, "type", "bpnet") == "encoder":
        result["masked"] = _masked_metrics(cfg, model, store)
    result["info"] = {
        "split": "test",
        "model_type": getattr(cfg.model, "type", "bpnet"),
        "revcomp_average": bool(cfg.predict.revcomp_average),
        "cell_types": cells,
        "n_windows": {"peaks": int(is_peak.sum()), "all": int(len(idx))},
        "output_len": int(L),
        "definitions": {
            "profile": "per region and cell type over both strands jointly, median over regions with reads",
            "profile_jsd": "Jensen-Shannon distance (sqrt of divergence), base 2, in [0, 1]",
            "profile_mnll": "multinomial negative log-likelihood per region, nats",
            "count": "predicted log_counts vs observed log(1 + total) across regions",
            "overall": "mean over cell types",
            "test.overall": "peaks only; test.all = peaks + background",
        },
    }
    result = _json_clean(result)
    write_text_atomic(run / "metrics.json", json.dumps(result, indent=2, allow_nan=False))
    if progress:
        print_table(result)
    return result


def _masked_metrics(cfg, model, store):
    """Masked-reconstruction metrics of an encoder run (``seq2reads.evaluation.masked``)."""
    try:
        from seq2reads.evaluation.masked import masked_metrics
    except ImportError as e:  # the encoder layer is optional in a partial install; say so in the file
        return {"note": f"masked-reconstruction metrics unavailable: {e}"}
    return masked_metrics(cfg, model, store)


def _json_clean(x):
    """numpy scalars → Python, NaN/inf → None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def print_table(result: dict) -> None:
    """A small rich table: headline test metrics (peaks, overall) beside baseline and ceiling."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    t = Table(title="test metrics (peaks, mean over cell types)")
    for col in ("metric", "model", "baseline", "ceiling"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    ceiling = (result.get("ceiling") or {}).get("overall", {})
    for name in HEADLINE:
        t.add_row(name, fmt(result["test"]["overall"].get(name)), fmt(result["baseline"]["overall"].get(name)),
                  fmt(ceiling.get(name)))
    Console().print(t)
