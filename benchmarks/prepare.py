"""Benchmark: ``seq2reads prepare`` vs naive per-region extraction (pyfaidx + pyBigWig + pysam).

Builds a sizeable synthetic input (FASTA, two stranded bigWig pairs, one BAM, a narrowPeak-like
BED), then in one run times

- ``prepare``: block reads, vectorised binning, 2 worker processes, Zarr writes included;
- naive: for each region, ``pyfaidx`` fetch, ``pyBigWig.values(..., numpy=True)`` per strand and
  sample (already the fast per-region call), and a per-read ``pysam`` loop over the region; the
  arrays are only computed, not written anywhere (which favours the naive side);
- naive (list): the same with pyBigWig's default ``values()`` returning a Python list, the call
  most scripts use;
- extract only: prepare's own tasks without the Zarr writes, to show where the time goes.

Wall times depend on the machine's load (the 2-core box this runs on is shared), so CPU times are
reported too (prepare's includes its worker processes).

Both produce the same per-window arrays; the script checks they are identical (per-window SHA-1
of sequence codes and signal, hashing time excluded from the naive timing), prints one JSON line
and writes it to ``benchmarks/results/prepare.json``.

Usage: ``python benchmarks/prepare.py [--regions 10000] [--genome-mb 60] [--repeats 3] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seq2reads.atomic import write_text_atomic  # noqa: E402

N_CHROMS = 4
INPUT, JITTER = 2114, 128


def build_inputs(d: Path, n_regions: int, genome_mb: float, seed: int = 0) -> Path:
    """Write genome.fa, {A,B}.{plus,minus}.bw, C.bam, regions.bed and config.yaml under ``d``."""
    import pyBigWig
    import pysam
    import yaml

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    lens = {f"chr{i + 1}": int(genome_mb * 1e6 / N_CHROMS) for i in range(N_CHROMS)}
    with open(d / "genome.fa", "w") as f:
        for c, n in lens.items():
            seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)].tobytes()
            f.write(f">{c}\n")
            for i in range(0, n, 80):
                f.write(seq[i : i + 80].decode() + "\n")
    # regions: uniform over the genome, 200-600 bp peaks with a summit
    per = np.maximum(1, (np.array(list(lens.values())) / sum(lens.values()) * n_regions).astype(int))
    centres = {c: np.sort(rng.integers(5000, n - 5000, k)) for (c, n), k in zip(lens.items(), per)}
    lines = []
    for c, cs in centres.items():
        for i, x in enumerate(cs):
            lines.append(f"{c}\t{x - 150}\t{x + 250}\tp{c}_{i}\t0\t.\t1\t-1\t-1\t150")
    (d / "regions.bed").write_text("\n".join(lines) + "\n")

    def profile(c, n):
        """Sparse per-base counts: a burst around each centre plus background."""
        v = np.zeros(n, np.float32)
        bg = rng.integers(0, n, n // 200)
        np.add.at(v, bg, 1)
        for x in centres[c]:
            pos = x + rng.normal(0, 60, rng.poisson(40)).astype(int)
            np.add.at(v, np.clip(pos, 0, n - 1), 1)
        return v

    samples = []
    for name in ("A", "B"):
        paths = {}
        for strand, sign in (("plus", 1.0), ("minus", -1.0)):
            bw = pyBigWig.open(str(d / f"{name}.{strand}.bw"), "w")
            bw.addHeader(list(lens.items()))
            for c, n in lens.items():
                v = profile(c, n)
                nz = np.nonzero(v)[0]
                bw.addEntries(c, nz.astype(np.int64), values=(sign * v[nz]).astype(np.float64), span=1)
            bw.close()
            paths[strand] = f"{name}.{strand}.bw"
        samples.append({"name": name, **paths})
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": c, "LN": n} for c, n in lens.items()]}
    with pysam.AlignmentFile(str(d / "C.bam"), "wb", header=header) as f:
        for tid, (c, n) in enumerate(lens.items()):
            bg = rng.integers(0, n - 100, n // 1000)
            peak = np.concatenate([x + rng.normal(0, 80, rng.poisson(30)).astype(int) for x in centres[c]])
            pos = np.sort(np.clip(np.r_[bg, peak], 0, n - 100))
            rev = rng.random(len(pos)) < 0.5
            mapq = rng.integers(0, 60, len(pos))
            for i, (p, r, q) in enumerate(zip(pos, rev, mapq)):
                a = pysam.AlignedSegment(f.header)
                a.query_name = f"{c}_{i}"
                a.reference_id = tid
                a.reference_start = int(p)
                a.cigarstring = "36M"
                a.query_sequence = "A" * 36
                a.flag = 16 if r else 0
                a.mapping_quality = int(q)
                f.write(a)
    pysam.index(str(d / "C.bam"))
    samples.append({"name": "C", "bam": "C.bam"})
    cfg = {"run_dir": "run", "genome": "genome.fa", "regions": "regions.bed", "assay": "pro-seq",
           "reads": {"min_mapq": 10}, "samples": samples,
           "window": {"input": INPUT, "output": 1000, "jitter": JITTER},
           "splits": {"valid": ["chr3"], "test": ["chr4"]}, "background": {"ratio": 0.0}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return d / "config.yaml"


def naive(cfg, S: int, numpy_values: bool = True) -> tuple[float, float, dict]:
    """Per-region extraction; returns (wall s, CPU s spent extracting, {(chrom, start): sha1}).

    ``numpy_values=False`` uses pyBigWig's default ``values()`` (a Python list), as most scripts do.
    """
    import pyBigWig
    import pyfaidx
    import pysam

    from seq2reads.data.genome import codes_from_str
    from seq2reads.data.regions import read_regions

    regions = read_regions(cfg.regions)
    fa = pyfaidx.Fasta(cfg.genome)
    bws = [(pyBigWig.open(s.plus), pyBigWig.open(s.minus)) for s in cfg.samples if s.plus]
    bam = pysam.AlignmentFile([s.bam for s in cfg.samples if s.bam][0])
    min_mapq = cfg.reads.min_mapq
    C = len(cfg.samples)
    digests, spent, cpu = {}, 0.0, 0.0
    for c, centre in zip(regions["chrom"], regions["centre"]):
        t0, c0 = time.perf_counter(), time.process_time()
        s = int(centre) - S // 2
        e = s + S
        L = len(fa[c])
        lo, hi = max(s, 0), min(e, L)
        seq = np.full(S, 4, np.uint8)
        seq[lo - s : hi - s] = codes_from_str(str(fa[c][lo:hi]))
        sig = np.zeros((C, 2, S), np.float32)
        for k, pair in enumerate(bws):
            for strand, bw in enumerate(pair):
                sig[k, strand, lo - s : hi - s] = np.abs(np.nan_to_num(
                    np.asarray(bw.values(c, lo, hi, numpy=numpy_values), dtype=np.float32)))
        k = len(bws)
        for r in bam.fetch(c, lo, hi):  # pro-seq: read 5' end, opposite strand
            if r.is_unmapped or r.is_secondary or r.is_supplementary or r.is_duplicate or r.is_qcfail:
                continue
            if r.mapping_quality < min_mapq or (r.is_paired and r.is_read2):
                continue
            p = r.reference_end - 1 if r.is_reverse else r.reference_start
            if s <= p < e:
                sig[k, 0 if r.is_reverse else 1, p - s] += 1
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        digests[(c, s)] = hashlib.sha1(seq.tobytes() + sig.tobytes()).hexdigest()
    return spent, cpu, digests


def extract_only(cfg, workers: int) -> tuple[float, float]:
    """prepare's extraction (same tasks, blocks and workers) without writing the store: (wall s, CPU s)."""
    from seq2reads.data import store

    inp = store.open_inputs(cfg)
    win, _ = store.build_windows(cfg, inp, seed=cfg.train.seed)
    chunk = store._chunk_rows(len(cfg.samples) * 2 * store.span_of(cfg.window) * 4)
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    store.run_tasks(cfg, inp, win, None, chunk, workers)
    return time.perf_counter() - t0, time.process_time() - c0 + _children_cpu() - k0


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def store_digests(path) -> dict:
    from seq2reads.data.store import open_dataset

    ds = open_dataset(path)
    out = {}
    chunk = 512
    for r0 in range(0, len(ds.regions), chunk):
        seq = np.asarray(ds.seq[r0 : r0 + chunk])
        sig = np.asarray(ds.signal[r0 : r0 + chunk])
        for i in range(len(seq)):
            r = ds.regions.iloc[r0 + i]
            out[(r.chrom, int(r.start))] = hashlib.sha1(seq[i].tobytes() + sig[i].tobytes()).hexdigest()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regions", type=int, default=10000)
    p.add_argument("--genome-mb", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians reported)")
    p.add_argument("--workdir", default=None, help="reuse inputs here (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    a = p.parse_args(argv)

    from seq2reads.config import load_config
    from seq2reads.data.store import prepare, span_of

    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="s2r-bench-prepare-"))
    cfg_path = work / "config.yaml"
    t0 = time.perf_counter()
    if not cfg_path.exists():
        build_inputs(work, a.regions, a.genome_mb)
    build_s = time.perf_counter() - t0
    cfg = load_config(cfg_path)
    S = span_of(cfg.window)

    import pyBigWig, pyfaidx, pysam, zarr  # noqa: F401,E401 - imports outside both timings

    # Interleaved repeats so both sides see the same machine load; medians are reported.
    preps, naives, extracts = [], [], []
    for _ in range(a.repeats):
        extracts.append(extract_only(cfg, a.workers))
        # each timed prepare builds a new dataset, as a first prepare does: the previous repeat's
        # is removed first, untimed (replacing a dataset also deletes the old one, ~0.03 s here)
        shutil.rmtree(cfg.run_path / "dataset", ignore_errors=True)
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        prepare(cfg, workers=a.workers, progress=False)
        # workers are reaped when the pool closes, so their CPU time is in RUSAGE_CHILDREN
        preps.append((time.perf_counter() - t0, time.process_time() - c0 + _children_cpu() - k0))
        ns, nc, naive_d = naive(cfg, S)
        naives.append((ns, nc))
    prep_s, prep_cpu = (float(np.median([x[i] for x in preps])) for i in (0, 1))
    naive_s, naive_cpu = (float(np.median([x[i] for x in naives])) for i in (0, 1))
    list_s, list_cpu, list_d = naive(cfg, S, numpy_values=False)
    ext_s, ext_cpu = (float(np.median([x[i] for x in extracts])) for i in (0, 1))
    ours = store_digests(cfg.run_path)
    identical = ours == naive_d == list_d
    n = len(naive_d)
    from seq2reads.data.genome import Genome

    genome_mb = round(sum(Genome(cfg.genome).chroms.values()) / 1e6, 1)
    res = {
        "benchmark": "prepare",
        "metric": "windows_per_s",
        "windows": n,
        "span_bp": S,
        "cell_types": len(cfg.samples),
        "inputs": "2 stranded bigWig pairs + 1 BAM (pro-seq preset), "
                  f"{genome_mb:g} Mb genome, {n} regions",
        "repeats": a.repeats,
        "prepare_s": round(prep_s, 3),
        "naive_s": round(naive_s, 3),
        "prepare_windows_per_s": round(n / prep_s, 1),
        "naive_windows_per_s": round(n / naive_s, 1),
        "speedup": round(naive_s / prep_s, 2),
        "prepare_cpu_s": round(prep_cpu, 3),
        "naive_cpu_s": round(naive_cpu, 3),
        "cpu_time_ratio": round(naive_cpu / prep_cpu, 2),
        "prepare_s_all": [round(x[0], 3) for x in preps],
        "naive_s_all": [round(x[0], 3) for x in naives],
        "extract_only_s": round(ext_s, 3),
        "extract_only_cpu_s": round(ext_cpu, 3),
        "extract_only_speedup": round(naive_s / ext_s, 2),
        "naive_list_values_s": round(list_s, 3),
        "speedup_vs_list_values": round(list_s / prep_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_speedup": 10,
        "identical": identical,
        "workers": a.workers,
        "prepare": "seq2reads.data.store.prepare(cfg, workers) into a run folder without a dataset (the previous "
                   "repeat's removed untimed); includes reading the regions, Zarr compression and writes",
        "naive": "per region: pyfaidx fetch + pyBigWig.values(numpy=True) per strand/sample + pysam per-read loop; "
                 "arrays computed, not written (prepare's time includes compressing and writing the Zarr store); "
                 "naive_list_values: the same with pyBigWig's default list-returning values()",
        "written_mb_uncompressed": round(n * (S * 2 + len(cfg.samples) * 2 * S * 4) / 1e6, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".replace("  ", " "),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input_build_s": round(build_s, 1),
    }
    line = json.dumps(res)
    print(line)
    write_text_atomic(a.out, line + "\n")
    if not identical:
        print("ERROR: prepare and naive extraction differ", file=sys.stderr)
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
