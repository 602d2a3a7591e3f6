"""Predicted stranded tracks: tile windows with overlap, keep each tile's centre, stitch, write bigWigs.

``seq2reads predict RUN (--regions BED | --genome-wide) --out DIR`` writes, per cell type ``c``,
``DIR/{c}.plus.bw`` and ``DIR/{c}.minus.bw`` holding the **expected read counts** per base,
``softmax(profile_logits) * expm1(log_counts)`` (both strands share one softmax, as in training).
Minus-strand values are written as positive numbers. The bigWig headers carry every chromosome
of the genome (its sizes); only the predicted intervals have entries.

Tiling
------
Tile ``i`` of an interval ``[a, b)`` keeps the ``step`` central positions of its output window,
``[a + i*step, a + (i+1)*step)`` (the last one cut at ``b``), so kept pieces partition the
interval and every kept base sits at least ``(output_len - step) // 2`` bp from its tile's
output edge, where the model has the most context. Its output window starts at
``a + i*step - (output_len - step) // 2`` and its input window ``(input_len - output_len) // 2``
bp further left (the loader's centre-crop convention). Sequence outside a chromosome is N.
Genome-wide prediction streams chromosome by chromosome and batch by batch (memory is bounded
by one batch of tiles plus the bigWig writers' buffers).

Hand-written rather than taken from a library: tangermeme/bpnet-lite predict fixed windows but
do not tile, stitch or write stranded multi-cell-type bigWigs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from seq2reads.atomic import atomic_path
from seq2reads.errors import UserError


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_trained_model(run_dir: str | Path, device: str | None = None) -> torch.nn.Module:
    """The trained model of a run, in eval mode; :class:`UserError` if the run has none yet.

    A model file from another format version or a corrupt one is reported by
    :func:`seq2reads.models.io.load_model` (also a :class:`UserError`).
    """
    run = Path(run_dir)
    model_dir = run / "model"
    if not (model_dir / "model.json").exists() or not (model_dir / "model.safetensors").exists():
        raise UserError(
            f"no trained model in {model_dir}: run `seq2reads train CONFIG` (with run_dir: {run}) first."
        )
    from seq2reads.models.io import load_model

    model = load_model(run, device=device or default_device())
    return model.eval()


def inference_model(cfg, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped in :class:`~seq2reads.models.revcomp.RevCompAverage` when
    ``predict.revcomp_average`` is on, else ``model`` itself."""
    from seq2reads.models.revcomp import RevCompAverage

    return RevCompAverage(model).eval() if cfg.predict.revcomp_average else model


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def predict_windows(model: torch.nn.Module, X, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Run a model on one-hot windows in batches, without gradients.

    Parameters
    ----------
    model : nn.Module
        ``forward(X (B, 4, L_in)) -> (profile_logits (B, C, 2, L_out), log_counts (B, C))``.
    X : array or tensor (N, 4, L_in)
        One-hot DNA (float32).
    batch_size : int

    Returns
    -------
    profile_logits : float32 (N, C, 2, L_out)
    log_counts : float32 (N, C)
        Predicted ``log(1 + total count)`` of each output window.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    logits, counts = [], []
    try:
        with torch.inference_mode():
            for b in range(0, len(X), batch_size):
                xb = X[b : b + batch_size]
                xb = torch.as_tensor(np.asarray(xb) if not torch.is_tensor(xb) else xb, dtype=torch.float32)
                pl, lc = model(xb.to(device))
                logits.append(pl.float().cpu().numpy())
                counts.append(lc.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("predict_windows got no windows")
    return np.concatenate(logits), np.concatenate(counts)


def expected_counts(profile_logits: np.ndarray, log_counts: np.ndarray) -> np.ndarray:
    """Expected per-base counts ``softmax(profile over both strands) * expm1(log_counts)``.

    Parameters
    ----------
    profile_logits : (N, C, 2, L); log_counts : (N, C)

    Returns
    -------
    float32 (N, C, 2, L), counts (reads per base).
    """
    from seq2reads.evaluation.metrics import softmax_profile

    probs = softmax_profile(profile_logits, axis_start=2)
    total = np.expm1(np.asarray(log_counts, dtype=np.float64))[..., None, None]
    return (probs * np.clip(total, 0.0, None)).astype(np.float32)


# -- tiling ------------------------------------------------------------------------------------
def tile_starts(start: int, end: int, step: int) -> np.ndarray:
    """Starts of the kept pieces ``[s, min(s + step, end))`` covering ``[start, end)``."""
    return np.arange(start, end, step, dtype=np.int64)


def _intervals_from_regions(path, genome) -> dict[str, list[tuple[int, int]]]:
    """Merged, clipped prediction intervals per chromosome (genome order) from a BED file."""
    from seq2reads.data.regions import check_chrom_names, read_regions

    df = read_regions(path)
    check_chrom_names(genome.chroms, df["chrom"], genome_label=f"genome {Path(genome.path).name}",
                      regions_label=f"prediction regions {Path(path).name}")
    out: dict[str, list[tuple[int, int]]] = {}
    for chrom, length in genome.chroms.items():
        sub = df[df["chrom"] == chrom]
        if sub.empty:
            continue
        s = np.clip(sub["start"].to_numpy(np.int64), 0, length)
        e = np.clip(sub["end"].to_numpy(np.int64), 0, length)
        order = np.argsort(s, kind="stable")
        merged: list[list[int]] = []
        for a, b in zip(s[order], e[order]):
            if b <= a:
                continue
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], int(b))
            else:
                merged.append([int(a), int(b)])
        if merged:
            out[chrom] = [(a, b) for a, b in merged]
    if not out:
        raise UserError(f"prediction regions {path} lie entirely outside the genome's chromosomes: check coordinates.")
    return out


def _tiles(intervals: dict[str, list[tuple[int, int]]], step: int) -> Iterator[tuple[str, int, int]]:
    """(chrom, kept start, kept end) for every tile, in genome order then position."""
    for chrom, ivs in intervals.items():
        for a, b in ivs:
            for s in tile_starts(a, b, step):
                yield chrom, int(s), int(min(s + step, b))


def predict_intervals(model, genome, intervals, input_len: int, output_len: int, step: int,
                      batch_size: int = 64) -> Iterator[tuple[str, int, np.ndarray]]:
    """Stream stitched expected counts: yields ``(chrom, start, values (C, 2, n))`` per kept piece,
    in genome order (adjacent pieces of one interval are contiguous)."""
    lead = (output_len - step) // 2  # kept piece offset inside the output window
    flank = (input_len - output_len) // 2  # output window offset inside the input window
    batch: list[tuple[str, int, int]] = []

    def flush():
        X = np.stack([genome.one_hot(c, s - lead - flank, s - lead - flank + input_len) for c, s, _ in batch])
        logits, logc = predict_windows(model, X, batch_size)
        if logits.shape[-1] != output_len:
            raise UserError(
                f"the model returns {logits.shape[-1]} output positions but the run's window.output is {output_len}: "
                "predict with the config the model was trained with."
            )
        exp = expected_counts(logits, logc)
        for (c, s, e), v in zip(batch, exp):
            yield c, s, v[:, :, lead : lead + (e - s)]

    for tile in _tiles(intervals, step):
        batch.append(tile)
        if len(batch) == batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def predict(cfg, regions: str | Path | None = None, genome_wide: bool = False, out: str | Path = "predictions",
            step: int | None = None, batch_size: int | None = None, device: str | None = None,
            progress: bool = True) -> Path:
    """Predict expected stranded counts over regions (or the whole genome) and write bigWigs.

    Parameters
    ----------
    cfg : seq2reads.config.Config
        The run's config (``RUN/config.yaml``).
    regions : path to a BED/narrowPeak file, optional
        Intervals to predict (overlapping ones are merged; clipped to the chromosomes).
    genome_wide : bool
        Tile every chromosome of the genome instead.
    out : path
        Output folder; gets ``{cell}.plus.bw`` and ``{cell}.minus.bw`` per cell type.
    step : int, optional
        Bases kept per tile (tile stride); default ``window.output // 2`` (50 % overlap).

    Returns
    -------
    Path of the output folder.

    Raises
    ------
    UserError
        No trained model; regions on a chromosome the genome lacks; neither/both of regions
        and genome_wide; a bad step.
    """
    import pyBigWig

    from seq2reads.data.genome import Genome

    if (regions is None) == (not genome_wide):
        raise UserError("predict needs exactly one of --regions BED or --genome-wide.")
    run = Path(cfg.run_dir)
    model = inference_model(cfg, load_trained_model(run, device))
    genome = Genome(cfg.genome)
    input_len, output_len = cfg.window.input, cfg.window.output
    step = int(step or max(1, output_len // 2))
    if not 0 < step <= output_len:
        raise UserError(f"predict step must be between 1 and window.output ({output_len}), got {step}.")
    if genome_wide:
        intervals = {c: [(0, n)] for c, n in genome.chroms.items() if n > 0}
    else:
        intervals = _intervals_from_regions(regions, genome)
    n_tiles = sum(len(tile_starts(a, b, step)) for ivs in intervals.values() for a, b in ivs)
    cells = list(cfg.cell_types)
    header = list(genome.chroms.items())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch_size = batch_size or cfg.train.batch_size

    with contextlib.ExitStack() as stack:
        writers = {}
        for ci, cell in enumerate(cells):
            for si, strand in enumerate(("plus", "minus")):
                tmp = stack.enter_context(atomic_path(out / f"{cell}.{strand}.bw"))
                bw = pyBigWig.open(str(tmp), "w")
                bw.addHeader(header, maxZooms=10)
                writers[ci, si] = bw
        try:
            pieces = predict_intervals(model, genome, intervals, input_len, output_len, step, batch_size)
            for chrom, start, values in progress_iter(pieces, n_tiles, "predicting", progress):
                if values.shape[0] != len(cells):
                    raise UserError(
                        f"the model predicts {values.shape[0]} cell types but the config names {len(cells)}: "
                        "use the run's own config."
                    )
                for (ci, si), bw in writers.items():
                    bw.addEntries(chrom, start, values=values[ci, si].astype(np.float64), span=1, step=1)
        finally:
            for bw in writers.values():
                bw.close()
    return out


def progress_iter(it, total: int, label: str, enabled: bool):
    """Yield from ``it`` with a transient rich progress bar of ``total`` steps when ``enabled``."""
    if not enabled:
        yield from it
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        for x in it:
            yield x
            bar.advance(task)
