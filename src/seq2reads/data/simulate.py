"""Synthetic nascent-transcription data with known truth (``seq2reads simulate``).

The simulator writes a small genome, a set of divergent-initiation regions, stranded read tracks
for several cell types (bigWigs and, for the first cell type, a PRO-cap BAM), the true per-base
rates and every planted motif instance, and a config that is ready for ``seq2reads prepare``.

Generative model
----------------
Genome
    Chromosomes ``chr1`` … ``chr8`` and ``chr20`` (so the default splits have data: valid chr8,
    chr20; test chr1, chr3, chr6; train chr2, chr4, chr5, chr7, which get ~60% of the regions).
    Bases come from a 2nd-order Markov chain whose composition follows GC isochores (blocks of
    ~150 kb with GC drawn around 41%), with CpG depletion (``P(G | C)`` × 0.22, the human CpG
    observed/expected ratio), mild TpA depletion and A/T homopolymer persistence. Each chromosome
    starts and ends with an N-run (telomere-like) and a few inter-region gaps hold N-runs of 1–4 kb.
Regions
    Region ``r`` has centre ``c``; windows of 2400 bp around centres never overlap each other or
    N-runs; gaps of 1.5–6 kb between them leave room for background windows. ``regions.bed``
    holds ``[c - h, c + h)`` spanning the two TSSs, so its midpoint is ``c``.
Core promoter (sequence-driven, divergent initiation)
    A plus-strand TSS at ``t = c + U{50..90}`` and a minus-strand TSS at ``u = c - U{50..90}``.
    Each TSS is fixed by sequence: a TATA box sampled from JASPAR TBP (MA0108) at -31..-25 on its
    strand and an initiator dinucleotide (Y at -1, R at +1). The TATA box's PWM score sets the
    strand's share of initiation (weight ``exp(0.3 * (score_bits - 9))``, times a small random
    log-normal factor, sd 0.15).
Transcription factors
    Motifs are real JASPAR2024 CORE vertebrate matrices (pyjaspar, offline; the latest version of
    each base ID, i.e. the non-redundant entry): shared activators SP1 (MA0079), NRF1 (MA0506),
    YY1 (MA0095), ELK1 (MA0028); one cell-type-specific activator per cell type (GATA1::TAL1
    (MA0140) erythroid, HNF4A (MA0114) hepatocyte, CEBPB (MA0466) myeloid, then MEF2C, PAX5,
    TEAD1, NEUROD1, NFKB1 for more cell types); and the repressor REST (MA0138) in every cell type.
    Each region carries 0, 1 or 2 instances of each motif (probabilities in :class:`SimOptions`).
    An instance is a sequence sampled from the motif's position frequency matrix, kept only when
    its relative log-odds score is >= 0.8 (functional sites are strong), inserted on a random
    strand at a random position within ±90 bp of the centre (between / around the TSS pair),
    never overlapping another planted element. The background also forms strong matches by chance:
    every match in that motif zone with relative score >= 0.8 (either strand, not overlapping a
    planted site of the same TF; of overlapping matches the best) counts as a site too, recorded
    with ``planted: false``, so the rates below are a function of the sequence a model sees (with
    the defaults 4% (NRF1) to 70% (YY1) of a TF's sites; REST almost none). Matches outside the
    zone have no effect.
Rates
    The expected count profile of a region over its 2 kb span ``[c - 1000, c + 1000)`` is, per
    strand, 60% a sharp TSS peak (discrete Laplace, scale 1 bp), 25% a promoter-proximal pause
    peak (Gaussian, sd 3 bp) at ``TSS + p`` downstream on that strand, ``p ~ round(N(40, 5))``
    clipped to 30..60 (not sequence-driven), and 15% gene-body elongation (exponential decay,
    200 bp, up to 600 bp past the pause). Its total (both strands, without background) is
    ``base_total * depth[cell] * exp(sum_m effect_m * n_rm * active_m[cell] + e_r + e_rc)``
    (``n_rm``: sites of TF ``m`` in region ``r``'s motif zone, planted or by chance)
    with per-instance log effects (shared +0.45..+0.6, specific +1.2 in their own cell type and 0
    elsewhere, REST -0.8), a per-region random log scale ``e_r ~ N(0, 0.3)`` shared by cell types
    and ``e_rc ~ N(0, 0.1)``. A genome-wide background rate (0.002 reads per base and strand,
    zero on N) is added everywhere.
Counts
    Per-base counts are Negative Binomial with mean = rate and size ``r = 8`` (variance
    ``mu + mu**2 / 8``), independent across bases, drawn as Gamma-Poisson. Where no region adds
    to the background (mu = 0.002, so the over-dispersion term is < 0.03% of the variance),
    counts are drawn as Poisson events scattered uniformly. Rates are rounded to 11 significant
    bits before drawing (so the stored truth is exactly what the counts were drawn from). A
    second, independent draw per cell type is written as a replicate. With the defaults and
    3000 regions each TF has ~450 (REST) to ~1000 planted instances, and ~40% of regions carry
    no planted cell-type-specific motif.

Outputs (in ``out``, written atomically)
----------------------------------------
``genome.fa`` (+ ``.fai``), ``regions.bed``, ``tracks/{cell}.{plus,minus}.bw`` (per-base counts;
the *last* cell type's minus strand is stored as negative values to exercise ``abs`` handling),
``tracks/rep2/{cell}.{plus,minus}.bw`` (replicate draw), ``tracks/{cell0}.bam`` (+ ``.bai``: one
36 bp read per count whose 5' end is the counted base, on the RNA strand — the ``pro-cap`` preset;
same draw as the first cell type's bigWigs), ``truth/{cell}.{plus,minus}.rate.bw`` (true expected
counts per base, whole genome), ``truth.json`` and ``config.yaml`` (+ ``config.bam.yaml`` reading
the first cell type from the BAM instead).

``truth.json`` (paths relative to its folder; :func:`load_truth` resolves them):
``format``, ``version``, ``seed``, ``parameters`` (all :class:`SimOptions` and sizes),
``cell_types``, ``depth`` {cell: factor}, ``chroms`` {chrom: length}, ``n_runs`` {chrom: [[s, e]]},
``background_rate``, ``dispersion``, ``motifs`` [{name, jaspar_id, jaspar_name, role (shared |
specific | repressor | core), tf_class, tf_family, cell_types (where active), effect (log, per
instance), acts_on, consensus, n_instances, region_prob}], ``regions`` [{name, chrom, centre,
tss {plus, minus}, pause {plus, minus}, pause_offset, strand_share, motif_counts {motif: n},
expected_total {cell: reads over the span, no background}}], ``instances`` [{region, motif,
motif_id, role, chrom, start, end, strand, sequence (5'->3' on its strand), score (bits), planted}],
``rates`` {cell: {plus, minus}} (true-rate bigWigs), ``tracks`` and ``replicates`` {cell: {plus,
minus}}, ``negative_minus`` (the cell type whose minus bigWig is negative), ``bam`` {cell, path}.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seq2reads.atomic import atomic_path
from seq2reads.errors import UserError

FORMAT = "seq2reads-simulation"
VERSION = 2  # 2: chance matches in the motif zone are sites too (instances carry ``planted``)
JASPAR_RELEASE = "JASPAR2024"

#: Chromosomes and the share of regions each gets (train chr2/4/5/7 ≈ 60%, test ≈ 22%, valid ≈ 18%).
CHROM_WEIGHTS = {"chr1": 0.08, "chr2": 0.16, "chr3": 0.07, "chr4": 0.15, "chr5": 0.14,
                 "chr6": 0.07, "chr7": 0.15, "chr8": 0.10, "chr20": 0.08}
TRAIN_CHROMS = ("chr2", "chr4", "chr5", "chr7")

#: (name, JASPAR base ID, log effect per instance) of TFs active in every cell type.
SHARED_TFS = (("SP1", "MA0079", 0.6), ("NRF1", "MA0506", 0.5), ("YY1", "MA0095", 0.45), ("ELK1", "MA0028", 0.5))
#: (cell type, TF name, JASPAR base ID) of the TF active only in that cell type, in cell-type order.
SPECIFIC_TFS = (("erythroid", "GATA1::TAL1", "MA0140"), ("hepatocyte", "HNF4A", "MA0114"),
                ("myeloid", "CEBPB", "MA0466"), ("myocyte", "MEF2C", "MA0497"), ("bcell", "PAX5", "MA0014"),
                ("epithelial", "TEAD1", "MA0090"), ("neuron", "NEUROD1", "MA1109"), ("lymphoid", "NFKB1", "MA0105"))
REPRESSOR_TF = ("REST", "MA0138", -0.8)
CORE_TF = ("TBP", "MA0108")

BASES = "ACGTN"
#: Background base composition used for PWM log-odds scores (A, C, G, T).
BG_FREQ = np.array([0.295, 0.205, 0.205, 0.295])
SPAN_HALF = 1000          # region span [c - 1000, c + 1000): where the region's rate lives
WINDOW_HALF = 1200        # no two regions (or an N-run) within 2 * 1200 bp: fits 2114 + 2 * 128
MOTIF_ZONE = 90           # motifs go within ±90 bp of the centre
BODY_LEN, BODY_DECAY = 600, 200.0  # gene-body signal: exponential decay (bp) up to BODY_LEN past the pause
MIN_REL_SCORE = 0.8       # planted instances have relative PWM score >= 0.8
OUTPUT_NAMES = {"genome.fa", "genome.fa.fai", "regions.bed", "tracks", "truth", "truth.json", "config.yaml",
                "config.bam.yaml"}


@dataclass(frozen=True)
class SimOptions:
    """Parameters of the generative model (see the module docstring); ``simulate(**options)``."""

    dispersion: float = 8.0          # NB size r per base: var = mu + mu^2 / r
    background_rate: float = 0.002   # expected reads per base and strand, genome-wide (0 on N)
    base_total: float = 30.0         # expected reads over a region's span (both strands), no motifs
    region_sd: float = 0.3           # sd of the per-region log scale, shared by cell types
    cell_region_sd: float = 0.1      # sd of the per-region, per-cell-type log scale
    depth_sd: float = 0.2            # sd of the per-cell-type log sequencing depth
    tss_fraction: float = 0.6        # share of a strand's expected reads in the TSS peak
    pause_fraction: float = 0.25     # ... in the pause peak (the rest is gene body)
    pause_mean: float = 40.0         # pause offset downstream of the TSS, bp
    pause_sd: float = 5.0
    tata_weight: float = 0.3         # strand weight exp(tata_weight * (TATA score in bits - 9))
    strand_sd: float = 0.15          # random log-normal factor on each strand's weight
    shared_prob: float = 0.3         # P(a region carries a given shared motif)
    specific_prob: float = 0.25      # P(... a given cell-type-specific motif); capped at 1 / n_cell_types
    repressor_prob: float = 0.15
    double_prob: float = 0.15        # P(2 instances | carries the motif)
    specific_effect: float = 1.2     # log effect per instance of a specific TF in its cell type
    read_length: int = 36
    replicate: bool = True           # also write an independent second draw per cell type
    gc_mean: float = 0.43            # isochore GC before CpG depletion (realised genome GC ≈ 41%)


# -- public helpers for consumers of the truth --------------------------------------------------
def load_truth(path: str | os.PathLike) -> dict:
    """Read ``truth.json``; relative file paths in it are resolved against its folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"simulation truth not found: {path}. Give the truth.json written by `seq2reads simulate`.")
    try:
        truth = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON: give the truth.json written by `seq2reads simulate`.") from None
    if truth.get("format") != FORMAT:
        raise UserError(f"{path} is not a seq2reads simulation truth file (format {truth.get('format')!r}).")
    for inst in truth.get("instances", ()):
        inst.setdefault("planted", True)  # version 1 recorded planted sites only
    for cell, d in truth["rates"].items():
        for s in ("plus", "minus"):
            d[s] = str((path.parent / d[s]).resolve())
    return truth


def read_true_rates(truth: dict, cell: str, chrom: str, start: int, end: int) -> np.ndarray:
    """True expected counts per base, ``float32 (2, end - start)`` (plus, minus); 0 off the chromosome.

    ``truth`` is the dict from :func:`load_truth`. Coordinates 0-based, half-open.
    """
    import pyBigWig

    if cell not in truth["rates"]:
        raise UserError(f"cell type {cell!r} is not in the simulation truth; it has {sorted(truth['rates'])}.")
    out = np.zeros((2, end - start), dtype=np.float32)
    for i, s in enumerate(("plus", "minus")):
        bw = pyBigWig.open(truth["rates"][cell][s])
        try:
            length = bw.chroms().get(chrom)
            if length is None:
                continue
            lo, hi = max(start, 0), min(end, length)
            if hi > lo:
                v = np.asarray(bw.values(chrom, lo, hi, numpy=True), dtype=np.float32)
                out[i, lo - start:hi - start] = np.nan_to_num(v, nan=0.0)
        finally:
            bw.close()
    return out


# -- entry point --------------------------------------------------------------------------------
def simulate(out: str | os.PathLike, seed: int = 0, n_cell_types: int = 3, n_regions: int = 3000, *,
             progress: bool = True, **options) -> Path:
    """Simulate a data set into ``out`` (a folder, replaced atomically) and return its path.

    Parameters
    ----------
    out : path
        Output folder. An existing folder is replaced only if it holds nothing but simulator outputs.
    seed : int
        Random seed; the same seed gives identical files.
    n_cell_types : int
        Number of cell types (1..8); each gets its own specific TF.
    n_regions : int
        Number of planted regions (>= 9, one per chromosome at least).
    progress : bool
        Show a progress bar on stderr.
    **options
        Fields of :class:`SimOptions`.
    """
    out = Path(out)
    opts = _options(options)
    if not 1 <= n_cell_types <= len(SPECIFIC_TFS):
        raise UserError(f"--cell-types must be between 1 and {len(SPECIFIC_TFS)}, got {n_cell_types}.")
    if n_regions < len(CHROM_WEIGHTS):
        raise UserError(f"--regions must be at least {len(CHROM_WEIGHTS)} (one per chromosome), got {n_regions}.")
    _check_out(out)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    seeds = np.random.SeedSequence(seed).spawn(5)
    rng_layout, rng_genome, rng_plant, rng_scale, rng_counts = (np.random.default_rng(s) for s in seeds)
    cols = [TextColumn("simulating {task.description:<22}"), BarColumn(), MofNCompleteColumn()]
    with Progress(*cols, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("genome", total=4 + n_cell_types)

        def step(next_name: str) -> None:
            bar.update(task, advance=1, description=next_name)

        motifs = _load_motifs(n_cell_types, opts)
        cells = [m["cell_types"][0] for m in motifs if m["role"] == "specific"]
        layout = _layout(n_regions, rng_layout)
        genome = _markov_genome(layout["lengths"], rng_genome, opts)
        for chrom, runs in layout["n_runs"].items():
            for s, e in runs:
                genome[chrom][s:e] = 4
        step("promoters and motifs")
        regions = _plant(genome, layout, motifs, rng_plant, opts)
        shapes = _shapes(regions, opts)
        totals, depth = _region_totals(regions, motifs, cells, rng_scale, opts)
        step(f"reads: {cells[0]}")

        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            (tmp / "tracks").mkdir()
            (tmp / "truth").mkdir()
            _write_fasta(tmp / "genome.fa", genome, layout["chroms"])
            _write_regions(tmp / "regions.bed", regions)
            tracks = _write_tracks(tmp, genome, layout, regions, shapes, totals, cells, rng_counts, opts, step)
            _write_truth(tmp / "truth.json", seed, n_cell_types, n_regions, opts, layout, motifs, cells, regions,
                         totals, depth, tracks)
            _write_configs(tmp, cells, tracks)
            step("done")
    return out


def _options(options: dict) -> SimOptions:
    valid = [f.name for f in dataclasses.fields(SimOptions)]
    for k in options:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Valid options: {', '.join(valid)}."
            raise UserError(f"unknown simulation option '{k}'.{hint}")
    return SimOptions(**options)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder name for the simulated data.")
    if out.is_dir():
        extra = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
        if extra:
            raise UserError(f"--out {out} already holds other files ({', '.join(extra[:3])}): "
                            "choose a new folder or empty this one.")


# -- motifs -------------------------------------------------------------------------------------
def _load_motifs(n_cell_types: int, opts: SimOptions) -> list[dict]:
    """The planted TFs with their JASPAR matrices: dicts with ``pfm`` float64 (4, L) probabilities."""
    from pyjaspar import jaspardb

    db = jaspardb(release=JASPAR_RELEASE)
    spec_p = min(opts.specific_prob, 1.0 / n_cell_types)
    todo = [(n, i, e, "shared", None, opts.shared_prob) for n, i, e in SHARED_TFS]
    todo += [(n, i, opts.specific_effect, "specific", [c], spec_p) for c, n, i in SPECIFIC_TFS[:n_cell_types]]
    todo += [(REPRESSOR_TF[0], REPRESSOR_TF[1], REPRESSOR_TF[2], "repressor", None, opts.repressor_prob)]
    todo += [(CORE_TF[0], CORE_TF[1], 0.0, "core", None, 0.0)]
    cells = [c for c, _, _ in SPECIFIC_TFS[:n_cell_types]]
    motifs = []
    for name, base_id, effect, role, cts, prob in todo:
        m = db.fetch_motif_by_id(base_id)
        if m is None:  # pragma: no cover - the offline database ships these
            raise RuntimeError(f"JASPAR matrix {base_id} missing from pyjaspar's {JASPAR_RELEASE}")
        counts = np.array([m.counts[b] for b in "ACGT"], dtype=np.float64)
        pfm = counts / counts.sum(0, keepdims=True)
        pfm = 0.99 * pfm + 0.0025  # a small floor keeps log-odds finite
        motifs.append({
            "name": name, "jaspar_id": m.matrix_id, "jaspar_name": m.name, "role": role,
            "tf_class": list(m.tf_class or []), "tf_family": list(m.tf_family or []),
            "cell_types": cts if cts is not None else cells,
            "effect": float(effect), "prob": float(prob), "pfm": pfm,
            "acts_on": "TSS position (fixed offset) and strand share" if role == "core" else "initiation rate",
            "consensus": str(m.consensus),
        })
    return motifs


def _pwm(pfm: np.ndarray) -> np.ndarray:
    """Log-odds (bits) against :data:`BG_FREQ`, (4, L)."""
    return np.log2(pfm / BG_FREQ[:, None])


def pwm_scores(codes: np.ndarray, pwm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds (bits) of ``pwm`` (4, L) and of its reverse complement at every site start in
    ``codes`` (uint8, A C G T N = 0..4): two float arrays of ``len(codes) - L + 1`` (empty when
    shorter); a site touching N scores ``-inf``."""
    L = pwm.shape[1]
    if len(codes) < L:
        return np.zeros(0), np.zeros(0)
    n_row = np.full((1, L), -np.inf)
    win = np.lib.stride_tricks.sliding_window_view(codes, L)
    cols = np.arange(L)
    # reversing both axes complements the rows (A C G T -> T G C A) and reverses the positions
    return (np.vstack([pwm, n_row])[win, cols].sum(1),
            np.vstack([pwm[::-1, ::-1], n_row])[win, cols].sum(1))


def relative_score(scores: np.ndarray | float, pwm: np.ndarray) -> np.ndarray | float:
    """Log-odds ``scores`` (bits) of ``pwm`` (4, L) on the 0..1 scale between its lowest and highest
    possible score (sites count when >= :data:`MIN_REL_SCORE`)."""
    lo, hi = pwm.min(0).sum(), pwm.max(0).sum()
    return (scores - lo) / (hi - lo)


def _sample_sites(pfm: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sites sampled from a PFM with relative score >= :data:`MIN_REL_SCORE`.

    Returns codes uint8 (n, L) and scores in bits (n,). Rejection sampling in batches.
    """
    pwm = _pwm(pfm)
    cum = np.cumsum(pfm, axis=0)  # (4, L)
    keep_codes, keep_scores, have = [np.zeros((0, pfm.shape[1]), np.uint8)], [np.zeros(0)], 0
    while have < n:
        m = max(4 * (n - have), 64)
        u = rng.random((m, pfm.shape[1]))
        codes = (u[:, None, :] > cum[None, :3, :]).sum(1).astype(np.uint8)
        scores = pwm[codes, np.arange(pfm.shape[1])].sum(1)
        ok = relative_score(scores, pwm) >= MIN_REL_SCORE
        keep_codes.append(codes[ok])
        keep_scores.append(scores[ok])
        have += int(ok.sum())
    return np.concatenate(keep_codes)[:n], np.concatenate(keep_scores)[:n]


def _revcomp(codes: np.ndarray) -> np.ndarray:
    return (3 - codes[::-1]).astype(np.uint8)


# -- layout and genome --------------------------------------------------------------------------
def _layout(n_regions: int, rng: np.random.Generator) -> dict:
    """Chromosome lengths, region centres and N-runs.

    Returns dict: ``chroms`` (names, in order), ``lengths`` {chrom: bp}, ``centres`` {chrom: int64
    array}, ``n_runs`` {chrom: [(start, end)]}.
    """
    chroms = list(CHROM_WEIGHTS)
    w = np.array([CHROM_WEIGHTS[c] for c in chroms])
    n_per = np.maximum(np.floor(w * n_regions).astype(int), 1)
    train_idx = [chroms.index(c) for c in TRAIN_CHROMS]
    i = 0
    while n_per.sum() < n_regions:  # remainder to training chromosomes
        n_per[train_idx[i % len(train_idx)]] += 1
        i += 1
    while n_per.sum() > n_regions:  # only when n_regions is tiny
        j = int(np.argmax(n_per))
        n_per[j] -= 1
    lengths, centres, n_runs = {}, {}, {}
    for chrom, k in zip(chroms, n_per):
        runs = []
        tel_start, tel_end = int(rng.integers(5000, 10000)), int(rng.integers(2000, 5000))
        runs.append((0, tel_start))
        pos = tel_start + 5000
        cs = []
        for _ in range(k):
            if rng.random() < 0.03:  # an internal N-run (assembly gap) in this gap
                pos += 1500
                n_len = int(rng.integers(1000, 4000))
                runs.append((pos, pos + n_len))
                pos += n_len + 1500
            pos += int(rng.integers(1500, 6000))
            cs.append(pos + WINDOW_HALF)
            pos += 2 * WINDOW_HALF
        pos += 5000
        runs.append((pos, pos + tel_end))
        lengths[chrom] = pos + tel_end
        centres[chrom] = np.array(cs, dtype=np.int64)
        n_runs[chrom] = runs
    return {"chroms": chroms, "lengths": lengths, "centres": centres, "n_runs": n_runs}


def _transition_tables(gc_levels: np.ndarray) -> np.ndarray:
    """Cumulative 2nd-order Markov transitions, float64 (G, 16, 4): [level, 4*x[t-2] + x[t-1], x[t]]."""
    A, C, G, T = range(4)
    tabs = np.zeros((len(gc_levels), 16, 4))
    for li, gc in enumerate(gc_levels):
        pi = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
        for a2 in range(4):
            for a1 in range(4):
                p = pi.copy()
                if a1 == C:
                    p[G] *= 0.22  # CpG depletion (observed/expected ≈ 0.2 in mammals)
                if a1 == T:
                    p[A] *= 0.8   # TpA depletion
                if a1 == a2 and a1 in (A, T):
                    p[a1] *= 1.4  # A/T homopolymer runs
                tabs[li, 4 * a2 + a1] = p / p.sum()
    return np.cumsum(tabs, axis=2)


def _markov_genome(lengths: dict[str, int], rng: np.random.Generator, opts: SimOptions,
                   chunk: int = 2000) -> dict[str, np.ndarray]:
    """Base codes uint8 per chromosome from an isochore-modulated 2nd-order Markov chain.

    The chain runs in parallel over 2 kb chunks (vectorised over chunks; a Python loop over bases
    would take minutes), each chunk with the GC level of its isochore.
    """
    gc_levels = np.round(np.arange(0.30, 0.605, 0.01), 2)
    cum = _transition_tables(gc_levels)
    total = sum(lengths.values())
    n_chunks = -(-total // chunk)
    # isochores: blocks of ~150 kb (exponential lengths) with GC ~ N(gc_mean, 0.04)
    level = np.empty(n_chunks, dtype=np.int64)
    i = 0
    while i < n_chunks:
        n = max(1, int(rng.exponential(150_000) // chunk))
        gc = float(np.clip(rng.normal(opts.gc_mean, 0.04), 0.30, 0.60))
        level[i:i + n] = int(round((gc - 0.30) / 0.01))
        i += n
    codes = np.empty((n_chunks, chunk), dtype=np.uint8)
    prev2 = rng.integers(0, 4, n_chunks)
    prev1 = rng.integers(0, 4, n_chunks)
    for j in range(chunk):
        c = cum[level, 4 * prev2 + prev1]  # (n_chunks, 4)
        u = rng.random(n_chunks)
        nxt = (u[:, None] > c[:, :3]).sum(1)
        codes[:, j] = nxt
        prev2, prev1 = prev1, nxt
    flat = codes.ravel()
    out, pos = {}, 0
    for chrom, n in lengths.items():
        out[chrom] = flat[pos:pos + n].copy()
        pos += n
    return out


# -- planting -----------------------------------------------------------------------------------
def _plant(genome: dict[str, np.ndarray], layout: dict, motifs: list[dict], rng: np.random.Generator,
           opts: SimOptions) -> list[dict]:
    """Write core promoters and TF sites into ``genome`` (in place); return one dict per region."""
    core = next(m for m in motifs if m["role"] == "core")
    tfs = [m for m in motifs if m["role"] != "core"]
    n_total = sum(len(c) for c in layout["centres"].values())
    # draw all site sequences up front (vectorised), then hand them out
    tata_codes, tata_scores = _sample_sites(core["pfm"], 2 * n_total, rng)
    n_inst = {}
    for m in tfs:
        has = rng.random(n_total) < m["prob"]
        two = rng.random(n_total) < opts.double_prob
        n_inst[m["name"]] = has.astype(int) + (has & two).astype(int)
    pools = {m["name"]: _sample_sites(m["pfm"], int(n_inst[m["name"]].sum()), rng) for m in tfs}
    used = {m["name"]: 0 for m in tfs}
    regions, k = [], 0
    for chrom in layout["chroms"]:
        seq = genome[chrom]
        for c in layout["centres"][chrom]:
            c = int(c)
            t = c + int(rng.integers(50, 91))   # plus-strand TSS
            u = c - int(rng.integers(50, 91))   # minus-strand TSS
            occ = np.zeros(2 * WINDOW_HALF, dtype=bool)  # occupancy relative to c - WINDOW_HALF
            o = c - WINDOW_HALF
            instances = []
            # core promoter, plus strand: TATA at -31..-25, Inr Y(-1) R(+1)
            tc, ts = tata_codes[2 * k], float(tata_scores[2 * k])
            seq[t - 31:t - 24] = tc
            seq[t - 1] = 1 if rng.random() < 0.7 else 3          # C / T
            seq[t] = 0 if rng.random() < 0.8 else 2              # A / G
            occ[t - 31 - o:t + 2 - o] = True
            instances.append(_instance(core, chrom, t - 31, t - 24, "+", tc, ts))
            # minus strand mirrored: TATA (reverse complement) at u+25..u+31, Inr at u+1 / u
            mc, ms = tata_codes[2 * k + 1], float(tata_scores[2 * k + 1])
            seq[u + 25:u + 32] = _revcomp(mc)
            seq[u + 1] = 2 if rng.random() < 0.7 else 0          # complement of C / T
            seq[u] = 3 if rng.random() < 0.8 else 1              # complement of A / G
            occ[u - 1 - o:u + 32 - o] = True
            instances.append(_instance(core, chrom, u + 25, u + 32, "-", mc, ms))
            counts = {}
            for m in tfs:
                nm = int(n_inst[m["name"]][k])
                placed = 0
                for _ in range(nm):
                    codes = pools[m["name"]][0][used[m["name"]]]
                    score = float(pools[m["name"]][1][used[m["name"]]])
                    used[m["name"]] += 1
                    L = len(codes)
                    for _try in range(50):
                        s = int(rng.integers(c - MOTIF_ZONE, c + MOTIF_ZONE - L + 1))
                        if not occ[s - o - 1:s - o + L + 1].any():
                            break
                    else:
                        continue  # no room left: the instance is not planted (and not counted)
                    strand = "+" if rng.random() < 0.5 else "-"
                    seq[s:s + L] = codes if strand == "+" else _revcomp(codes)
                    occ[s - o:s - o + L] = True
                    instances.append(_instance(m, chrom, s, s + L, strand, codes, score))
                    placed += 1
                counts[m["name"]] = placed
            for m in tfs:
                chance = _chance_sites(m, seq, chrom, c, [i for i in instances if i["motif"] == m["name"]])
                instances += chance
                counts[m["name"]] += len(chance)
            pause = np.clip(np.round(rng.normal(opts.pause_mean, opts.pause_sd, 2)), 30, 60).astype(int)
            strand_w = np.exp(opts.tata_weight * (np.array([ts, ms]) - 9.0) + rng.normal(0, opts.strand_sd, 2))
            regions.append({
                "name": f"reg{k:05d}", "chrom": chrom, "centre": c, "tss": {"plus": t, "minus": u},
                "pause": {"plus": int(t + pause[0]), "minus": int(u - pause[1])},
                "pause_offset": {"plus": int(pause[0]), "minus": int(pause[1])},
                "strand_share": {"plus": float(strand_w[0] / strand_w.sum()),
                                 "minus": float(strand_w[1] / strand_w.sum())},
                "motif_counts": counts, "instances": instances,
            })
            k += 1
    return regions


def _instance(m: dict, chrom: str, start: int, end: int, strand: str, codes: np.ndarray, score: float,
              planted: bool = True) -> dict:
    seq = "".join(BASES[b] for b in codes)  # the site read 5'->3' on its strand
    return {"motif": m["name"], "motif_id": m["jaspar_id"], "role": m["role"], "chrom": chrom, "start": int(start),
            "end": int(end), "strand": strand, "sequence": seq, "score": round(score, 3), "planted": planted}


def _chance_sites(m: dict, seq: np.ndarray, chrom: str, c: int, planted: list[dict]) -> list[dict]:
    """Sites of TF ``m`` that the background sequence (or other planted elements) form by chance in
    the motif zone ``[c - MOTIF_ZONE, c + MOTIF_ZONE)``: relative score >= :data:`MIN_REL_SCORE` on
    either strand, not overlapping a planted site of ``m``; overlapping matches keep the best one.

    They act like planted sites (the rate is a function of the sequence a model sees); without them
    up to 70% of a TF's strong matches in the zone would be inert, and no sequence model could
    reach the true rates. Returned as instances with ``planted: False``.
    """
    pwm = _pwm(m["pfm"])
    L = pwm.shape[1]
    z0 = c - MOTIF_ZONE
    zone = seq[z0:c + MOTIF_ZONE]
    fwd, rev = pwm_scores(zone, pwm)  # site p starts at z0 + p
    score = np.maximum(fwd, rev)
    taken = np.zeros(len(zone) + L, bool)
    for i in planted:
        taken[max(i["start"] - z0 - L + 1, 0):i["end"] - z0] = True  # a site starting here would overlap it
    out = []
    for p in np.argsort(-score, kind="stable"):
        if relative_score(score[p], pwm) < MIN_REL_SCORE:
            break
        if taken[p]:
            continue
        taken[max(p - L + 1, 0):p + L] = True
        strand = "+" if fwd[p] >= rev[p] else "-"
        codes = zone[p:p + L] if strand == "+" else _revcomp(zone[p:p + L])
        out.append(_instance(m, chrom, z0 + p, z0 + p + L, strand, codes, float(score[p]), planted=False))
    return out


# -- rates --------------------------------------------------------------------------------------
def _shapes(regions: list[dict], opts: SimOptions) -> np.ndarray:
    """Expected-count shape of each region over its span, float32 (R, 2, 2 * SPAN_HALF), summing to 1.

    Vectorised over regions: TSS kernel, pause Gaussian and gene-body decay placed by index arithmetic.
    """
    L = 2 * SPAN_HALF
    R = len(regions)
    x = np.arange(L)[None, :]
    out = np.zeros((R, 2, L), dtype=np.float32)
    k_tss = np.arange(-6, 7)
    w_tss = np.exp(-np.abs(k_tss) / 1.0)
    w_tss /= w_tss.sum()
    body_frac = 1.0 - opts.tss_fraction - opts.pause_fraction
    o = np.array([r["centre"] - SPAN_HALF for r in regions])[:, None]
    for s, name in enumerate(("plus", "minus")):
        sign = 1 if s == 0 else -1
        t = np.array([r["tss"][name] for r in regions])[:, None] - o
        p = np.array([r["pause"][name] for r in regions])[:, None] - o
        share = np.array([r["strand_share"][name] for r in regions])[:, None]
        prof = np.zeros((R, L))
        np.add.at(prof, (np.arange(R)[:, None], t + k_tss[None, :]), opts.tss_fraction * w_tss[None, :])
        dp = x - p
        g = np.where(np.abs(dp) <= 12, np.exp(-0.5 * (dp / 3.0) ** 2), 0.0)
        prof += opts.pause_fraction * g / g.sum(1, keepdims=True)
        d = sign * dp  # distance downstream of the pause on this strand
        b = np.where((d > 0) & (d <= BODY_LEN), np.exp(-d / BODY_DECAY), 0.0)
        prof += body_frac * b / b.sum(1, keepdims=True)
        out[:, s] = prof * share
    return out


def _region_totals(regions: list[dict], motifs: list[dict], cells: list[str], rng: np.random.Generator,
                   opts: SimOptions) -> tuple[np.ndarray, np.ndarray]:
    """Expected total reads per region span (both strands, no background), float64 (R, C); depth (C,)."""
    R, C = len(regions), len(cells)
    depth = np.exp(rng.normal(0, opts.depth_sd, C))
    log_t = np.log(opts.base_total) + np.log(depth)[None, :] + rng.normal(0, opts.region_sd, (R, 1)) \
        + rng.normal(0, opts.cell_region_sd, (R, C))
    for m in motifs:
        if m["role"] == "core":
            continue
        n = np.array([reg["motif_counts"][m["name"]] for reg in regions], dtype=np.float64)
        active = np.array([c in m["cell_types"] for c in cells], dtype=np.float64)
        log_t += m["effect"] * n[:, None] * active[None, :]
    return np.exp(log_t), depth


def _round_rates(x: np.ndarray) -> np.ndarray:
    """Round float32 values to 11 significant bits (relative error <= 0.05%).

    Counts are drawn from the rounded rates, so the stored truth is exact; the short mantissa lets
    the rate bigWigs compress about 3x better.
    """
    v = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    v = (v + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return v.view(np.float32)


def _sample_nb(rate: np.ndarray, dispersion: float, rng: np.random.Generator) -> np.ndarray:
    """Negative Binomial counts with mean ``rate`` and size ``dispersion`` (Gamma-Poisson), int32."""
    lam = rng.gamma(shape=dispersion, scale=rate / dispersion)
    return rng.poisson(lam).astype(np.int32)


# -- writers ------------------------------------------------------------------------------------
def _write_fasta(path: Path, genome: dict[str, np.ndarray], chroms: list[str], width: int = 60) -> None:
    import pysam

    letters = np.frombuffer(BASES.encode(), dtype=np.uint8)
    nl = np.uint8(ord("\n"))
    with open(path, "wb") as f:
        for chrom in chroms:
            arr = letters[genome[chrom]]
            n_full = len(arr) // width
            body = np.concatenate([arr[:n_full * width].reshape(n_full, width),
                                   np.full((n_full, 1), nl, dtype=np.uint8)], axis=1).ravel()
            f.write(f">{chrom}\n".encode())
            f.write(body.tobytes())
            if len(arr) % width:
                f.write(arr[n_full * width:].tobytes() + b"\n")
    pysam.faidx(str(path))


def _write_regions(path: Path, regions: list[dict]) -> None:
    lines = []
    for reg in regions:
        h = max(reg["tss"]["plus"] - reg["centre"], reg["centre"] - reg["tss"]["minus"]) + 50
        lines.append(f"{reg['chrom']}\t{reg['centre'] - h}\t{reg['centre'] + h}\t{reg['name']}\t0\t.\n")
    path.write_text("".join(lines))


def _write_tracks(tmp: Path, genome: dict, layout: dict, regions: list[dict], shapes: np.ndarray,
                  totals: np.ndarray, cells: list[str], rng: np.random.Generator, opts: SimOptions,
                  step=lambda name: None) -> dict:
    """Sample counts and write count bigWigs, the BAM and the true-rate bigWigs; return their paths.

    ``step(name)`` is called after each cell type and after the BAM (progress).
    """
    import pyBigWig

    chroms = layout["chroms"]
    header = [(c, int(layout["lengths"][c])) for c in chroms]
    by_chrom = {c: [i for i, r in enumerate(regions) if r["chrom"] == c] for c in chroms}
    bg = opts.background_rate
    support = shapes > 0  # (R, 2, L): where a region adds to the background
    # per strand, the first and last supported position of each region span (for the rate bigWigs)
    any_s = support.any(2)
    lo = np.where(any_s, support.argmax(2), 0)
    hi = np.where(any_s, support.shape[2] - support[:, :, ::-1].argmax(2), 0)
    covered = {}  # per chrom: bool (2, n), N or region support (counts there come from the NB draw)
    for chrom in chroms:
        cov = np.repeat((genome[chrom] == 4)[None, :], 2, axis=0)
        for i in by_chrom[chrom]:
            a = regions[i]["centre"] - SPAN_HALF
            cov[:, a:a + 2 * SPAN_HALF] |= support[i]
        covered[chrom] = cov
    tracks = {"counts": {}, "replicates": {}, "rates": {}, "bam": None, "negative_minus": cells[-1]}
    draws = [("counts", "tracks/{cell}.{strand}.bw")]
    if opts.replicate:
        (tmp / "tracks" / "rep2").mkdir()
        draws.append(("replicates", "tracks/rep2/{cell}.{strand}.bw"))
    bam_reads = []
    for ci, cell in enumerate(cells):
        rates = _round_rates(shapes * totals[:, ci, None, None].astype(np.float32) + np.float32(bg))  # (R, 2, L)
        for kind, pattern in draws:
            rel = {s: pattern.format(cell=cell, strand=s) for s in ("plus", "minus")}
            sign = -1.0 if cell == tracks["negative_minus"] and kind == "counts" else 1.0
            region_counts = np.zeros(rates.shape, dtype=np.int32)
            region_counts[support] = _sample_nb(rates[support], opts.dispersion, rng)
            bws = {s: pyBigWig.open(str(tmp / rel[s]), "w") for s in rel}
            for b in bws.values():
                b.addHeader(header)
            for chrom in chroms:
                n = len(genome[chrom])
                for s, name in enumerate(("plus", "minus")):
                    # background: Poisson events scattered uniformly, dropped on N and region support
                    pos = rng.integers(0, n, rng.poisson(bg * n))
                    pos = np.unique(pos[~covered[chrom][s, pos]], return_counts=True)
                    parts_p, parts_c = [pos[0]], [pos[1]]
                    for i in by_chrom[chrom]:
                        nz = np.flatnonzero(region_counts[i, s])
                        parts_p.append(nz + regions[i]["centre"] - SPAN_HALF)
                        parts_c.append(region_counts[i, s, nz])
                    p_all, c_all = np.concatenate(parts_p), np.concatenate(parts_c)
                    order = np.argsort(p_all, kind="stable")
                    p_all, c_all = p_all[order].astype(np.int64), c_all[order]
                    if len(p_all):
                        bws[name].addEntries(chrom, p_all, values=c_all.astype(np.float64) * (sign if s else 1.0),
                                             span=1)
                    if kind == "counts" and ci == 0:
                        bam_reads.append((chrom, s, p_all, c_all))
            for b in bws.values():
                b.close()
            tracks[kind][cell] = rel
        rel = {s: f"truth/{cell}.{s}.rate.bw" for s in ("plus", "minus")}
        _write_rates(tmp, rel, header, layout, regions, by_chrom, rates, lo, hi, bg)
        tracks["rates"][cell] = rel
        step(f"reads: {cells[ci + 1]}" if ci + 1 < len(cells) else "BAM")
    bam = f"tracks/{cells[0]}.bam"
    _write_bam(tmp / bam, genome, header, bam_reads, opts.read_length)
    step("truth and config")
    tracks["bam"] = {"cell": cells[0], "path": bam}
    return tracks


def _write_rates(tmp: Path, rel: dict, header: list, layout: dict, regions: list[dict], by_chrom: dict,
                 rates: np.ndarray, lo: np.ndarray, hi: np.ndarray, bg: float) -> None:
    """True expected counts per base: constant background intervals, per-base values where regions add.

    No zoom levels (nobody browses these; they would double the writing time).
    """
    import pyBigWig

    for s, name in enumerate(("plus", "minus")):
        bw = pyBigWig.open(str(tmp / rel[name]), "w")
        bw.addHeader(header, maxZooms=0)
        for chrom, length in header:
            # pieces in order: N-runs have rate 0 (no entry), region support per base, the rest bg
            events = [(a, b, None) for a, b in layout["n_runs"][chrom]]
            for i in by_chrom[chrom]:
                o = regions[i]["centre"] - SPAN_HALF
                if hi[i, s] > lo[i, s]:
                    events.append((o + int(lo[i, s]), o + int(hi[i, s]), i))
            cur = 0
            for a, b, i in sorted(events):
                if a > cur:
                    bw.addEntries([chrom], [cur], ends=[a], values=[float(bg)])
                if i is not None:
                    o = regions[i]["centre"] - SPAN_HALF
                    bw.addEntries(chrom, a, values=rates[i, s, a - o:b - o].astype(np.float64), span=1, step=1)
                cur = b
            if cur < length:
                bw.addEntries([chrom], [cur], ends=[length], values=[float(bg)])
        bw.close()


def _write_bam(path: Path, genome: dict, header: list, reads: list, read_length: int) -> None:
    """One read per count: plus-strand reads start at the counted base, minus-strand reads end there.

    Written as SAM text and sorted/compressed by samtools (pysam) — building a few hundred thousand
    AlignedSegment objects in Python would take far longer.
    """
    import pysam

    sam = path.with_suffix(".sam")
    letters = BASES
    n_read = 0
    with open(sam, "w") as f:
        f.write("@HD\tVN:1.6\tSO:unsorted\n")
        for chrom, length in header:
            f.write(f"@SQ\tSN:{chrom}\tLN:{length}\n")
        f.write("@RG\tID:sim\tSM:sim\tPL:ILLUMINA\n")
        for chrom, s, pos, cnt in reads:
            if not len(pos):
                continue
            length = dict(header)[chrom]
            seq_bytes = np.frombuffer(letters.encode(), dtype=np.uint8)[genome[chrom]].tobytes().decode()
            pos = np.repeat(pos, cnt)
            if s == 0:
                start = pos
                end = np.minimum(pos + read_length, length)
                flag = 0
            else:
                end = pos + 1
                start = np.maximum(end - read_length, 0)
                flag = 16
            lines = []
            for a, b in zip(start.tolist(), end.tolist()):
                lines.append(f"s{n_read}\t{flag}\t{chrom}\t{a + 1}\t60\t{b - a}M\t*\t0\t0\t{seq_bytes[a:b]}\t*\tRG:Z:sim\n")
                n_read += 1
            f.write("".join(lines))
    pysam.sort("-o", str(path), "-T", str(path.with_suffix(".sorttmp")), str(sam))
    sam.unlink()
    pysam.index(str(path))


def _write_truth(path: Path, seed: int, n_cell_types: int, n_regions: int, opts: SimOptions, layout: dict,
                 motifs: list[dict], cells: list[str], regions: list[dict], totals: np.ndarray,
                 depth: np.ndarray, tracks: dict) -> None:
    n_by = {}
    for reg in regions:
        for inst in reg["instances"]:
            n_by[inst["motif"]] = n_by.get(inst["motif"], 0) + 1
    truth = {
        "format": FORMAT, "version": VERSION, "seed": int(seed),
        "parameters": {"n_cell_types": n_cell_types, "n_regions": n_regions, **dataclasses.asdict(opts),
                       "span_half": SPAN_HALF, "motif_zone": MOTIF_ZONE, "min_rel_score": MIN_REL_SCORE,
                       "jaspar_release": JASPAR_RELEASE},
        "cell_types": cells,
        "depth": {c: float(d) for c, d in zip(cells, depth)},
        "chroms": {c: int(layout["lengths"][c]) for c in layout["chroms"]},
        "n_runs": {c: [list(map(int, r)) for r in layout["n_runs"][c]] for c in layout["chroms"]},
        "background_rate": opts.background_rate,
        "dispersion": opts.dispersion,
        "motifs": [{k: v for k, v in m.items() if k not in ("pfm", "prob")} | {"n_instances": n_by.get(m["name"], 0),
                                                                             "region_prob": m["prob"]}
                   for m in motifs],
        "regions": [{k: v for k, v in reg.items() if k != "instances"}
                    | {"expected_total": {c: round(float(totals[i, j]), 4) for j, c in enumerate(cells)}}
                    for i, reg in enumerate(regions)],
        "instances": [inst | {"region": reg["name"]} for reg in regions for inst in reg["instances"]],
        "rates": tracks["rates"],
        "tracks": tracks["counts"],
        "replicates": tracks["replicates"],
        "negative_minus": tracks["negative_minus"],
        "bam": tracks["bam"],
    }
    path.write_text(json.dumps(truth))  # no indent: the C encoder is ~10x faster


def _write_configs(tmp: Path, cells: list[str], tracks: dict) -> None:
    def sample_lines(use_bam: bool) -> str:
        out = []
        for c in cells:
            out.append(f"  - name: {c}")
            if use_bam and tracks["bam"]["cell"] == c:
                out.append(f"    bam: {tracks['bam']['path']}        # pro-cap: read 5' end, read strand = RNA strand")
            else:
                t = tracks["counts"][c]
                out.append(f"    plus: {t['plus']}")
                neg = "   # stored as negative values (read as |value|)" if c == tracks["negative_minus"] else ""
                out.append(f"    minus: {t['minus']}{neg}")
                if not use_bam and tracks["bam"]["cell"] == c:
                    out.append(f"    # bam: {tracks['bam']['path']}   # the same reads as a BAM (see config.bam.yaml)")
            if tracks["replicates"].get(c):
                r = tracks["replicates"][c]
                out.append(f"    # replicates: [{{plus: {r['plus']}, minus: {r['minus']}}}]   # an independent draw")
        return "\n".join(out)

    for name, use_bam in (("config.yaml", False), ("config.bam.yaml", True)):
        text = f"""# seq2reads config for data simulated by `seq2reads simulate` (paths relative to this file).
# Next: seq2reads prepare {name}   (or: seq2reads run {name})
run_dir: runs/bpnet
genome: genome.fa
regions: regions.bed
assay: pro-cap
truth: truth.json                 # true per-base rates and planted motifs (noise ceiling, recovery)
samples:
{sample_lines(use_bam)}
window: {{input: 2114, output: 1000, jitter: 128}}
splits: {{valid: [chr8, chr20], test: [chr1, chr3, chr6]}}
background: {{ratio: 0.1, gc_matched: true}}
model: {{type: bpnet, filters: 64, layers: 8}}
"""
        (tmp / name).write_text(text)
