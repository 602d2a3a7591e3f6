"""The README's benchmark table, built only from the measured results in ``benchmarks/results/*.json``.

Each results file holds one JSON object or JSON lines (one object per line), as printed by the
benchmark scripts. The table lists every object: benchmark name, its figures, the target, the
machine and the date it was measured. Nothing is typed in by hand.

Usage::

    python benchmarks/table.py            # print the Markdown table
    python benchmarks/table.py --write    # replace the table between the markers in README.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- BENCHMARKS:START -->", "<!-- BENCHMARKS:END -->"
NAME_KEYS = ("benchmark", "name", "bench")
DATE_KEYS = ("date", "timestamp", "time", "when", "measured")
MACHINE_KEYS = ("machine", "device", "host", "hardware")
TARGET_KEYS = ("target", "goal")
SKIP_KEYS = {"note", "notes", "command", "config", "version", "package_version", "variant"}
MAX_FIGURES = 10
# The figures each benchmark is judged by come first in its row; targets from SPEC.md where the
# results file does not state one.
HEADLINES = {
    "loader": ["windows_per_s_memory", "windows_per_s_streaming"],
    "prepare": ["speedup", "cpu_time_ratio", "prepare_windows_per_s", "naive_windows_per_s", "load_average_1min"],
    "train_step": ["cpu.speedup", "cpu.seq2reads_windows_per_s", "cpu.bpnet_lite_windows_per_s", "cpu.precision",
                   "load_avg_1min"],
    "accuracy": ["seq2reads.profile_pearson", "bpnet_lite.profile_pearson", "ceiling.profile_pearson",
                 "seq2reads.count_pearson", "bpnet_lite.count_pearson", "ceiling.count_pearson",
                 "seq2reads.profile_jsd", "bpnet_lite.profile_jsd", "data.simulated_regions", "epochs"],
    "attribution": ["speedup", "pearson_min", "seconds_ours", "seconds_tangermeme", "shuffles"],
    "encoder_accuracy": ["encoder_s2r.profile_pearson", "ceiling.profile_pearson", "encoder_s2r.count_pearson",
                         "ceiling.count_pearson", "epochs", "data.simulated_regions"],
    "encoder_speed": ["setting", "tokens_per_s", "windows_per_s", "peak_rss_mb", "load_avg_1min"],
    "motif_recovery": ["recovery", "n_planted_ge50", "specificity_ok", "n_specific", "marginalisation_ok",
                       "n_activating"],
    "sae_scale": ["n_vectors", "d", "peak_rss_gb", "pass", "store_vectors_per_s", "train_vectors_per_s",
                  "eval_vectors_per_s", "torch_threads", "load_average_1min"],
    "count_oracle": ["mean.sites", "mean.scan_zone", "mean.scan_150", "mean.scan_256", "mean.head_pwm_relu",
                     "mean.head_pwm_sigmoid", "mean.head_learned_relu", "simulator_version", "output_len"],
    "learning_curve": ["profile_pearson", "count_pearson", "ceiling"],
    "sae_targets": ["fvu", "dead_fraction", "mean_l0", "checks.every_specific_tf", "pass", "n_enriched",
                    "model.d_model", "model.depth", "layer"],
}
TARGETS = {
    "loader": ">= 20,000 windows/s", "prepare": ">= 10x naive", "train_step": ">= 1.5x bpnet-lite",
    "attribution": ">= 1x tangermeme, r >= 0.99",
    "motif_recovery": ">= 90% of planted motifs; specific motifs in their cell type; marginalisation direction",
    "sae_scale": "peak memory <= 4 GB at 1e7 vectors",
    "count_oracle": "– (diagnostic: the test count Pearson the sequence allows, and the count head's own)",
    "sae_targets": "FVU <= 0.2 at K = 16, 256 latents; dead <= 10%; a latent per specific TF",
}


def load_results(results: Path = RESULTS) -> list[tuple[Path, dict]]:
    """(file, object) for every JSON object in ``results/*.json`` / ``*.jsonl``, in file-name order."""
    out = []
    for f in sorted([*results.glob("*.json"), *results.glob("*.jsonl")]):
        text = f.read_text().strip()
        if not text:
            continue
        try:
            objs = [json.loads(text)]
        except json.JSONDecodeError:
            objs = [json.loads(line) for line in text.splitlines() if line.strip()]
        for o in objs if not isinstance(objs[0], list) else objs[0]:
            if isinstance(o, dict):
                out.append((f, o))
    return out


def _first(obj: dict, keys) -> object | None:
    for k in keys:
        if obj.get(k) not in (None, ""):
            return obj[k]
    return None


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)) and len(v) <= 4 and all(isinstance(x, (int, float, str)) for x in v):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _date(obj: dict, f: Path) -> str:
    d = _first(obj, DATE_KEYS)
    if isinstance(d, (int, float)):
        return dt.datetime.fromtimestamp(d, dt.timezone.utc).strftime("%Y-%m-%d")
    if isinstance(d, str):
        return d[:10]
    return dt.datetime.fromtimestamp(f.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d") + " (file)"


def row(f: Path, obj: dict) -> list[str]:
    """One Markdown table row: benchmark, figures, target, machine, date."""
    used = set(NAME_KEYS) | set(DATE_KEYS) | set(MACHINE_KEYS) | set(TARGET_KEYS) | SKIP_KEYS
    figures = []
    name = str(_first(obj, NAME_KEYS) or f.stem)
    first = HEADLINES.get(name, [])

    def rank(key: str) -> int:  # a headline names a figure or a group of them (its prefix)
        return next((i for i, h in enumerate(first) if key == h or key.startswith(h + ".")), len(first))

    flat = sorted(_flatten({k: v for k, v in obj.items() if k not in used}), key=lambda kv: rank(kv[0]))
    for k, v in flat:
        if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 40) or isinstance(v, list):
            s = _fmt(v)
            if len(s) <= 60:
                figures.append(f"{k} = {s}")
    more = f" (+{len(figures) - MAX_FIGURES} more in {f.name})" if len(figures) > MAX_FIGURES else ""
    target = _first(obj, TARGET_KEYS) or TARGETS.get(name)
    target_s = "; ".join(f"{k} {v}" for k, v in target.items()) if isinstance(target, dict) else _fmt(target or "–")
    label = f"{name} ({obj['variant']})" if obj.get("variant") else name
    cells = [label, "; ".join(figures[:MAX_FIGURES]) + more, target_s,
             str(_first(obj, MACHINE_KEYS) or "–"), _date(obj, f)]
    return [c.replace("|", "\\|").replace("\n", " ") for c in cells]


def markdown(results: Path = RESULTS) -> str:
    """The Markdown table (or a sentence saying that no results were measured yet)."""
    rows = [row(f, o) for f, o in load_results(results)]
    if not rows:
        return "_No benchmark has been run yet: run the scripts in `benchmarks/`, then `python benchmarks/table.py --write`._"
    head = "| benchmark | measured | target | machine | date |\n|---|---|---|---|---|\n"
    return head + "\n".join("| " + " | ".join(r) + " |" for r in rows)


def write_readme(readme: Path = ROOT / "README.md", results: Path = RESULTS) -> None:
    """Replace the text between the benchmark markers in the README with the current table."""
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{markdown(results)}\n{END}{tail}"
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(new)
    tmp.replace(readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="update README.md in place")
    args = p.parse_args(argv)
    if args.write:
        write_readme()
    else:
        print(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
