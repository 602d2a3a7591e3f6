"""The ``seq2reads`` command line: a thin layer over the package's functions.

Each sub-command parses its arguments, loads the config (a file, or ``RUN/config.yaml``), applies
``--set`` overrides and calls one function. A :class:`~seq2reads.errors.UserError` becomes a
one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seq2reads.errors import Stopped, UserError

STEPS = ("prepare", "train", "evaluate", "attribute", "motifs", "sae", "report")


def _config(args):
    from seq2reads.config import load_config

    return load_config(args.config, args.set)


def _run_config(args):
    from seq2reads.config import load_run_config

    return load_run_config(args.run, args.set)


def cmd_simulate(args) -> None:
    from seq2reads.data.simulate import simulate

    out = simulate(Path(args.out), seed=args.seed, n_cell_types=args.cell_types, n_regions=args.regions)
    print(f"simulated data in {out}; next: seq2reads prepare {Path(out) / 'config.yaml'}")


def cmd_prepare(args) -> None:
    from seq2reads.data.store import prepare

    print(f"dataset written to {prepare(_config(args))}")


def cmd_train(args) -> None:
    from seq2reads.training.trainer import train

    print(f"model written to {train(_config(args))}")


def cmd_evaluate(args) -> None:
    from seq2reads.evaluation.evaluate import evaluate_run

    evaluate_run(_run_config(args))


def cmd_predict(args) -> None:
    from seq2reads.evaluation.predict import predict

    if not args.regions and not args.genome_wide:
        raise UserError("predict needs --regions BED or --genome-wide.")
    out = predict(_run_config(args), regions=args.regions, genome_wide=args.genome_wide, out=Path(args.out))
    print(f"predicted tracks in {out}")


def cmd_attribute(args) -> None:
    from seq2reads.interpret.attributions import attribute_run

    print(f"attributions in {attribute_run(_run_config(args))}")


def cmd_motifs(args) -> None:
    from seq2reads.interpret.motifs import motifs_run

    print(f"motifs in {motifs_run(_run_config(args))}")


def cmd_marginalize(args) -> None:
    from seq2reads.interpret.perturbation import marginalize_run

    print(f"marginalisation in {marginalize_run(_run_config(args), args.motif)}")


def cmd_sae(args) -> None:
    from seq2reads.sae.pipeline import sae_run

    print(f"sparse autoencoder outputs in {sae_run(_run_config(args))}")


def cmd_report(args) -> None:
    from seq2reads.report.html import report_run

    print(f"report: {report_run(_run_config(args))}")


def cmd_run(args) -> None:
    from seq2reads.pipeline import run_all

    run_all(_config(args), from_step=args.from_step, only_step=args.only)


def cmd_demo(args) -> None:
    from seq2reads.pipeline import demo

    print(f"report: {demo(Path(args.out), quick=args.quick)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seq2reads", description="Sequence-to-read models for nascent transcription.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help, target=None):
        sp = sub.add_parser(name, help=help, description=help)
        if target == "config":
            sp.add_argument("config", help="YAML config file")
        elif target == "run":
            sp.add_argument("run", help="run directory (the config's run_dir) or a config file")
        if target:
            sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value, e.g. --set train.max_epochs=3 (repeatable)")
        sp.set_defaults(func=func)
        return sp

    sp = add("simulate", cmd_simulate, "simulate nascent-transcription data with known truth")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--cell-types", type=int, default=3)
    sp.add_argument("--regions", type=int, default=3000)
    add("prepare", cmd_prepare, "build the windowed Zarr dataset", "config")
    add("train", cmd_train, "train the model named in the config (resumes if interrupted)", "config")
    add("evaluate", cmd_evaluate, "test-set metrics beside a baseline and a noise ceiling", "run")
    sp = add("predict", cmd_predict, "predicted stranded tracks as bigWigs, tiled and stitched", "run")
    sp.add_argument("--regions", help="BED file of regions to predict")
    sp.add_argument("--genome-wide", action="store_true", help="tile every chromosome")
    sp.add_argument("--out", required=True, help="output folder for the bigWigs")
    add("attribute", cmd_attribute, "attributions (DeepLIFT/SHAP, integrated gradients or ISM)", "run")
    add("motifs", cmd_motifs, "TF-MoDISco motifs matched to JASPAR with TOMTOM", "run")
    sp = add("marginalize", cmd_marginalize, "insert JASPAR motifs into background sequences", "run")
    sp.add_argument("--motif", nargs="+", required=True, metavar="ID", help="JASPAR matrix IDs or TF names")
    add("sae", cmd_sae, "sparse autoencoder on a layer's embeddings + feature analysis", "run")
    add("report", cmd_report, "one self-contained HTML report", "run")
    sp = add("run", cmd_run, "all steps in order; skips finished steps, resumes unfinished ones", "config")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--from", dest="from_step", choices=STEPS, help="start at this step")
    g.add_argument("--only", choices=STEPS, help="run only this step")
    sp = add("demo", cmd_demo, "simulate + run everything on the built-in default, then print the report path")
    sp.add_argument("--out", default="seq2reads-demo", help="output folder (default: seq2reads-demo)")
    sp.add_argument("--quick", action="store_true", help="seconds-scale settings (used by CI)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``seq2reads`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"seq2reads {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seq2reads {args.command}: interrupted", file=sys.stderr)
        return 130
    except Stopped as e:
        print(f"seq2reads {args.command}: {e}", file=sys.stderr)
        return e.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
