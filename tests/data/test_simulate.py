"""The simulator: valid files, planted biology visible in the data, BAM = bigWig, determinism, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from seq2reads.data.simulate import load_truth, read_true_rates, simulate

STRANDS = ("plus", "minus")


@pytest.fixture(scope="module")
def truth(sim_dir):
    return load_truth(sim_dir / "truth.json")


def _bw_dense(path, chrom, start, end):
    import pyBigWig

    bw = pyBigWig.open(str(path))
    try:
        v = np.nan_to_num(np.asarray(bw.values(chrom, start, end, numpy=True), dtype=np.float64))
    finally:
        bw.close()
    return np.abs(v)


def _region_counts(sim_dir, truth, cell, half=1000):
    """Observed counts (R, 2, 2 * half) around every region centre, read from the bigWigs."""
    t = truth["tracks"][cell]
    out = np.zeros((len(truth["regions"]), 2, 2 * half))
    import pyBigWig

    bws = [pyBigWig.open(str(sim_dir / t[s])) for s in STRANDS]
    for i, r in enumerate(truth["regions"]):
        for s, bw in enumerate(bws):
            v = bw.values(r["chrom"], r["centre"] - half, r["centre"] + half, numpy=True)
            out[i, s] = np.abs(np.nan_to_num(v))
    for bw in bws:
        bw.close()
    return out


def test_files_exist_and_are_valid(sim_dir, truth):
    import pyBigWig
    import pyfaidx
    import pysam

    from seq2reads.config import load_config

    fa = pyfaidx.Fasta(str(sim_dir / "genome.fa"))
    assert (sim_dir / "genome.fa.fai").exists()
    assert list(fa.keys()) == list(truth["chroms"])
    seq = "".join(str(fa[c][:]) for c in fa.keys()).upper()
    assert set(seq) <= set("ACGTN")
    n_n = seq.count("N")
    assert 0 < n_n < 0.1 * len(seq)
    acgt = len(seq) - n_n
    gc = (seq.count("G") + seq.count("C")) / acgt
    assert 0.37 <= gc <= 0.46, gc
    cpg_oe = seq.count("CG") / acgt / ((seq.count("C") / acgt) * (seq.count("G") / acgt))
    assert cpg_oe < 0.6, cpg_oe  # CpG depletion

    cfg = load_config(sim_dir / "config.yaml")
    assert cfg.assay == "pro-cap" and Path(cfg.truth) == (sim_dir / "truth.json").resolve()
    assert cfg.cell_types == truth["cell_types"] and len(cfg.cell_types) == 3
    for sample in cfg.samples:
        for p in (sample.plus, sample.minus):
            bw = pyBigWig.open(p)
            assert bw.isBigWig() and bw.chroms() == truth["chroms"]
            bw.close()
    bam_cfg = load_config(sim_dir / "config.bam.yaml")
    assert bam_cfg.samples[0].bam and Path(bam_cfg.samples[0].bam).exists()
    with pysam.AlignmentFile(bam_cfg.samples[0].bam) as bam:
        assert bam.has_index() and dict(zip(bam.references, bam.lengths)) == truth["chroms"]

    # every split of the default config has regions, and train has most of them
    rows = [line.split("\t") for line in (sim_dir / "regions.bed").read_text().splitlines()]
    assert len(rows) == 300
    per = Counter(r[0] for r in rows)
    valid, test = set(cfg.splits.valid), set(cfg.splits.test)
    n_valid = sum(v for c, v in per.items() if c in valid)
    n_test = sum(v for c, v in per.items() if c in test)
    assert all(per[c] > 0 for c in valid | test)
    assert len(rows) - n_valid - n_test > 0.5 * len(rows)
    for r, reg in zip(rows, truth["regions"]):  # BED midpoint = region centre
        assert (int(r[1]) + int(r[2])) // 2 == reg["centre"] and r[3] == reg["name"]

    # the last cell type's minus strand is stored negative, the others positive
    for cell in truth["cell_types"]:
        bw = pyBigWig.open(str(sim_dir / truth["tracks"][cell]["minus"]))
        h = bw.header()
        bw.close()
        if cell == truth["negative_minus"]:
            assert h["maxVal"] <= 0 < -h["minVal"]
        else:
            assert h["minVal"] >= 0 < h["maxVal"]


def test_bam_reproduces_bigwig_counts(sim_dir, truth):
    """The BAM's read 5' ends (pro-cap: same strand as the RNA) equal the bigWig counts everywhere."""
    import pyBigWig
    import pysam

    cell = truth["bam"]["cell"]
    from_bam = Counter()
    with pysam.AlignmentFile(str(sim_dir / truth["bam"]["path"])) as bam:
        for read in bam.fetch():
            five = read.reference_end - 1 if read.is_reverse else read.reference_start
            from_bam[(read.reference_name, "minus" if read.is_reverse else "plus", five)] += 1
    from_bw = Counter()
    for s in STRANDS:
        bw = pyBigWig.open(str(sim_dir / truth["tracks"][cell][s]))
        for chrom in truth["chroms"]:
            for a, b, v in bw.intervals(chrom) or ():
                for p in range(a, b):
                    from_bw[(chrom, s, p)] += int(round(abs(v)))
        bw.close()
    assert sum(from_bw.values()) > 10_000
    assert from_bam == from_bw


COMP = str.maketrans("ACGT", "TGCA")


@pytest.fixture(scope="module")
def pwms(truth):
    """JASPAR ID -> log-odds (bits) (4, L), built from pyjaspar independently of the simulator."""
    from pyjaspar import jaspardb

    db = jaspardb(release="JASPAR2024")
    bg = np.array([0.295, 0.205, 0.205, 0.295])
    out = {}
    for m in truth["motifs"]:
        jm = db.fetch_motif_by_id(m["jaspar_id"])
        c = np.array([jm.counts[b] for b in "ACGT"], dtype=float)
        p = 0.99 * c / c.sum(0) + 0.0025
        out[m["jaspar_id"]] = np.log2(p / bg[:, None])
    return out


def rel_score(pwm, site: str) -> float:
    sc = sum(pwm["ACGT".index(b), j] for j, b in enumerate(site))
    lo, hi = pwm.min(0).sum(), pwm.max(0).sum()
    return (sc - lo) / (hi - lo)


def test_planted_instances_are_in_the_genome_and_score_high(sim_dir, truth, pwms):
    import pyfaidx

    fa = pyfaidx.Fasta(str(sim_dir / "genome.fa"))
    by_motif = Counter()
    for inst in truth["instances"]:
        genomic = str(fa[inst["chrom"]][inst["start"]:inst["end"]]).upper()
        site = genomic if inst["strand"] == "+" else genomic.translate(COMP)[::-1]
        assert site == inst["sequence"]
        assert rel_score(pwms[inst["motif_id"]], site) >= 0.8
        by_motif[inst["motif"]] += 1
    # every TF is planted; random genome positions rarely reach the planted score
    assert set(by_motif) == {m["name"] for m in truth["motifs"]}
    assert by_motif == Counter({m["name"]: m["n_instances"] for m in truth["motifs"]})
    assert by_motif["TBP"] == 2 * len(truth["regions"])
    rng = np.random.default_rng(0)
    chrom = "chr2"
    seq = str(fa[chrom][:]).upper()
    for m in truth["motifs"]:
        pwm = pwms[m["jaspar_id"]]
        L = pwm.shape[1]
        starts = rng.integers(20_000, len(seq) - 20_000, 300)
        rand = [rel_score(pwm, seq[a:a + L]) for a in starts if "N" not in seq[a:a + L]]
        assert np.mean(np.array(rand) >= 0.8) < 0.1, m["name"]
    # sites sit within ±90 bp of their region centre; specific motifs are missing from some regions
    centre = {r["name"]: r["centre"] for r in truth["regions"]}
    for inst in truth["instances"]:
        if inst["role"] != "core":
            c = centre[inst["region"]]
            assert c - 90 <= inst["start"] and inst["end"] <= c + 90
    specific = {m["name"] for m in truth["motifs"] if m["role"] == "specific"}
    none = [r for r in truth["regions"] if not any(r["motif_counts"][n] for n in specific)]
    assert len(none) > 0.2 * len(truth["regions"])


def test_every_strong_match_in_the_motif_zone_is_a_site(sim_dir, truth, pwms):
    """The rates are a function of the sequence: chance matches in the zone count like planted sites."""
    import pyfaidx

    fa = pyfaidx.Fasta(str(sim_dir / "genome.fa"))
    inst = {}
    for i in truth["instances"]:
        inst.setdefault((i["region"], i["motif"]), []).append(i)
    n_chance = Counter()
    for reg in truth["regions"][:60]:
        c = reg["centre"]
        zone = str(fa[reg["chrom"]][c - 90:c + 90]).upper()
        for m in truth["motifs"]:
            if m["role"] == "core":
                continue
            pwm, sites = pwms[m["jaspar_id"]], inst.get((reg["name"], m["name"]), [])
            L = pwm.shape[1]
            assert reg["motif_counts"][m["name"]] == len(sites)
            # recorded sites of one TF never overlap each other
            spans = sorted((i["start"], i["end"]) for i in sites)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
            n_chance[m["name"]] += sum(not i["planted"] for i in sites)
            for p in range(len(zone) - L + 1):
                site = zone[p:p + L]
                if max(rel_score(pwm, site), rel_score(pwm, site.translate(COMP)[::-1])) >= 0.8:
                    g = c - 90 + p
                    assert any(i["start"] < g + L and g < i["end"] for i in sites), (reg["name"], m["name"], g)
    assert sum(n_chance.values()) > 0  # the background does form sites by chance


def test_divergent_initiation_and_sequence_driven_tss(sim_dir, truth):
    cell = truth["cell_types"][0]
    obs = _region_counts(sim_dir, truth, cell, half=300)  # (R, 2, 600), centre at 300
    right, left = slice(301, 451), slice(150, 300)
    # plus strand initiates right of the centre, minus strand left of it, in nearly every region
    assert (obs[:, 0, right].sum(1) > 0).mean() > 0.9
    assert (obs[:, 1, left].sum(1) > 0).mean() > 0.9
    assert obs[:, 0, right].sum() > 4 * obs[:, 0, left].sum()
    assert obs[:, 1, left].sum() > 4 * obs[:, 1, right].sum()
    tata = {(i["region"], i["strand"]): i for i in truth["instances"] if i["motif"] == "TBP"}
    for reg in truth["regions"][:50]:
        rate = read_true_rates(truth, cell, reg["chrom"], reg["centre"] - 1000, reg["centre"] + 1000)
        t, u = reg["tss"]["plus"], reg["tss"]["minus"]
        # the rate peaks at the TSS, which sits at a fixed offset from its TATA box
        assert int(np.argmax(rate[0])) + reg["centre"] - 1000 == t
        assert int(np.argmax(rate[1])) + reg["centre"] - 1000 == u
        assert tata[(reg["name"], "+")]["start"] == t - 31 and tata[(reg["name"], "-")]["end"] == u + 32
        # pause peak 30-60 bp downstream on each strand: a local maximum of the rate there
        pp, pm = reg["pause"]["plus"] - reg["centre"] + 1000, reg["pause"]["minus"] - reg["centre"] + 1000
        assert 30 <= reg["pause"]["plus"] - t <= 60 and 30 <= u - reg["pause"]["minus"] <= 60
        assert rate[0, pp] == rate[0, pp - 8:pp + 9].max() > 3 * rate[0, pp + 20]
        assert rate[1, pm] == rate[1, pm - 8:pm + 9].max() > 3 * rate[1, pm - 20]
        # the rates integrate to the recorded expected total plus background
        bg = truth["background_rate"] * 2 * 2000
        assert rate.sum() == pytest.approx(reg["expected_total"][cell] + bg, rel=2e-3)


def test_counts_are_overdispersed(sim_dir, truth):
    """Per-base counts vary more than Poisson, as the documented Negative Binomial says."""
    cell = truth["cell_types"][1]
    obs = _region_counts(sim_dir, truth, cell)
    mu = np.stack([read_true_rates(truth, cell, r["chrom"], r["centre"] - 1000, r["centre"] + 1000)
                   for r in truth["regions"]]).astype(np.float64)
    sel = (mu > 2) & (mu < 100)
    assert sel.sum() > 1000
    sq = ((obs[sel] - mu[sel]) ** 2).sum()
    assert sq / mu[sel].sum() > 1.5  # Poisson would give 1
    r = truth["dispersion"]
    assert sq / (mu[sel] + mu[sel] ** 2 / r).sum() == pytest.approx(1.0, abs=0.2)
    # the replicate is an independent draw of the same rates
    rep = {s: truth["replicates"][cell][s] for s in STRANDS}
    truth2 = {**truth, "tracks": {cell: rep}}
    obs2 = _region_counts(sim_dir, truth2, cell)
    assert not np.array_equal(obs, obs2)
    diff = ((obs[sel] - obs2[sel]) ** 2 / 2).sum()
    assert diff / ((obs[sel] + obs2[sel]) / 2).sum() > 1.5


def test_cell_type_specific_motif_acts_only_in_its_cell_type(sim_dir, truth):
    cells = truth["cell_types"]
    totals = np.stack([_region_counts(sim_dir, truth, c).sum((1, 2)) for c in cells], axis=1)  # (R, C)
    for m in truth["motifs"]:
        if m["role"] != "specific":
            continue
        has = np.array([r["motif_counts"][m["name"]] > 0 for r in truth["regions"]])
        assert 20 < has.sum() < len(has) - 20
        for j, c in enumerate(cells):
            ratio = totals[has, j].mean() / totals[~has, j].mean()
            if c in m["cell_types"]:
                assert ratio > 2.0, (m["name"], c, ratio)
            else:
                assert 0.6 < ratio < 1.6, (m["name"], c, ratio)


def test_deterministic_for_a_seed(tmp_path):
    import pyBigWig

    a = simulate(tmp_path / "a", seed=7, n_cell_types=2, n_regions=12, replicate=False)
    b = simulate(tmp_path / "b", seed=7, n_cell_types=2, n_regions=12, replicate=False)
    c = simulate(tmp_path / "c", seed=8, n_cell_types=2, n_regions=12, replicate=False)
    for name in ("genome.fa", "regions.bed", "truth.json", "config.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "genome.fa").read_bytes() != (c / "genome.fa").read_bytes()
    t = json.loads((a / "truth.json").read_text())
    for cell in t["cell_types"]:
        for s in STRANDS:
            ba, bb = (pyBigWig.open(str(d / t["tracks"][cell][s])) for d in (a, b))
            for chrom in t["chroms"]:
                assert ba.intervals(chrom) == bb.intervals(chrom)
            ba.close()
            bb.close()


def test_cli_simulate_and_bad_input(tmp_path, capsys):
    from seq2reads.cli import main
    from seq2reads.config import load_config
    from seq2reads.errors import UserError

    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--seed", "3", "--cell-types", "1", "--regions", "10"]) == 0
    assert load_config(out / "config.yaml").cell_types == ["erythroid"]
    # re-simulating into a previous simulation replaces it
    assert main(["simulate", "--out", str(out), "--seed", "4", "--cell-types", "2", "--regions", "10"]) == 0
    assert len(load_config(out / "config.yaml").samples) == 2
    capsys.readouterr()

    cases = [
        (["--cell-types", "0"], "--cell-types"),
        (["--cell-types", "99"], "--cell-types"),
        (["--regions", "3"], "--regions"),
    ]
    for extra, word in cases:
        bad = tmp_path / f"bad{len(extra[1])}{extra[0]}"
        assert main(["simulate", "--out", str(bad), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert word in err and len(err.splitlines()) == 1
        assert not bad.exists()
    # a folder with other files is never overwritten; a file is not a folder
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["simulate", "--out", str(mine), "--regions", "10"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["simulate", "--out", str(f), "--regions", "10"]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(UserError, match="dispersoin.*dispersion"):
        simulate(tmp_path / "x", n_regions=10, dispersoin=3.0)
    assert not list(tmp_path.glob(".*tmp*"))


def test_truth_helpers(sim_dir, truth, tmp_path):
    from seq2reads.errors import UserError

    cell = truth["cell_types"][0]
    # off the chromosome and on an unknown chromosome the rate is 0; on N it is 0; elsewhere >= background
    chrom = "chr1"
    length = truth["chroms"][chrom]
    r = read_true_rates(truth, cell, chrom, length - 10, length + 10)
    assert r.shape == (2, 20) and (r[:, 10:] == 0).all()
    assert (read_true_rates(truth, cell, "chrUn", 0, 5) == 0).all()
    a, b = truth["n_runs"][chrom][0]
    assert (read_true_rates(truth, cell, chrom, a, b) == 0).all()
    assert (read_true_rates(truth, cell, chrom, b, b + 100) >= truth["background_rate"] * 0.999).all()
    with pytest.raises(UserError, match="cell type"):
        read_true_rates(truth, "nope", chrom, 0, 5)
    with pytest.raises(UserError, match="not found"):
        load_truth(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(UserError, match="not a seq2reads simulation"):
        load_truth(tmp_path / "other.json")
    roles = {m["name"]: m["role"] for m in truth["motifs"]}
    assert roles["TBP"] == "core" and roles["REST"] == "repressor"
    assert sum(r == "specific" for r in roles.values()) == 3 and sum(r == "shared" for r in roles.values()) == 4
