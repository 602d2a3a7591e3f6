"""Attributions of model predictions to the input: DeepLIFT/SHAP, integrated gradients and ISM.

``attribute_run(cfg)`` writes ``RUN/attributions/`` (the whole folder atomically):

- ``{cell}.{target}.npz`` for every cell type in ``interpret.cell_types`` (default: all) and target
  in ``interpret.targets`` (``count`` → ``count``; ``count_specific`` → ``count_specific``, the
  cell type's log count minus the mean of the others'; ``profile`` → ``profile_plus`` and
  ``profile_minus``; see :mod:`seq2reads.interpret.targets`), with

  ==============  =================  ==========================================================
  ``ohe``         float32 (N, 4, L)  one-hot input (A, C, G, T), L = ``window.input``
  ``attr``        float32 (N, 4, L)  *hypothetical* contributions (every base at every position)
  ``delta``       float32 (N,)       convergence delta per region (NaN for ISM, which has none)
  ``index``       int64 (N,)         rows of the windows in the dataset store
  ``start``       int64 (N,)         genome start of the model input (0-based)
  ``chrom``       str (N,)           chromosome
  ``reads_attr``  float32 (N, 2, L)  encoder + IG only (not count_specific, which is attributed
                                     through the sequence-only S2R pass): attribution to the
                                     reads input (+, −)
  ``cell_attr``   float32 (N, C)     encoder + IG only (not count_specific): attribution to the
                                     cell-type input
  ==============  =================  ==========================================================

  Actual contributions are ``attr * ohe``. The arrays use the channels-first layout of the model
  and of the ``modisco motifs`` command line; modisco-lite's Python API
  (``modiscolite.tfmodisco.TFMoDISco``) wants ``(N, L, 4)``, so ``motifs.py`` transposes.
- ``{cell}.{target}.bw``: per-base contribution ``sum_b attr * ohe`` at each window position;
  where windows overlap the values are averaged.
- ``summary.json``: method, regions, per-file delta statistics.

Regions: peak windows, held-out ones (``test`` + ``valid`` splits) first, each group ranked by the
observed total count over the output window (all cell types); the first ``interpret.n_regions``.
Using training peaks after the held-out ones keeps enough motif instances for TF-MoDISco.

Methods (``interpret.method``):

- ``deeplift`` (``auto`` for the CNN): DeepLIFT/DeepSHAP by tangermeme with
  ``interpret.shuffles`` dinucleotide-shuffled references per sequence. The references are drawn
  once per sequence and shared by all targets; deltas are ``mean_k [sum attr_k (x - r_k) -
  (f(x) - f(r_k))]``.
- ``ig`` (``auto`` for the encoder): integrated gradients, hand-written (captum is not a
  dependency, and attention/LayerNorm have no DeepLIFT rule). For the encoder the path runs from
  (shuffled or zero sequence, zero reads, uniform cell type) to (sequence, observed reads of the
  cell type, one-hot cell type) jointly, so the attributions to all three inputs sum to
  ``f(x) - f(baseline)`` up to the quadrature error (the stored delta). With shuffled sequence
  baselines (``interpret.ig_baseline: shuffle``) each sequence gets ``interpret.ig_shuffles`` of
  them and the attributions are averaged over the paths (:func:`shuffled_ig`); the delta is then
  against the mean baseline output.
- ``ism``: saturation mutagenesis by tangermeme (mean-centred over the four bases per position).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seq2reads.atomic import atomic_path
from seq2reads.errors import UserError
from seq2reads.interpret.targets import AllTargets, encoder_outputs, expand_targets, select_target
from seq2reads.models.attention import uses_attention

log = logging.getLogger(__name__)
FORMAT_NOTE = "ohe/attr are (N, 4, L) channels-first; attr is hypothetical; contributions = attr * ohe"


# -- helpers ------------------------------------------------------------------------------------
def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free module)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def resolve_cells(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Validate ``interpret.cell_types`` against the model's cell types (None → all).

    Raises
    ------
    UserError
        A requested cell type the model was not trained on (lists the valid ones).
    """
    if not requested:
        return list(available)
    bad = [c for c in requested if c not in available]
    if bad:
        raise UserError(
            f"cell type(s) {', '.join(bad)} not in this model; valid: {', '.join(available)} "
            "(set interpret.cell_types to some of these, or leave it empty for all)."
        )
    return list(requested)


def resolve_method(method: str, model: nn.Module) -> str:
    """``auto`` → ``ig`` for models that attend (the encoder, a CNN with ``model.attention_layers``:
    attention has no DeepLIFT rule), ``deeplift`` otherwise."""
    attends = uses_attention(model)
    if method == "auto":
        return "ig" if attends else "deeplift"
    if method == "deeplift" and attends:
        what = "the encoder" if hasattr(model, "encode") else "a CNN with model.attention_layers > 0"
        raise UserError(
            f"interpret.method=deeplift does not apply to {what} (attention and LayerNorm have no "
            "DeepLIFT rule): use interpret.method=ig or ism."
        )
    return method


def shuffled_references(X: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Dinucleotide-shuffled references ``(N, n, 4, L)`` (tangermeme; N columns allowed)."""
    from tangermeme.ersatz import dinucleotide_shuffle

    return dinucleotide_shuffle(X.cpu(), n=n, random_state=seed, allow_N=True).to(X.dtype)


# -- DeepLIFT / DeepSHAP ------------------------------------------------------------------------
def deeplift_shap(
    model: nn.Module,
    X: torch.Tensor,
    pairs: Sequence[tuple[int, str]],
    n_shuffles: int = 20,
    seed: int = 0,
    batch_size: int = 32,
    chunk: int = 32,
) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """DeepLIFT/SHAP hypothetical attributions for several ``(cell, target)`` pairs.

    tangermeme's DeepLIFT rules (its hooks on every non-linear module, the rescale rule) do the
    work; what differs from calling ``tangermeme.deep_lift_shap`` once per target is the driver:

    - the dinucleotide-shuffled references are drawn once per sequence and shared by all targets;
    - each batch of sequence-reference pairs goes forward **once** for all targets, followed by one
      backward pass per target over the same graph (tangermeme's hooks keep the forward cache for
      repeated backward passes, as its ``pisa`` does); the forward pass is about a third of the
      cost, so T targets cost ``F + T*B`` instead of ``T*(F + B)``;
    - the convergence deltas come from the same forward outputs.

    Values equal tangermeme's for the same references (checked in the tests and the benchmark).

    Parameters
    ----------
    model : nn.Module
        ``(N, 4, L) -> (profile_logits, log_counts)``; put in eval mode.
    X : Tensor float32 (N, 4, L)
        One-hot sequences.
    pairs : list of (cell index, target name)
    n_shuffles, seed : int
        References per sequence; those of the chunk starting at row ``s`` are drawn with seed
        ``seed + s``.
    batch_size : int
        Sequence-reference pairs per forward/backward pass.
    chunk : int
        Sequences handled at once (bounds the memory of the per-pair multipliers).

    Returns
    -------
    dict (cell, target) -> (attr float32 (N, 4, L) hypothetical, delta float32 (N,))
    """
    from tangermeme.deep_lift_shap import _attributing, _build_nonlinear_ops, _reset_caches

    device = model_device(model)
    allt = AllTargets(model, pairs).eval()
    T = len(pairs)
    out = {p: ([], []) for p in pairs}
    with _attributing(allt, device, _build_nonlinear_ops()):
        for s in range(0, len(X), chunk):
            Xc = X[s:s + chunk].float()
            refs = shuffled_references(Xc, n_shuffles, seed + s)  # (n, k, 4, L)
            n, k = refs.shape[:2]
            flat_x = Xc.repeat_interleave(k, dim=0)  # pair i = (sequence i // k, reference i % k)
            flat_r = refs.reshape(n * k, *refs.shape[2:])
            mult = torch.empty(T, n * k, *Xc.shape[1:])
            ydiff = torch.empty(n * k, T)
            for b in range(0, n * k, batch_size):
                xb = flat_x[b:b + batch_size].to(device).requires_grad_(True)
                rb = flat_r[b:b + batch_size].to(device)
                allt.apply(_reset_caches)
                with torch.enable_grad():
                    y = allt(torch.cat([xb, rb]))  # (2B, T)
                    for t in range(T):
                        g = torch.autograd.grad(y[:, t].sum(), xb, retain_graph=t < T - 1)[0]
                        mult[t, b:b + len(xb)] = g.detach().float().cpu()
                yx, yr = torch.chunk(y.detach().float().cpu(), 2)
                ydiff[b:b + len(xb)] = yx - yr
            diff = (flat_x - flat_r)
            for t, p in enumerate(pairs):
                m = mult[t]
                delta = (diff * m).sum(dim=(1, 2)) - ydiff[:, t]
                # Hypothetical contribution of base b = m_b - sum_j r_j m_j (DeepSHAP's projection
                # for one-hot input, as tangermeme's hypothetical_attributions), mean over references.
                hyp = (m - (flat_r * m).sum(dim=1, keepdim=True)).reshape(n, k, *Xc.shape[1:]).mean(dim=1)
                out[p][0].append(hyp.numpy().astype(np.float32))
                out[p][1].append(delta.reshape(n, k).mean(dim=1).numpy().astype(np.float32))
    return {p: (np.concatenate(a), np.concatenate(d)) for p, (a, d) in out.items()}


def _batched(module: nn.Module, X: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    return torch.cat([module(X[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(X), batch_size)])


# -- integrated gradients -----------------------------------------------------------------------
def integrated_gradients(
    f: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    baselines: Sequence[torch.Tensor],
    steps: int = 32,
    max_rows: int = 128,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], torch.Tensor]:
    """Integrated gradients of one or several outputs per example over a straight path.

    Hand-written (a few lines of torch; captum is not a dependency). The path integral uses the
    trapezoid rule on ``steps + 1`` equally spaced points, all inputs moving together; path points
    are batched (``max_rows`` rows per pass) and the T outputs share each forward pass.

    Parameters
    ----------
    f : callable
        ``f(*inputs) -> (N, T)`` (or ``(N,)`` for T = 1).
    inputs, baselines : sequences of Tensor
        Same shapes, leading axis N.
    steps : int
        Trapezoid intervals.

    Returns
    -------
    mean_grads : list over T of lists over inputs
        Path-averaged gradients (the "multipliers").
    attrs : list over T of lists over inputs
        ``(x - baseline) * mean_grad``.
    delta : Tensor (N, T)
        ``sum(all attrs) - (f(x) - f(baseline))`` (completeness error).
    """
    n = len(inputs[0])
    alphas = torch.linspace(0, 1, steps + 1)
    weights = torch.full((steps + 1,), 1.0 / steps)
    weights[0] = weights[-1] = 0.5 / steps
    per = max(1, max_rows // n)  # path points per pass
    grads: list[list[torch.Tensor]] | None = None
    for s in range(0, steps + 1, per):
        a = alphas[s:s + per].to(inputs[0].device)
        w = weights[s:s + per].to(inputs[0].device)
        k = len(a)
        xs = []
        for x, b in zip(inputs, baselines):
            shape = (k,) + (1,) * x.dim()
            xs.append((b[None] + a.view(shape) * (x - b)[None]).reshape(k * n, *x.shape[1:]).requires_grad_(True))
        with torch.enable_grad():
            y = f(*xs)
            y = y[:, None] if y.dim() == 1 else y
            if grads is None:
                grads = [[torch.zeros_like(x) for x in inputs] for _ in range(y.shape[1])]
            for t in range(y.shape[1]):
                gs = torch.autograd.grad(y[:, t].sum(), xs, retain_graph=t < y.shape[1] - 1, allow_unused=True)
                for acc, g in zip(grads[t], gs):
                    if g is not None:
                        g = g.detach().reshape(k, n, *g.shape[1:])  # rows are (path point, example)
                        acc += (w.view((k,) + (1,) * (g.dim() - 1)) * g).sum(0)
    attrs = [[(x - b) * g for x, b, g in zip(inputs, baselines, gt)] for gt in grads]
    with torch.inference_mode():
        fx, fb = f(*inputs).float(), f(*baselines).float()
    fx, fb = (fx[:, None], fb[:, None]) if fx.dim() == 1 else (fx, fb)
    total = torch.stack([sum(a.reshape(n, -1).sum(1) for a in at) for at in attrs], dim=1)
    return grads, attrs, (total - (fx - fb)).detach()


def shuffled_ig(
    f: Callable[..., torch.Tensor],
    X: torch.Tensor,
    refs: torch.Tensor,
    steps: int,
    others: Sequence[torch.Tensor] = (),
    other_baselines: Sequence[torch.Tensor] = (),
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]], torch.Tensor]:
    """Integrated gradients averaged over several sequence baselines per example.

    Each example's path is run from each of its ``k`` baselines (``refs``) and the results are
    averaged, as DeepSHAP averages over its references ("expected gradients" with a fixed path
    grid). Why: with one dinucleotide shuffle, every position where the shuffle happens to carry
    the observed base gets no contribution, which cuts motifs into pieces. On the accuracy
    benchmark's data (CNN with patch attention, erythroid count, 64 test windows) the AUROC of
    ``|contribution|`` for bases inside planted or chance TF sites was 0.67 with one shuffle and 32
    steps, 0.80 with 4 shuffles and 8 or 16 steps, 0.81 with 8 shuffles and 4 steps; DeepLIFT with
    20 shuffles on the plain CNN: 0.81.

    Parameters
    ----------
    f : callable
        ``f(seq, *others) -> (rows, T)`` (or ``(rows,)``); rows are ``(example, baseline)`` pairs,
        example-major (row ``i * k + j``), stacked per path point as :func:`integrated_gradients`
        does.
    X : Tensor (N, 4, L) one-hot
    refs : Tensor (N, k, 4, L)
        Sequence baselines per example.
    others, other_baselines : sequences of Tensor (N, ...)
        Further inputs (reads, cell type) and their baselines, the same for every sequence baseline.

    Returns
    -------
    hyp : list over T of Tensor (N, 4, L)
        Hypothetical contributions, projected as in DeepSHAP (base ``b`` gets ``g_b - sum_i
        baseline_i g_i``, so ``hyp * X`` sums to the IG attribution), averaged over baselines.
    other_attrs : list over T of lists of Tensor (N, ...)
        Attributions to ``others``, averaged over baselines.
    delta : Tensor (N, T)
        Completeness error of the averaged attributions: ``sum(attrs) - (f(x) - mean_j f(b_j))``.
    """
    n, k = refs.shape[:2]

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(k, dim=0)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, k, *t.shape[1:]).mean(1)

    Xb = refs.reshape(n * k, *X.shape[1:])
    grads, attrs, delta = integrated_gradients(
        f, [rep(X), *map(rep, others)], [Xb, *map(rep, other_baselines)], steps)
    hyp = [mean(g[0] - (Xb * g[0]).sum(dim=1, keepdim=True)) for g in grads]
    return hyp, [[mean(a) for a in at[1:]] for at in attrs], mean(delta)


def ig_attributions(
    model: nn.Module,
    X: torch.Tensor,
    cell: int,
    targets: str | Sequence[str],
    n_cells: int,
    steps: int = 16,
    reads: torch.Tensor | None = None,
    baseline: str = "shuffle",
    seed: int = 0,
    chunk: int = 16,
    shuffles: int = 4,
) -> dict[str, np.ndarray] | dict[str, dict[str, np.ndarray]]:
    """Integrated-gradient attributions of one cell type's targets (sharing the path).

    For a model with an ``encode(seq, reads, cell)`` entry point (the masked encoder) and given
    ``reads``, the attributions cover sequence, reads and cell type; otherwise the sequence only
    (``forward(X)``).

    Parameters
    ----------
    X : Tensor (N, 4, L) one-hot
    targets : a target name or a list of them
    reads : Tensor (N, 2, L) or None
        Observed read counts of cell type ``cell`` over the input (plus, minus).
    baseline : "shuffle" or "zero"
        Sequence baseline: ``shuffles`` dinucleotide shuffles of each sequence (attributions
        averaged over them, :func:`shuffled_ig`), or all-zero (one path).

    Returns
    -------
    For one target name: dict with ``attr`` (N, 4, L) hypothetical, ``delta`` (N,) and, for the
    encoder, ``reads_attr`` (N, 2, L) and ``cell_attr`` (N, C); for a list: target -> such a dict.
    """
    single = isinstance(targets, str)
    names = [targets] if single else list(targets)
    device = model_device(model)
    use_encode = reads is not None and hasattr(model, "encode")
    res = {t: {"attr": [], "delta": [], "reads_attr": [], "cell_attr": []} for t in names}
    for s in range(0, len(X), chunk):
        Xc = X[s:s + chunk].float()
        refs = torch.zeros_like(Xc)[:, None] if baseline == "zero" else shuffled_references(Xc, shuffles, seed + s)
        Xc, refs = Xc.to(device), refs.to(device)
        if use_encode:
            Rc = reads[s:s + chunk].float().to(device)
            cell1h = torch.zeros(len(Xc), n_cells, device=device)
            cell1h[:, cell] = 1.0

            def f(seq, rd, cl):
                pl, lc = encoder_outputs(model, seq, rd, cl)
                return torch.stack([select_target(pl, lc, cell, t).float() for t in names], dim=1)

            hyp, other, delta = shuffled_ig(f, Xc, refs, steps, [Rc, cell1h],
                                            [torch.zeros_like(Rc), torch.full_like(cell1h, 1.0 / n_cells)])
        else:
            def f(seq):
                pl, lc = model(seq)
                return torch.stack([select_target(pl, lc, cell, t).float() for t in names], dim=1)

            hyp, other, delta = shuffled_ig(f, Xc, refs, steps)
        for j, t in enumerate(names):
            res[t]["attr"].append(hyp[j].cpu().numpy())
            res[t]["delta"].append(delta[:, j].cpu().numpy())
            if use_encode:
                res[t]["reads_attr"].append(other[j][0].cpu().numpy())
                res[t]["cell_attr"].append(other[j][1].cpu().numpy())
    out = {t: {k: np.concatenate(v).astype(np.float32) for k, v in r.items() if v} for t, r in res.items()}
    return out[names[0]] if single else out


# -- ISM ----------------------------------------------------------------------------------------
def ism_attributions(model: nn.Module, X: torch.Tensor, pairs: Sequence[tuple[int, str]],
                     batch_size: int = 256) -> dict[tuple[int, str], np.ndarray]:
    """Saturation mutagenesis (tangermeme, fast ISM where it applies) for several targets at once.

    Returns
    -------
    dict (cell, target) -> float32 (N, 4, L): prediction change of each substitution, centred on the
    mean over the four bases at each position (a hypothetical attribution).
    """
    from tangermeme.saturation_mutagenesis import saturation_mutagenesis

    allt = AllTargets(model, pairs).eval()
    # Fast ISM (tangermeme's torch.export capture) pays off for convolutions only; attention cannot be
    # captured, so models that attend go straight to plain ISM instead of failing a capture attempt first.
    y0, y_hat = saturation_mutagenesis(allt, X.float(), raw_outputs=True, batch_size=batch_size,
                                       device=model_device(model), fast=not uses_attention(model))
    out = {}
    for j, p in enumerate(pairs):
        d = y_hat[..., j].float() - y0[:, None, None, j].float()
        out[p] = (d - d.mean(dim=1, keepdim=True)).numpy().astype(np.float32)
    return out


# -- regions ------------------------------------------------------------------------------------
def select_regions(store, n: int, output_len: int, batch: int = 256) -> np.ndarray:
    """Rows of the peak windows to explain: held-out (test + valid) first, then train; each group
    ranked by the observed total count over the output window (all cell types, both strands).

    Returns
    -------
    int64 array (≤ n,), sorted by store row.
    """
    chosen: list[np.ndarray] = []
    for splits in (("test", "valid"), ("train",)):
        idx = np.sort(np.concatenate([store.indices(s, kinds=("peak",)) for s in splits]).astype(np.int64))
        if len(idx) == 0:
            continue
        lo = (store.span - output_len) // 2
        tot = np.concatenate([
            np.asarray(store.signal[idx[i:i + batch]])[..., lo:lo + output_len].sum(axis=(1, 2, 3))
            for i in range(0, len(idx), batch)])
        chosen.append(idx[np.argsort(-tot, kind="stable")])
    if not chosen:
        raise UserError("the dataset has no peak windows to explain: check the regions file and re-run prepare.")
    return np.sort(np.concatenate(chosen)[:n])


def load_windows(store, rows: np.ndarray, input_len: int, cells: Sequence[int] | None = None):
    """One-hot ``(N, 4, L)`` float32 of the model input and (optionally) reads ``(N, C', 2, L)``."""
    from seq2reads.data.genome import one_hot

    lo = (store.span - input_len) // 2
    codes = np.asarray(store.seq[rows])[:, lo:lo + input_len]
    X = torch.from_numpy(np.ascontiguousarray(one_hot(codes), dtype=np.float32))
    if cells is None:
        return X, None
    sig = np.asarray(store.signal[rows])[:, list(cells), :, lo:lo + input_len]
    return X, torch.from_numpy(np.ascontiguousarray(sig, dtype=np.float32))


# -- bigWig -------------------------------------------------------------------------------------
def write_contrib_bigwig(path: Path, chrom_sizes: dict[str, int], chroms: Sequence[str],
                         starts: np.ndarray, contrib: np.ndarray) -> None:
    """Per-base contributions ``(N, L)`` at ``[start, start + L)`` of each window to a bigWig.

    Overlapping windows are averaged; positions outside the chromosome are dropped.
    """
    import pyBigWig

    L = contrib.shape[1]
    order = sorted(range(len(chroms)), key=lambda i: (list(chrom_sizes).index(chroms[i]), starts[i]))
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(list(chrom_sizes.items()))
    i = 0
    while i < len(order):
        # A cluster of windows that overlap each other, written as one dense run.
        ch, a, b, j = chroms[order[i]], int(starts[order[i]]), int(starts[order[i]]) + L, i + 1
        while j < len(order) and chroms[order[j]] == ch and int(starts[order[j]]) < b:
            b = max(b, int(starts[order[j]]) + L)
            j += 1
        total, count = np.zeros(b - a), np.zeros(b - a)
        for k in order[i:j]:
            o = int(starts[k]) - a
            total[o:o + L] += contrib[k]
            count[o:o + L] += 1
        lo, hi = max(a, 0), min(b, chrom_sizes[ch])
        if hi > lo:
            vals = (total / np.maximum(count, 1))[lo - a:hi - a]
            bw.addEntries(ch, lo, values=vals.astype(np.float64).tolist(), span=1, step=1)
        i = j
    bw.close()


# -- the command --------------------------------------------------------------------------------
def attribution_files(run_dir: str | Path) -> list[tuple[str, str, Path]]:
    """``(cell, target, npz path)`` of the attributions written in ``RUN/attributions``."""
    d = Path(run_dir) / "attributions"
    summary = d / "summary.json"
    if not summary.exists():
        raise UserError(f"no attributions in {d}: run `seq2reads attribute {run_dir}` first.")
    info = json.loads(summary.read_text())
    return [(f["cell"], f["target"], d / f["file"]) for f in info["files"]]


def attribute_run(cfg) -> Path:
    """Compute attributions as configured in ``cfg.interpret`` and write ``RUN/attributions/``.

    Returns
    -------
    Path of the folder.
    """
    from seq2reads.data.genome import Genome
    from seq2reads.data.store import open_dataset
    from seq2reads.models.io import load_model

    icfg = cfg.interpret
    run = Path(cfg.run_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    store = open_dataset(run / "dataset")
    cells_all = list(store.samples)
    cells = resolve_cells(icfg.cell_types, cells_all)
    model = load_model(run, device).eval()
    method = resolve_method(icfg.method, model)
    targets = expand_targets(icfg.targets)
    if "count_specific" in targets and len(cells_all) < 2:
        raise UserError(f"interpret.targets count_specific contrasts a cell type with the others, but this dataset has "
                        f"one ({cells_all[0]}): use targets count and profile.")
    input_len, output_len = store.input_len, store.output_len
    rows = select_regions(store, icfg.n_regions, output_len)
    cidx = [cells_all.index(c) for c in cells]
    X, reads = load_windows(store, rows, input_len, cidx if method == "ig" else None)
    seed = cfg.train.seed
    pairs = [(c, t) for c in cidx for t in targets]

    results: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    if method == "deeplift":
        for p, (a, d) in deeplift_shap(model, X, pairs, icfg.shuffles, seed).items():
            results[p] = {"attr": a, "delta": d}
    elif method == "ism":
        for p, a in ism_attributions(model, X, pairs).items():
            results[p] = {"attr": a, "delta": np.full(len(X), np.nan, np.float32)}
    else:
        # count_specific needs every cell type's prediction: the sequence-only forward pass (S2R
        # mode for the encoder, whose reads/cell-type path predicts the one cell type it is given)
        own = [t for t in targets if t != "count_specific"]
        for c in cidx:
            r = None if reads is None else reads[:, cidx.index(c)]
            per = ig_attributions(model, X, c, own, len(cells_all), icfg.ig_steps, r, icfg.ig_baseline, seed,
                                  shuffles=icfg.ig_shuffles) if own else {}
            if "count_specific" in targets:
                per["count_specific"] = ig_attributions(model, X, c, "count_specific", len(cells_all), icfg.ig_steps,
                                                        None, icfg.ig_baseline, seed, shuffles=icfg.ig_shuffles)
            results.update({(c, t): per[t] for t in targets})

    regions = store.regions.iloc[rows]
    lo = (store.span - input_len) // 2
    starts = regions["start"].to_numpy(np.int64) + lo
    chroms = np.asarray(regions["chrom"].astype(str).tolist(), dtype=str)
    chrom_sizes = Genome(cfg.genome).chroms
    ohe = X.numpy()
    files, warned = [], []
    with atomic_path(run / "attributions") as tmp:
        tmp.mkdir()
        for (c, t), r in results.items():
            name = f"{cells_all[c]}.{t}"
            arrays = {"ohe": ohe, "index": rows, "start": starts, "chrom": chroms, **r}
            with open(tmp / f"{name}.npz", "wb") as fh:
                np.savez_compressed(fh, **arrays)
            write_contrib_bigwig(tmp / f"{name}.bw", chrom_sizes, chroms, starts, (r["attr"] * ohe).sum(axis=1))
            d = np.abs(r["delta"])
            stats = {"mean_abs_delta": float(np.nanmean(d)) if np.isfinite(d).any() else None,
                     "max_abs_delta": float(np.nanmax(d)) if np.isfinite(d).any() else None,
                     "n_above_warn": int(np.sum(d > icfg.delta_warn))}
            if stats["n_above_warn"]:
                warned.append(f"{name}: {stats['n_above_warn']}/{len(d)} regions (max {stats['max_abs_delta']:.3g})")
            files.append({"cell": cells_all[c], "target": t, "file": f"{name}.npz", "bigwig": f"{name}.bw", **stats})
        summary = {"method": method, "n_regions": int(len(rows)), "input_len": int(input_len),
                   "shuffles": icfg.shuffles if method == "deeplift" else None,
                   "ig_steps": icfg.ig_steps if method == "ig" else None,
                   "ig_baseline": icfg.ig_baseline if method == "ig" else None,
                   "ig_shuffles": icfg.ig_shuffles if method == "ig" and icfg.ig_baseline == "shuffle" else None,
                   "delta_warn": icfg.delta_warn, "layout": FORMAT_NOTE, "files": files}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if warned:
        log.warning("seq2reads attribute: warning: convergence delta above interpret.delta_warn=%s in %s%s",
                    icfg.delta_warn, "; ".join(warned), " (raise interpret.ig_steps)" if method == "ig" else "")
    return run / "attributions"
