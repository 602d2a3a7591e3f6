"""prepare / open_dataset on hand-made FASTA (plain + bgzip), bigWig pairs and a BAM; bad inputs via the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyBigWig
import pyfaidx
import pysam
import pytest
import yaml

from seq2reads.cli import main
from seq2reads.config import load_config
from seq2reads.data.genome import codes_from_str
from seq2reads.data.store import open_dataset, prepare
from seq2reads.errors import UserError
from tests.data.test_genome import bgzip, write_fasta

CHROM_LENS = {"chr1": 30_000, "chr2": 24_000, "chr3": 20_000, "chr4": 16_000}
BASES = np.array(list("ACGT"))


def random_genome(rng, lens=CHROM_LENS, n_run=("chr2", 5000, 5300)):
    seqs = {c: "".join(rng.choice(BASES, size=n)) for c, n in lens.items()}
    if n_run:
        c, a, b = n_run
        seqs[c] = seqs[c][:a] + "N" * (b - a) + seqs[c][b:]
    # soft-masked (lower-case) stretch: must read like upper case
    seqs["chr1"] = seqs["chr1"][:100] + seqs["chr1"][100:400].lower() + seqs["chr1"][400:]
    return seqs


def write_bigwig(path, lens, values_by_chrom, sign=1.0):
    """bigWig with per-base values (zeros skipped); ``sign=-1`` stores negative values."""
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(list(lens.items()))
    for c in lens:
        v = values_by_chrom.get(c)
        if v is None:
            continue
        nz = np.nonzero(v)[0]
        if len(nz):
            bw.addEntries(c, nz.astype(np.int64).tolist(), values=(sign * v[nz]).astype(float).tolist(), span=1)
    bw.close()
    return str(path)


def random_signal(rng, lens, rate=0.05):
    return {c: rng.poisson(rate, size=n).astype(np.float32) * rng.integers(1, 4, size=n) for c, n in lens.items()}


def write_bam(path, lens, reads):
    """Sorted, indexed BAM. ``reads``: (chrom, pos, cigar, is_reverse, mapq, flag_extra)."""
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": c, "LN": n} for c, n in lens.items()]}
    tmp = str(path) + ".unsorted.bam"
    names = list(lens)
    with pysam.AlignmentFile(tmp, "wb", header=header) as f:
        for i, (chrom, pos, cigar, rev, mapq, extra) in enumerate(reads):
            a = pysam.AlignedSegment(f.header)
            a.query_name = f"r{i}"
            a.reference_id = names.index(chrom)
            a.reference_start = pos
            a.cigarstring = cigar
            qlen = sum(int(n) for n, op in _cigar_ops(cigar) if op in "MIS=X")
            a.query_sequence = "A" * qlen
            a.query_qualities = pysam.qualitystring_to_array("I" * qlen)
            a.flag = (16 if rev else 0) | extra
            a.mapping_quality = mapq
            f.write(a)
    pysam.sort("-o", str(path), tmp)
    pysam.index(str(path))
    return str(path)


def _cigar_ops(cigar):
    import re

    return re.findall(r"(\d+)([MIDNSHP=X])", cigar)


def make_inputs(tmp_path, seed=0, n_regions=60, compress=False, bam=True, narrowpeak=True, exclude=True,
                replicate=True):
    """Genome, two bigWig samples (one with minus stored negative, one with a replicate), a BAM sample,
    regions and a config.yaml; returns (config path, dict of raw arrays)."""
    rng = np.random.default_rng(seed)
    seqs = random_genome(rng)
    fa = write_fasta(tmp_path / "genome.fa", seqs)
    if compress:
        fa = bgzip(fa)
    sig = {}
    samples = []
    for k, name in enumerate(["A", "B"]):
        p, m = random_signal(rng, CHROM_LENS), random_signal(rng, CHROM_LENS)
        del m["chr4"]  # a track without data on one chromosome
        sig[name] = (p, m)
        samples.append({"name": name,
                        "plus": write_bigwig(tmp_path / f"{name}.plus.bw", CHROM_LENS, p),
                        "minus": write_bigwig(tmp_path / f"{name}.minus.bw", CHROM_LENS, m, sign=-1.0 if k == 0 else 1.0)})
    if replicate:
        rp, rm = random_signal(rng, CHROM_LENS), random_signal(rng, CHROM_LENS)
        sig["A_rep"] = (rp, rm)
        samples[0]["replicates"] = [{"plus": write_bigwig(tmp_path / "A2.plus.bw", CHROM_LENS, rp),
                                     "minus": write_bigwig(tmp_path / "A2.minus.bw", CHROM_LENS, rm)}]
    if bam:
        reads = []
        for c, n in CHROM_LENS.items():
            for pos in np.sort(rng.integers(0, n - 60, size=n // 40)):
                reads.append((c, int(pos), rng.choice(["36M", "10M5D26M", "5S31M", "12M200N24M"]), bool(rng.random() < 0.5),
                              int(rng.integers(0, 60)), 0))
        samples.append({"name": "C", "bam": write_bam(tmp_path / "C.bam", CHROM_LENS, reads)})
    lines = []
    for i in range(n_regions):
        c = rng.choice(list(CHROM_LENS))
        s = int(rng.integers(0, CHROM_LENS[c] - 400))
        e = s + int(rng.integers(100, 400))
        if narrowpeak:
            summit = int(rng.integers(0, e - s)) if i % 3 else -1
            lines.append(f"{c}\t{s}\t{e}\tpeak{i}\t0\t.\t1.0\t-1\t-1\t{summit}")
        else:
            lines.append(f"{c}\t{s}\t{e}\tpeak{i}")
    (tmp_path / "regions.bed").write_text("track name=x\n" + "\n".join(lines) + "\n")
    cfg = {"run_dir": "run", "genome": str(fa), "regions": "regions.bed", "assay": "pro-cap",
           "samples": samples, "window": {"input": 200, "output": 100, "jitter": 10},
           "splits": {"valid": ["chr3"], "test": ["chr4"]}, "background": {"ratio": 0.5}}
    if exclude:
        (tmp_path / "exclude.bed").write_text("chr1\t1000\t1500\nchr2\t200\t260\n")
        cfg["exclude"] = "exclude.bed"
    # paths relative to the config's folder, so that a copied folder is self-contained
    cfg["genome"] = Path(cfg["genome"]).name
    for s in samples:
        for k in ("plus", "minus", "bam"):
            if k in s:
                s[k] = Path(s[k]).name
        for r in s.get("replicates", []):
            for k in ("plus", "minus"):
                r[k] = Path(r[k]).name
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, {"seqs": seqs, "signal": sig}


def test_prepare_matches_direct_reads(tmp_path):
    cfg_path, raw = make_inputs(tmp_path)
    cfg = load_config(cfg_path)
    out = prepare(cfg, progress=False)
    assert out == tmp_path / "run" / "dataset"
    assert (tmp_path / "run" / "config.yaml").exists()
    ds = open_dataset(tmp_path / "run")
    S = 200 + 2 * 10
    W = len(ds.regions)
    assert ds.seq.shape == (W, S) and ds.signal.shape == (W, 3, 2, S) and ds.mask.shape == (W, S)
    assert ds.samples == ["A", "B", "C"] and ds.span == S and ds.input_len == 200 and ds.output_len == 100
    assert set(ds.regions["kind"]) == {"peak", "background"}
    assert (ds.regions["kind"] == "peak").sum() == 60
    assert ds.replicate_signal is not None and ds.has_replicate == [True, False, False]
    assert set(ds.regions.loc[ds.regions.chrom == "chr4", "split"]) == {"test"}
    assert set(ds.regions.loc[ds.regions.chrom == "chr3", "split"]) == {"valid"}
    np.testing.assert_array_equal(ds.indices("test", ("peak",)),
                                  np.nonzero(((ds.regions.split == "test") & (ds.regions.kind == "peak")).to_numpy())[0])
    fa = pyfaidx.Fasta(str(cfg.genome))
    bws = {s.name: (pyBigWig.open(s.plus), pyBigWig.open(s.minus)) for s in cfg.samples if s.plus}
    rng = np.random.default_rng(1)
    for w in rng.choice(W, size=25, replace=False):
        r = ds.regions.iloc[w]
        s, e, c = int(r.start), int(r.end), r.chrom
        L = len(fa[c])
        lo, hi = max(s, 0), min(e, L)
        expect = np.full(S, 4, np.uint8)
        expect[lo - s : hi - s] = codes_from_str(str(fa[c][lo:hi]))
        np.testing.assert_array_equal(ds.seq[w], expect)
        for k, name in enumerate(["A", "B"]):
            for strand in range(2):
                v = np.zeros(S, np.float32)
                if c in bws[name][strand].chroms() and hi > lo:
                    v[lo - s : hi - s] = np.abs(np.nan_to_num(np.array(bws[name][strand].values(c, lo, hi))))
                np.testing.assert_array_equal(ds.signal[w][k, strand], v)
        # the BAM sample (pro-cap: read 5' end, same strand), counted read by read with pysam
        v = np.zeros((2, S), np.float32)
        with pysam.AlignmentFile(cfg.samples[2].bam) as bam:
            for a in bam.fetch(c, lo, hi):
                p = a.reference_end - 1 if a.is_reverse else a.reference_start
                if s <= p < e:
                    v[int(a.is_reverse), p - s] += 1
        np.testing.assert_array_equal(ds.signal[w][2], v)
    # mask: N run, exclude intervals and past-end positions are False
    reg = ds.regions
    for w in range(W):
        r = reg.iloc[w]
        pos = np.arange(r.start, r.end)
        L = len(fa[r.chrom])
        bad = (pos < 0) | (pos >= L) | (ds.seq[w] == 4)
        if r.chrom == "chr1":
            bad |= (pos >= 1000) & (pos < 1500)
        if r.chrom == "chr2":
            bad |= (pos >= 200) & (pos < 260)
        np.testing.assert_array_equal(ds.mask[w], ~bad)
    # background: away from peaks and N runs, GC recorded
    bg = reg[reg.kind == "background"]
    assert len(bg) > 0 and (ds.seq[np.nonzero((reg.kind == "background").to_numpy())[0]] != 4).all()
    gc = ds.regions["gc"].to_numpy()
    assert np.isfinite(gc).all() and ((gc >= 0) & (gc <= 1)).all()
    # count stats over train peaks, output window
    sel = np.nonzero(((reg.kind == "peak") & (reg.split == "train")).to_numpy())[0]
    lo = (S - 100) // 2
    tot = np.asarray(ds.signal[sel])[..., lo : lo + 100].sum(axis=(2, 3))
    assert ds.attrs["count_stats"]["A"]["mean"] == pytest.approx(tot[:, 0].mean(), rel=1e-5)
    assert ds.attrs["count_stats"]["C"]["median"] == pytest.approx(np.median(tot[:, 2]), rel=1e-5)
    mem = ds.load()
    assert isinstance(mem.signal, np.ndarray)
    np.testing.assert_array_equal(mem.signal[sel], np.asarray(ds.signal[sel]))


# -- bad input through the command line ---------------------------------------------------------
def _edit_config(path, **changes):
    cfg = yaml.safe_load(path.read_text())
    for k, v in changes.items():
        if k.startswith("sample0_"):
            cfg["samples"][0][k[len("sample0_"):]] = v
        elif k.startswith("sample2_"):
            cfg["samples"][2][k[len("sample2_"):]] = v
        else:
            cfg[k] = v
    path.write_text(yaml.safe_dump(cfg))


def _renamed_bigwig(tmp_path):
    lens = {c.removeprefix("chr"): n for c, n in CHROM_LENS.items()}
    return write_bigwig(tmp_path / "renamed.bw", lens, {"1": np.ones(30_000, np.float32)})


def _plain_gzip_genome(tmp_path):
    import gzip

    out = tmp_path / "genome.gz.fa.gz"
    with gzip.open(out, "wt") as f:
        f.write((tmp_path / "genome.fa").read_text())
    return str(out)


BAD_INPUTS = {
    "regions chr1 vs 1": (lambda d: (d / "regions.bed").write_text("1\t100\t300\n2\t500\t900\n"),
                          r"names differ.*'1'.*'chr1'"),
    "track chr1 vs 1": (lambda d: _edit_config(d / "config.yaml", sample0_plus=_renamed_bigwig(d),
                                               sample0_minus=_renamed_bigwig(d)), r"names differ.*'1'"),
    "region on missing chromosome": (lambda d: (d / "regions.bed").write_text("chr1\t100\t300\nchrUn_x\t5\t50\n"),
                                     r"lacks.*'chrUn_x'"),
    "empty regions": (lambda d: (d / "regions.bed").write_text(""), "no regions"),
    "malformed regions": (lambda d: (d / "regions.bed").write_text("chr1\t100\t300\nchr1\tten\t300\n"), "line 2"),
    "missing file": (lambda d: _edit_config(d / "config.yaml", sample0_plus=str(d / "nope.bw")), "not found"),
    "missing genome": (lambda d: _edit_config(d / "config.yaml", genome=str(d / "nope.fa")), "not found"),
    "not a bigWig": (lambda d: _edit_config(d / "config.yaml", sample0_plus=str(d / "regions.bed")), "not a bigWig"),
    "not a BAM": (lambda d: _edit_config(d / "config.yaml", sample2_bam=str(d / "A.plus.bw")), "not a BAM"),
    "not a FASTA": (lambda d: _edit_config(d / "config.yaml", genome=str(d / "A.plus.bw")), "not a FASTA"),
    "gzip not bgzip FASTA": (lambda d: _edit_config(d / "config.yaml", genome=_plain_gzip_genome(d)), "bgzip"),
    "BAM without index": (lambda d: (d / "C.bam.bai").unlink(), "samtools index"),
    "config typo": (lambda d: _edit_config(d / "config.yaml", windw={"input": 100}), "Did you mean 'window'"),
    "no training regions": (lambda d: _edit_config(d / "config.yaml", splits={"valid": ["chr1", "chr2"],
                                                                              "test": ["chr3", "chr4"]}),
                            "training chromosome"),
    "splits on absent chromosomes": (lambda d: _edit_config(d / "config.yaml", splits={"valid": ["8"], "test": ["4"]}),
                                     "splits.valid"),
}


@pytest.fixture(scope="module")
def bad_input_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    make_inputs(d, n_regions=8, replicate=False)
    return d


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2(case, bad_input_template, tmp_path, capsys):
    import re
    import shutil

    d = tmp_path / "in"
    shutil.copytree(bad_input_template, d)
    change, match = BAD_INPUTS[case]
    change(d)
    rc = main(["prepare", str(d / "config.yaml")])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and err.startswith("seq2reads prepare: error:")
    assert re.search(match, err), err
    assert not (d / "run" / "dataset").exists()
    assert not list((d / "run").glob(".dataset*")) if (d / "run").exists() else True


def test_region_past_chromosome_end(tmp_path, caplog):
    make_inputs(tmp_path, n_regions=4, bam=False, replicate=False, exclude=False)
    L = CHROM_LENS["chr2"]
    with open(tmp_path / "regions.bed", "a") as f:
        f.write(f"chr2\t{L - 30}\t{L}\tend\nchr3\t0\t20\tstart\n")
    assert main(["prepare", str(tmp_path / "config.yaml")]) == 0
    warned = [r.getMessage() for r in caplog.records if "past a chromosome end" in r.getMessage()]
    assert len(warned) == 1 and "2 region window(s) extend past a chromosome end" in warned[0]
    ds = open_dataset(tmp_path / "run")
    assert ds.attrs["n_past_chrom_end"] == 2
    S = ds.span
    for name, chrom in (("end", "chr2"), ("start", "chr3")):
        w = int(np.nonzero((ds.regions["name"] == name).to_numpy())[0][0])
        r = ds.regions.iloc[w]
        pos = np.arange(r.start, r.end)
        outside = (pos < 0) | (pos >= CHROM_LENS[chrom])
        assert outside.any() and len(pos) == S
        assert (ds.seq[w][outside] == 4).all() and (ds.seq[w][~outside] != 4).all()
        assert (ds.signal[w][..., outside] == 0).all()
        assert not ds.mask[w][outside].any() and ds.mask[w][~outside].all()


def test_empty_split_warns(tmp_path, caplog):
    make_inputs(tmp_path, n_regions=6, bam=False, replicate=False)
    _edit_config(tmp_path / "config.yaml", splits={"valid": ["chrX"], "test": ["chr4"]})  # chrX: not in genome
    assert main(["prepare", str(tmp_path / "config.yaml")]) == 2  # no valid chromosome in the genome at all
    _edit_config(tmp_path / "config.yaml", splits={"valid": ["chr3", "chrX"], "test": ["chr4"]})
    (tmp_path / "regions.bed").write_text("chr1\t100\t300\nchr2\t100\t300\nchr4\t100\t300\n")
    assert main(["prepare", str(tmp_path / "config.yaml")]) == 0
    assert any("no region lies on the valid chromosomes" in r.getMessage() for r in caplog.records)


def test_prepare_bgzip_genome_and_rerun_replaces(tmp_path):
    cfg_path, raw = make_inputs(tmp_path, n_regions=10, bam=False, replicate=False, compress=True)
    cfg = load_config(cfg_path)
    prepare(cfg, progress=False)
    first = open_dataset(cfg.run_dir)
    fa = pyfaidx.Fasta(str(tmp_path / "genome.fa"))
    for w in range(0, len(first.regions), 3):
        r = first.regions.iloc[w]
        lo, hi = max(int(r.start), 0), min(int(r.end), len(fa[r.chrom]))
        np.testing.assert_array_equal(first.seq[w][lo - r.start : hi - r.start], codes_from_str(str(fa[r.chrom][lo:hi])))
    # a second prepare replaces the dataset atomically (no leftovers)
    prepare(cfg, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "dataset"]
    with pytest.raises(UserError, match="no prepared dataset"):
        open_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_parallel_chunked_equals_serial(tmp_path, monkeypatch, start_method):
    """Several tasks (small chunks) in 2 worker processes give exactly the serial result."""
    from seq2reads.data import store as store_mod

    cfg_path, raw = make_inputs(tmp_path, n_regions=40, bam=True, replicate=True)
    monkeypatch.setattr(store_mod, "TARGET_CHUNK_BYTES", 1)  # 8-row chunks, 32-row tasks
    monkeypatch.setattr(store_mod, "_start_method", lambda: start_method)  # fork unless torch is loaded
    serial = load_config(cfg_path, ["run_dir=serial"])
    par = load_config(cfg_path, ["run_dir=parallel"])
    prepare(serial, workers=0, progress=False)
    prepare(par, workers=2, progress=False)
    a, b = open_dataset(serial.run_dir), open_dataset(par.run_dir)
    assert a.attrs["chunk_rows"] == 8 and len(a) > 32
    for k in ("seq", "signal", "mask", "replicate_signal"):
        np.testing.assert_array_equal(np.asarray(getattr(a, k)[...]), np.asarray(getattr(b, k)[...]))
    assert a.attrs["count_stats"] == b.attrs["count_stats"]
    # the mask's all-True chunks are not written (True is its fill value) and still read as True
    mask = np.asarray(a.mask[...])
    chunk_files = [p.name for p in (serial.run_path / "dataset" / "mask").iterdir() if p.name != "zarr.json"]
    assert len(chunk_files) < -(-len(a) // 8)
    for w in range(len(a)):
        r = a.regions.iloc[w]
        pos = np.arange(r.start, r.end)
        bad = (pos < 0) | (pos >= CHROM_LENS[r.chrom]) | (np.asarray(a.seq[w]) == 4)
        bad |= {"chr1": (pos >= 1000) & (pos < 1500), "chr2": (pos >= 200) & (pos < 260)}.get(r.chrom, False)
        np.testing.assert_array_equal(mask[w], ~bad)
    # replicate = the replicate bigWigs of sample A, zeros for samples without one
    rep = np.asarray(a.replicate_signal[...])
    assert (rep[:, 1:] == 0).all()
    rp, rm = raw["signal"]["A_rep"]
    for w in range(0, len(a), 7):
        r = a.regions.iloc[w]
        lo, hi = max(int(r.start), 0), min(int(r.end), CHROM_LENS[r.chrom])
        exp = np.zeros((2, a.span), np.float32)
        exp[0, lo - r.start : hi - r.start] = rp[r.chrom][lo:hi]
        exp[1, lo - r.start : hi - r.start] = rm[r.chrom][lo:hi]
        np.testing.assert_array_equal(rep[w, 0], exp)


def test_chunk_files_match_zarr(tmp_path, monkeypatch):
    """The chunk paths and Blosc settings that workers write with (computed before the arrays exist)
    are those of the arrays zarr creates, and every chunk file written is one zarr reads."""
    import zarr

    from seq2reads.data import store as store_mod

    cfg_path, _ = make_inputs(tmp_path, n_regions=40, bam=True, replicate=True)
    monkeypatch.setattr(store_mod, "TARGET_CHUNK_BYTES", 1)  # 8-row chunks: several files per array
    cfg = load_config(cfg_path)
    ds = prepare(cfg, workers=2, progress=False)
    attrs = open_dataset(cfg.run_dir).attrs
    for name in ("seq", "signal", "mask", "replicate_signal"):
        a = zarr.open_array(str(ds / name), mode="r")
        files, codec, skip = store_mod._chunk_files(str(ds), name, a.shape, str(a.dtype), attrs["chunk_rows"])
        rest = (0,) * (a.ndim - 1)
        assert files == [f"{ds}/{name}/{a.metadata.encode_chunk_key((i, *rest))}" for i in range(len(files))]
        assert len(files) == -(-a.shape[0] // a.chunks[0])
        (blosc,) = a.compressors
        assert (codec["cname"], codec["clevel"], codec["typesize"]) == (blosc.cname.value, blosc.clevel, blosc.typesize)
        assert codec["shuffle"] == {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[blosc.shuffle.value]
        assert skip == (a.fill_value if name in store_mod.SKIP_FILL_CHUNKS else None)
        on_disk = {str(p) for p in (ds / name).iterdir() if p.name != "zarr.json"}
        assert on_disk <= set(files) and (on_disk or name == "mask")  # all-True mask chunks: no file


def test_metadata_is_zarrs_own(tmp_path, monkeypatch):
    """prepare writes the arrays' and groups' zarr.json by hand: each document equals the one zarr
    writes when it creates the same array, and every region column reads back through zarr (edge
    chunks padded as zarr pads them)."""
    import json

    import zarr
    from zarr.codecs import BloscCodec

    from seq2reads.data import store as store_mod

    cfg_path, _ = make_inputs(tmp_path, n_regions=40, bam=True, replicate=True)
    monkeypatch.setattr(store_mod, "TARGET_CHUNK_BYTES", 1)  # several data chunks
    monkeypatch.setattr(store_mod, "REGION_CHUNK_ROWS", 16)  # several region chunks, the last partial
    cfg = load_config(cfg_path)
    ds = prepare(cfg, workers=0, progress=False)
    opened = open_dataset(cfg.run_dir)
    ref = zarr.open_group(str(tmp_path / "ref"), mode="w", zarr_format=3)
    keys = {"name": "default", "separator": "."}
    for name in ("seq", "signal", "mask", "replicate_signal"):
        a = zarr.open_array(str(ds / name), mode="r")
        ref.create_array(name, shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=store_mod.FILL[name],
                         compressors=[BloscCodec(**store_mod.BLOSC[name])], chunk_key_encoding=keys)
    regs = ref.require_group("regions")
    W = len(opened)
    assert W > 16 and W % 16
    for c in store_mod.REGION_COLUMNS:
        dtype = str if c in store_mod._STR_COLUMNS else ("float32" if c == "gc" else "int64")
        regs.create_array(c, shape=(W,), chunks=(16,), dtype=dtype, chunk_key_encoding=keys)
        got = zarr.open_array(str(ds / "regions" / c), mode="r")[...]
        want = opened.regions[c].to_numpy()
        np.testing.assert_array_equal(got.astype(object) if c in store_mod._STR_COLUMNS else got, want)
    for rel in ("seq", "signal", "mask", "replicate_signal", "regions", *(f"regions/{c}" for c in store_mod.REGION_COLUMNS)):
        ours = json.loads((ds / rel / "zarr.json").read_text())
        zarrs = json.loads((tmp_path / "ref" / rel / "zarr.json").read_text())
        assert ours == zarrs, rel
    root = json.loads((ds / "zarr.json").read_text())
    assert root["node_type"] == "group" and root["zarr_format"] == 3 and root["attributes"] == opened.attrs
    assert len(list((ds / "regions" / "name").glob("c.*"))) == -(-W // 16)


def test_dense_reads_equal_sparse_reads(tmp_path, monkeypatch):
    """bigWigs read densely (pyBigWig values over blocks) and sparsely (entries scattered into the
    windows) give the same store; so do a read-end BAM and the same BAM read block by block; and many
    small tasks in one process (reusing one zeroed buffer) give what one task gives."""
    from seq2reads.data import store as store_mod
    from seq2reads.data import tracks as tracks_mod

    cfg_path, _ = make_inputs(tmp_path, n_regions=40, bam=True, replicate=True)
    runs = {k: load_config(cfg_path, [f"run_dir={k}"]) for k in ("one_task", "sparse", "dense")}
    prepare(runs["one_task"], workers=0, progress=False)
    monkeypatch.setattr(store_mod, "TARGET_CHUNK_BYTES", 1)  # 8-row chunks, 32-row tasks
    prepare(runs["sparse"], workers=0, progress=False)
    monkeypatch.setattr(tracks_mod, "SPARSE_MAX_COVERED", 0.0)
    monkeypatch.setattr(tracks_mod.BamTrack, "sparse", property(lambda self: False))
    monkeypatch.setattr(store_mod, "MAX_GAP", 0)  # more, smaller blocks
    prepare(runs["dense"], workers=0, progress=False)
    a = open_dataset(runs["one_task"].run_dir)
    for other in ("sparse", "dense"):
        b = open_dataset(runs[other].run_dir)
        for k in ("seq", "signal", "mask", "replicate_signal"):
            np.testing.assert_array_equal(np.asarray(getattr(a, k)[...]), np.asarray(getattr(b, k)[...]))
        assert a.attrs["count_stats"] == b.attrs["count_stats"]
