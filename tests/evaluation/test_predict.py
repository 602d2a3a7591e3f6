"""``predict``: tiled, stitched expected-count bigWigs, and its bad-input cases through the CLI."""

from __future__ import annotations

import numpy as np
import pyBigWig
import pytest

from seq2reads import cli
from seq2reads.data.genome import Genome
from seq2reads.evaluation.predict import expected_counts, inference_model, load_trained_model, predict, predict_windows


def _test_chrom(cfg):
    g = Genome(cfg.genome)
    chrom = next(c for c in cfg.splits.test if c in g.chroms)
    return g, chrom, g.chroms[chrom]


def _window_expected(model, genome, chrom, out_start, cfg):
    """Expected counts (C, 2, L_out) of the single window whose output starts at ``out_start``."""
    Lin, Lout = cfg.window.input, cfg.window.output
    x = genome.one_hot(chrom, out_start - (Lin - Lout) // 2, out_start - (Lin - Lout) // 2 + Lin)[None]
    logits, logc = predict_windows(model, x)
    return expected_counts(logits, logc)[0]


def _bw_values(path, chrom, start, end):
    with pyBigWig.open(str(path)) as bw:
        return np.asarray(bw.values(chrom, start, end, numpy=True))


def test_predict_regions_stitches_centre_crops(bpnet_run, tmp_path):
    cfg = bpnet_run
    genome, chrom, length = _test_chrom(cfg)
    Lout = cfg.window.output
    step = Lout // 2
    a = min(1000, length // 4)
    b = a + 3 * Lout + 17  # not a multiple of the step: the last piece is cut
    bed = tmp_path / "regions.bed"
    # two overlapping lines: merged into one interval [a, b)
    bed.write_text(f"{chrom}\t{a}\t{a + Lout}\tr1\n{chrom}\t{a + 100}\t{b}\tr2\n")
    out = tmp_path / "pred"
    assert cli.main(["predict", str(cfg.run_path), "--regions", str(bed), "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"{c}.{s}.bw" for c in cfg.cell_types for s in ("plus", "minus"))

    model = inference_model(cfg, load_trained_model(cfg.run_path, "cpu"))  # reverse-complement averaged
    lead = (Lout - step) // 2
    # tile 1 keeps [a + step, a + 2 * step): the centre of the window whose output starts `lead` bp earlier
    k0 = a + step
    want = _window_expected(model, genome, chrom, k0 - lead, cfg)[:, :, lead : lead + step]
    # the last (cut) tile keeps [k_last, b)
    k_last = a + ((b - a - 1) // step) * step
    want_last = _window_expected(model, genome, chrom, k_last - lead, cfg)[:, :, lead : lead + (b - k_last)]
    for ci, cell in enumerate(cfg.cell_types):
        for si, strand in enumerate(("plus", "minus")):
            path = out / f"{cell}.{strand}.bw"
            with pyBigWig.open(str(path)) as bw:
                assert bw.chroms() == genome.chroms
            v = _bw_values(path, chrom, a, b)
            assert np.isfinite(v).all() and (v >= 0).all()  # every base covered, counts >= 0
            assert np.isnan(_bw_values(path, chrom, b, b + 50)).all()  # nothing outside the regions
            np.testing.assert_allclose(v[k0 - a : k0 - a + step], want[ci, si], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(v[k_last - a :], want_last[ci, si], rtol=1e-4, atol=1e-6)


def test_predict_genome_wide_covers_every_chromosome(bpnet_run, tmp_path):
    """Genome-wide tiling on a tiny two-chromosome genome (the model does not care which genome)."""
    rng = np.random.default_rng(0)
    fa = tmp_path / "tiny.fa"
    sizes = {"chrA": 1500, "chrB": 333}
    fa.write_text("".join(f">{c}\n{''.join(rng.choice(list('ACGT'), n))}\n" for c, n in sizes.items()))
    # predict.revcomp_average off: the stitched values are the plain model's
    cfg = bpnet_run.model_copy(update={"genome": str(fa), "predict": bpnet_run.predict.model_copy(
        update={"revcomp_average": False})})
    out = predict(cfg, genome_wide=True, out=tmp_path / "gw", step=100, progress=False)
    model = load_trained_model(cfg.run_path, "cpu")
    genome = Genome(fa)
    Lout = cfg.window.output
    lead = (Lout - 100) // 2
    want = _window_expected(model, genome, "chrB", 200 - lead, cfg)[:, :, lead : lead + 100]
    for ci, cell in enumerate(cfg.cell_types):
        for si, strand in enumerate(("plus", "minus")):
            path = out / f"{cell}.{strand}.bw"
            for c, n in sizes.items():
                assert np.isfinite(_bw_values(path, c, 0, n)).all()
            np.testing.assert_allclose(_bw_values(path, "chrB", 200, 300), want[ci, si], rtol=1e-4, atol=1e-6)


def test_predict_missing_chromosome_exits_2(bpnet_run, tmp_path, capsys):
    genome, chrom, _ = _test_chrom(bpnet_run)
    bed = tmp_path / "bad.bed"
    bed.write_text(f"{chrom}\t100\t400\tok\nchrNope\t100\t400\tbad\n")
    out = tmp_path / "pred"
    assert cli.main(["predict", str(bpnet_run.run_path), "--regions", str(bed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "chrNope" in err and any(f"'{c}'" in err for c in genome.chroms)  # names it, lists valid names
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())


def test_predict_before_training_exits_2(bpnet_run, tmp_path, capsys):
    from tests.evaluation.test_evaluate import _copy_run

    run = tmp_path / "untrained"
    _copy_run(bpnet_run, run, with_model=False)
    bed = tmp_path / "r.bed"
    _, chrom, _ = _test_chrom(bpnet_run)
    bed.write_text(f"{chrom}\t100\t400\n")
    assert cli.main(["predict", str(run), "--regions", str(bed), "--out", str(tmp_path / "p")]) == 2
    assert "train" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_predict_encoder_run(encoder_run, tmp_path):
    genome, chrom, _ = _test_chrom(encoder_run)
    bed = tmp_path / "r.bed"
    bed.write_text(f"{chrom}\t500\t{500 + 2 * encoder_run.window.output}\n")
    out = predict(encoder_run, regions=bed, out=tmp_path / "enc", progress=False)
    for cell in encoder_run.cell_types:
        v = _bw_values(out / f"{cell}.plus.bw", chrom, 500, 500 + 2 * encoder_run.window.output)
        assert np.isfinite(v).all() and (v >= 0).all()


@pytest.mark.parametrize("step", [0, 10_000])
def test_bad_step(bpnet_run, tmp_path, step):
    from seq2reads.errors import UserError

    _, chrom, _ = _test_chrom(bpnet_run)
    bed = tmp_path / "r.bed"
    bed.write_text(f"{chrom}\t100\t400\n")
    with pytest.raises(UserError, match="step"):
        predict(bpnet_run, regions=bed, out=tmp_path / "p", step=step or -1, progress=False)
