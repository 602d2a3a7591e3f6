"""Run every step of a config in order, skipping what is done; and the built-in demo.

Steps (``seq2reads.cli.STEPS``): prepare → train → evaluate → attribute → motifs → sae → report,
plus ``marginalize`` (after ``motifs``) when motif IDs are given (the demo gives the planted ones).

Bookkeeping
-----------
Each step records ``RUN/.steps/<step>.json``::

    {"step": "train", "status": "done", "hash": "<config hash>", "sections": [...],
     "outputs": ["model/model.safetensors", ...], "upstream": {"prepare": "<stamp>"},
     "stamp": "<unique id of this completion>", "started": ..., "finished": ..., "seconds": ...}

``hash`` is ``cfg.section_hash(...)`` over the config sections the step and its upstream steps
read (``run_dir`` is never part of it, so a run folder can be moved). A step is **skipped** when
its record says ``done``, the hash matches the current config, every output listed exists, and the
upstream steps it read are the very completions recorded (their ``stamp``); otherwise it runs.
A step that was interrupted (record ``running``) simply runs again: ``train`` resumes from its own
checkpoint. A step that reruns because the config changed, or because it was forced, starts
from scratch (``train``'s resume checkpoints of the old config are removed first).

``--from STEP`` forces STEP and every later step; earlier steps follow the skip rule (they run
only if missing or stale, so the run stays consistent). ``--only STEP`` forces just that step.
The report is rebuilt on every run: it is cheap and also shows other runs (``report.compare_runs``).
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from seq2reads.atomic import write_text_atomic
from seq2reads.cli import STEPS
from seq2reads.config import Config, load_config, save_run_config
from seq2reads.errors import UserError

STEPS_DIR = ".steps"

# Where each step's function lives: looked up by name when the step runs, so that the pipeline
# imports only what it uses and each layer stays independent.
STEP_FUNCS: dict[str, tuple[str, str]] = {
    "prepare": ("seq2reads.data.store", "prepare"),
    "train": ("seq2reads.training.trainer", "train"),
    "evaluate": ("seq2reads.evaluation.evaluate", "evaluate_run"),
    "attribute": ("seq2reads.interpret.attributions", "attribute_run"),
    "motifs": ("seq2reads.interpret.motifs", "motifs_run"),
    "marginalize": ("seq2reads.interpret.perturbation", "marginalize_run"),
    "sae": ("seq2reads.sae.pipeline", "sae_run"),
    "report": ("seq2reads.report.html", "report_run"),
}

DATA_SECTIONS = ("genome", "regions", "samples", "assay", "reads", "exclude", "window", "splits", "background")

# Config sections each step reads itself (the hash also covers its upstream steps' sections).
OWN_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": DATA_SECTIONS,
    "train": ("model", "train"),
    "evaluate": ("truth",),
    "attribute": ("interpret",),
    "motifs": ("interpret",),
    "marginalize": ("interpret",),
    "sae": ("sae",),
    "report": ("report",),
}

# Upstream steps whose outputs a step reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "train": ("prepare",),
    "evaluate": ("train",),
    "attribute": ("train",),
    "motifs": ("attribute",),
    "marginalize": ("train",),
    "sae": ("train",),
    "report": ("evaluate", "attribute", "motifs", "marginalize", "sae"),
}

# Outputs (relative to RUN) whose presence marks a step as done.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": ("dataset", "config.yaml"),
    "train": ("model/model.safetensors", "model/model.json"),
    "evaluate": ("metrics.json",),
    "attribute": ("attributions",),
    "motifs": ("motifs/motifs.tsv",),
    "marginalize": ("marginalize",),
    "sae": ("sae/features.tsv", "sae/metrics.json"),
    "report": ("report.html",),
}

ALWAYS_RUN = frozenset({"report"})


def step_sections(step: str) -> tuple[str, ...]:
    """All config sections a step depends on: its own and those of every upstream step."""
    seen: list[str] = []

    def visit(s: str) -> None:
        for u in UPSTREAM[s]:
            visit(u)
        for sec in OWN_SECTIONS[s]:
            if sec not in seen:
                seen.append(sec)

    visit(step)
    return tuple(seen)


def step_hash(cfg: Config, step: str, extra: object = None) -> str:
    """The config hash recorded for ``step`` (plus ``extra`` arguments such as motif IDs)."""
    h = cfg.section_hash(*step_sections(step))
    if extra is not None:
        import hashlib

        h = hashlib.sha256((h + json.dumps(extra, sort_keys=True)).encode()).hexdigest()[:16]
    return h


def record_path(run: Path, step: str) -> Path:
    return run / STEPS_DIR / f"{step}.json"


def read_record(run: Path, step: str) -> dict | None:
    """The step's record, or None when there is none (or it is unreadable)."""
    p = record_path(run, step)
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_record(run: Path, step: str, rec: dict) -> None:
    write_text_atomic(record_path(run, step), json.dumps(rec, indent=2) + "\n")


def step_status(cfg: Config, step: str, extra: object = None) -> tuple[bool, str]:
    """Whether ``step`` is up to date for ``cfg``, and why (or why not), in words."""
    run = cfg.run_path
    rec = read_record(run, step)
    if rec is None:
        return False, "not run yet"
    if rec.get("hash") != step_hash(cfg, step, extra):
        return False, "config changed since it ran"
    if rec.get("status") != "done":
        return False, "interrupted earlier: resuming"
    missing = [o for o in rec.get("outputs", []) if not (run / o).exists()]
    if missing:
        return False, f"output missing ({missing[0]})"
    for u, stamp in rec.get("upstream", {}).items():
        urec = read_record(run, u)
        if urec is None or urec.get("stamp") != stamp:
            return False, f"{u} was rerun since"
    return True, f"up to date (config hash {rec['hash']})"


def _step_function(step: str) -> Callable:
    module, name = STEP_FUNCS[step]
    return getattr(importlib.import_module(module), name)


def _fresh_start(cfg: Config, step: str) -> None:
    """Remove what would make a forced or reconfigured step resume instead of starting over."""
    if step == "train":
        shutil.rmtree(cfg.run_path / "checkpoints", ignore_errors=True)


def run_step(cfg: Config, step: str, force: bool = False, motif_ids: Sequence[str] | None = None,
             log: Callable[[str], None] = print) -> Path | None:
    """Run one step unless it is up to date (or ``force``); record it; return its output path.

    Returns None when the step was skipped.
    """
    run = cfg.run_path
    extra = list(motif_ids) if step == "marginalize" else None
    ok, why = step_status(cfg, step, extra)
    if ok and not force and step not in ALWAYS_RUN:
        log(f"[seq2reads] skip {step}: {why}")
        return None
    rec = read_record(run, step)
    interrupted = rec is not None and rec.get("status") == "running" and rec.get("hash") == step_hash(cfg, step, extra)
    if not interrupted and (force or rec is not None):
        _fresh_start(cfg, step)
    reason = "forced" if force else ("rebuilt on every run" if step in ALWAYS_RUN else why)
    log(f"[seq2reads] {step}: {reason}")
    func = _step_function(step)
    upstream = {}
    for u in UPSTREAM[step]:
        urec = read_record(run, u)
        if urec is not None and urec.get("status") == "done":
            upstream[u] = urec["stamp"]
    started = time.time()
    run.mkdir(parents=True, exist_ok=True)
    _write_record(run, step, {"step": step, "status": "running", "hash": step_hash(cfg, step, extra),
                              "started": _now(started)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        out = func(cfg, list(motif_ids)) if step == "marginalize" else func(cfg)
    _relay_warnings(step, caught, log)
    finished = time.time()
    outputs = [o for o in OUTPUTS[step] if (run / o).exists()]
    _write_record(run, step, {
        "step": step, "status": "done", "hash": step_hash(cfg, step, extra),
        "sections": list(step_sections(step)), "outputs": outputs, "upstream": upstream,
        "stamp": uuid.uuid4().hex, "started": _now(started), "finished": _now(finished),
        "seconds": round(finished - started, 2), **({"motif_ids": extra} if extra else {}),
    })
    log(f"[seq2reads] {step} done in {_fmt_seconds(finished - started)}")
    # steps return their output folder/file (evaluate returns the metrics dict): report the path
    return Path(out) if isinstance(out, (str, Path)) else run / OUTPUTS[step][0]


def _relay_warnings(step: str, caught: list, log: Callable[[str], None]) -> None:
    """Our own warnings become one clean log line each; third-party ones are re-issued unchanged."""
    pkg = str(Path(__file__).resolve().parent)
    for w in caught:
        if issubclass(w.category, UserWarning) and str(Path(w.filename).resolve()).startswith(pkg):
            log(f"[seq2reads] {step}: warning: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def pipeline_steps(motif_ids: Sequence[str] | None = None) -> list[str]:
    """The steps of a run in order (``marginalize`` after ``motifs`` when motif IDs are given)."""
    steps = list(STEPS)
    if motif_ids:
        steps.insert(steps.index("motifs") + 1, "marginalize")
    return steps


def run_all(cfg: Config, from_step: str | None = None, only_step: str | None = None,
            motif_ids: Sequence[str] | None = None, until: str | None = None,
            log: Callable[[str], None] = print) -> Path | None:
    """Run the steps of ``cfg`` in order; returns the last step's output (the report's path).

    Parameters
    ----------
    cfg : Config
        The run's config (``RUN = cfg.run_dir``).
    from_step : str, optional
        Force this step and every later one; earlier steps run only if missing or stale.
    only_step : str, optional
        Force just this step.
    motif_ids : list of str, optional
        JASPAR IDs (or names) to marginalise; adds the ``marginalize`` step.
    until : str, optional
        Stop after this step (used by :func:`demo` to build reports after both runs exist).
    """
    steps = pipeline_steps(motif_ids)
    for name, s in (("--from", from_step), ("--only", only_step), ("until", until)):
        if s is not None and s not in steps:
            raise UserError(f"{name} {s}: not a step; choose one of {', '.join(steps)}.")
    if from_step and only_step:
        raise UserError("give either --from or --only, not both.")
    if only_step:
        _check_inputs(cfg, only_step)
        if only_step != "prepare" and (cfg.run_path / "config.yaml").exists():
            save_run_config(cfg)
        return run_step(cfg, only_step, force=True, motif_ids=motif_ids, log=log)
    if until:
        steps = steps[: steps.index(until) + 1]
    first_forced = steps.index(from_step) if from_step else len(steps)
    out = None
    t0 = time.time()
    for i, step in enumerate(steps):
        res = run_step(cfg, step, force=i >= first_forced, motif_ids=motif_ids, log=log)
        if step == "prepare":
            save_run_config(cfg)  # RUN/config.yaml always holds the config the later steps ran with
        out = res if res is not None else out
    log(f"[seq2reads] run finished in {_fmt_seconds(time.time() - t0)}: {cfg.run_path}")
    if out is None and (cfg.run_path / "report.html").exists():
        out = cfg.run_path / "report.html"
    if out is not None and Path(out).name == "report.html":
        log(f"[seq2reads] report: {out}")
    return out


def _check_inputs(cfg: Config, step: str) -> None:
    """Raise a UserError when a step's upstream outputs are missing (for ``--only``)."""
    for u in UPSTREAM[step]:
        if u in ("marginalize",) or step == "report":
            continue  # optional inputs: the report says plainly what is missing
        missing = [o for o in OUTPUTS[u] if not (cfg.run_path / o).exists()]
        if missing:
            raise UserError(
                f"--only {step} needs the outputs of '{u}' ({missing[0]} is missing in {cfg.run_path}): "
                f"run `seq2reads run CONFIG --from {u}` or without --only."
            )


# -- demo ------------------------------------------------------------------------------------
# Settings of the built-in demo. Small enough for ~10 minutes on 2 CPU cores for both models,
# large enough that every step does real work (motifs are found, the SAE has live features).
DEMO_SIM = {"n_regions": 800, "n_cell_types": 3, "seed": 0}
DEMO_COMMON = [
    "window.input=512",
    "window.output=256",
    "window.jitter=32",
    "background.ratio=0.2",
    "train.batch_size=32",
    "train.warmup_steps=10",
    "train.patience=3",
    "train.precision='32'",
    "train.devices=1",
    "train.accelerator=cpu",
    "train.checkpoint_every=25",
    "interpret.targets=[count]",
    "interpret.max_seqlets=1000",
    "interpret.marginalize_n=32",
    "sae.n_windows=150",
    "sae.latents=64",
    "sae.k=8",
    "sae.epochs=5",
    "sae.max_features=3",
    "sae.top_windows=30",
    "report.example_regions=3",
]
# The model section is replaced whole (the simulator's config names a bpnet model; its keys are
# not valid for the encoder). The encoder trains S2R-heavy (s2r_prob 0.75) with the multinomial
# read loss, as benchmarks/encoder.py does, so that it predicts reads from sequence within its 10
# epochs (S2R profile Pearson 0.48 on the demo data, simulator version 2, 2026-12-02 17:50 UTC;
# the CNN 0.57, 2026-12-03 04:30 UTC); integrated gradients run 4 shuffled baselines x 5 path points
# per region, so it explains fewer regions.
DEMO_BPNET = ["model={type: bpnet, filters: 32, layers: 5, profile_kernel: 51}", "train.max_epochs=10",
              "train.lr=0.002", "interpret.n_regions=150", "interpret.shuffles=5"]
DEMO_ENCODER = ["model={type: encoder, d_model: 64, depth: 2, heads: 4, patch: 8, seq_kernels: [1, 9, 25], "
                "s2r_prob: 0.75, read_loss: multinomial}",
                "train.max_epochs=10", "train.lr=0.002", "interpret.n_regions=100", "interpret.ig_steps=4"]

# --quick: seconds-scale settings for CI (the same steps, tiny data and models).
QUICK_SIM = {"n_regions": 200, "n_cell_types": 2, "seed": 0}
QUICK_COMMON = [
    "window.input=512",
    "window.output=256",
    "window.jitter=16",
    "background.ratio=0.2",
    "train.batch_size=32",
    "train.max_epochs=1",
    "train.warmup_steps=2",
    "train.precision='32'",
    "train.devices=1",
    "train.accelerator=cpu",
    "train.checkpoint_every=20",
    "interpret.n_regions=16",
    "interpret.shuffles=2",
    "interpret.ig_steps=4",
    "interpret.ig_shuffles=2",
    "interpret.marginalize_n=8",
    "sae.n_windows=24",
    "sae.latents=16",
    "sae.k=4",
    "sae.epochs=1",
    "sae.max_features=0",
    "sae.top_windows=6",
    "report.example_regions=2",
]
QUICK_BPNET = ["model={type: bpnet, filters: 8, layers: 2, profile_kernel: 25}"]
QUICK_ENCODER = ["model={type: encoder, d_model: 16, depth: 1, heads: 2, patch: 8, seq_kernels: [1, 9]}"]


def planted_motifs(truth_path: Path, n: int = 3) -> list[str]:
    """JASPAR IDs of up to ``n`` planted activating motifs from the simulator's ``truth.json``.

    The most-planted shared TF first, then the most-planted cell-type-specific ones, so that the
    marginalisation shows both a shared and a cell-type-specific effect.
    """
    truth = json.loads(Path(truth_path).read_text())
    motifs = [m for m in truth.get("motifs", []) if isinstance(m, dict) and m.get("jaspar_id")]
    by_role: dict[str, list[dict]] = {}
    for m in motifs:
        by_role.setdefault(m.get("role", ""), []).append(m)
    for ms in by_role.values():
        ms.sort(key=lambda m: -int(m.get("n_instances", 0)))
    shared, specific = by_role.get("shared", []), by_role.get("specific", [])
    order = shared[:1] + specific + shared[1:]
    return [m["jaspar_id"] for m in order][:n]


def demo(out: Path, quick: bool = False, log: Callable[[str], None] = print) -> Path:
    """Simulate data and run every step for the CNN and the encoder; return the CNN report's path.

    Writes ``out/data`` (simulated data), ``out/runs/bpnet`` and ``out/runs/encoder`` (each with
    ``report.html`` showing the other model's metrics beside its own). Rerunning skips what is done.
    """
    from seq2reads.data.simulate import simulate

    out = Path(out).resolve()
    sim = QUICK_SIM if quick else DEMO_SIM
    common = QUICK_COMMON if quick else DEMO_COMMON
    data = out / "data"
    t0 = time.time()
    marker = out / ".demo-simulated.json"
    if (data / "config.yaml").exists() and _same_json(marker, sim):
        log(f"[seq2reads] skip simulate: {data} already holds the demo data")
    else:
        log(f"[seq2reads] simulate: {sim['n_regions']} regions, {sim['n_cell_types']} cell types -> {data}")
        simulate(data, seed=sim["seed"], n_cell_types=sim["n_cell_types"], n_regions=sim["n_regions"])
        write_text_atomic(marker, json.dumps(sim, sort_keys=True))
    runs = {"bpnet": out / "runs" / "bpnet", "encoder": out / "runs" / "encoder"}
    models = {"bpnet": QUICK_BPNET if quick else DEMO_BPNET, "encoder": QUICK_ENCODER if quick else DEMO_ENCODER}
    cfgs = {}
    for name, run in runs.items():
        other = [str(r) for n, r in runs.items() if n != name]
        cfgs[name] = load_config(data / "config.yaml", [*common, *models[name], f"run_dir={run}",
                                                          f"report.compare_runs={json.dumps(other)}"])
    truth = cfgs["bpnet"].truth or str(data / "truth.json")
    motif_ids = planted_motifs(Path(truth), n=2 if quick else 3) if Path(truth).exists() else []
    for name, cfg in cfgs.items():
        log(f"[seq2reads] === {name} run: {cfg.run_dir}")
        run_all(cfg, motif_ids=motif_ids or None, until="sae", log=log)
    reports = {}
    for name, cfg in cfgs.items():
        reports[name] = run_step(cfg, "report", log=log)
    log(f"[seq2reads] demo finished in {_fmt_seconds(time.time() - t0)}")
    for name, path in reports.items():
        log(f"[seq2reads] {name} report: {path}")
    return Path(reports["bpnet"])


def _same_json(path: Path, obj: dict) -> bool:
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(obj, sort_keys=True))
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def _now(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{int(s // 60)} min {int(s % 60)} s"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `seq2reads run` or `seq2reads demo` command")
