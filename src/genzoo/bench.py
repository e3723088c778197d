"""`genzoo bench`: every family on one data set with its preset, scored the same way, in one table.

For each family the bench trains a run in OUT/FAMILY within the budget (or resumes it, or reuses it when it is
done), then scores it: the test NLL the trainer's final evaluation computed (in the units of the family's data
view, a bound marked as a bound) and FID/KID of n samples (``evaluate.sample_quality``). Each stage leaves its
result in the run folder and the table is rewritten after every family, so an interrupted bench picks up where it
stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from genzoo import runs
from genzoo.config import EvalConfig, TrainConfig
from genzoo.data import load_dataset
from genzoo.errors import ConfigError
from genzoo.evaluate import FID_SAMPLES, data_quality, sample_quality
from genzoo.models import FAMILIES, get_family
from genzoo.models.base import DensityKind

BENCH_DATASETS = ("mnist", "fashion-mnist")


def run_is_done(run_dir: Path, budget_minutes: float) -> bool:
    """A run with a summary that finished its epochs, or spent the budget (a signal stops it earlier)."""
    path = run_dir / runs.SUMMARY
    if not path.is_file():
        return False
    summary = runs.read_json(path)
    return bool(summary.get("finished")) or summary.get("train_wall_time_s", 0.0) >= 60 * budget_minutes - 1.0


def train_stage(family: str, run_dir: Path, dataset: str, budget_minutes: float, nll_n: int, device: str,
                log: Callable[[str], None], progress: bool) -> dict:
    """Train, resume or reuse the run; returns its summary."""
    from genzoo.trainer import train_run

    if run_is_done(run_dir, budget_minutes):
        log(f"{family}: reusing the finished run {run_dir}")
        return runs.read_json(run_dir / runs.SUMMARY)
    fam = get_family(family)
    if (run_dir / runs.CHECKPOINT).is_file():
        saved = runs.read_config(run_dir)
        if saved.family != family or saved.train.dataset != dataset:
            raise ConfigError(f"{run_dir} holds a {saved.family} run on {saved.train.dataset}, not {family} on "
                              f"{dataset}; pass another --out.")
        cfg = dataclasses.replace(saved, train=dataclasses.replace(saved.train, time_limit=budget_minutes))
        log(f"{family}: resuming {run_dir}")
        return train_run(cfg, run_dir, resume=True, log=log, progress_bar=progress)
    train = {**fam.train_defaults, "dataset": dataset, "time_limit": budget_minutes, "device": device}
    ev = {**fam.final_eval_defaults, **({"n": nll_n} if nll_n else {})}
    cfg = runs.RunConfig(family=family, model=fam.Config(), train=TrainConfig(**train), eval=EvalConfig(**ev))
    return train_run(cfg, run_dir, log=log, progress_bar=progress)


def fid_stage(run_dir: Path, n: int, device: torch.device, log: Callable[[str], None], progress: bool) -> dict:
    path = run_dir / runs.FID_EVAL
    if path.is_file():
        saved = runs.read_json(path)
        if saved.get("n_samples") == n and not saved.get("sampler"):
            log(f"{run_dir.name}: reusing {path}")
            return saved
    run = runs.load_run(run_dir, device=device)
    data = load_dataset(run.config.train.dataset)
    log(f"{run_dir.name}: FID and KID of {n} samples")
    result = sample_quality(run.model, data, n, device, progress=progress)
    runs.write_json(path, result)
    return result


def best_test_eval(summary: dict, eval_test: dict | None) -> dict:
    """The test evaluation on the most examples: the trainer's final one, or RUN/eval-test.json of `genzoo eval`
    (preferred on a tie: it is run with the family's full settings, e.g. IWAE with k = 5000)."""
    candidates = [(summary.get("eval", {}), 0)] + ([(eval_test, 1)] if eval_test else [])
    return max(candidates, key=lambda c: (c[0].get("n_examples", 0), c[1]))[0]


def nll_entry(summary: dict, ev: dict) -> dict:
    """The test NLL of the evaluation ``ev`` of a run in its family's units, or None for implicit and
    unnormalised models."""
    kind = DensityKind(summary["kind"])
    if kind in (DensityKind.IMPLICIT, DensityKind.UNNORMALISED):
        return {"value": None, "unit": None, "bound": None, "n_examples": None}
    key = "nll" if "nll_nats" in ev else "neg_elbo"
    bound = kind is DensityKind.BOUND or "bound" in ev.get("nll_estimator", "")
    if summary["view"] == "uint8":
        value, unit = ev[f"{key}_bits_per_dim"], "bits/dim"
    else:
        value, unit = ev[f"{key}_nats"], "nats"
    return {"value": value, "unit": unit, "bound": bound, "n_examples": ev["n_examples"],
            "estimator": ev.get("nll_estimator", "negative ELBO" if key == "neg_elbo" else "exact")}


def row(family: str, run_dir: Path, summary: dict, fid: dict) -> dict:
    path = run_dir / runs.eval_file("test")
    eval_test = runs.read_json(path) if path.is_file() else None
    return {"family": family, "kind": summary["kind"], "view": summary["view"], "run": str(run_dir),
            "nll": nll_entry(summary, best_test_eval(summary, eval_test)), "fid": fid["fid"], "kid": fid["kid"],
            "kid_stderr": fid["kid_stderr"], "fid_samples": fid["n_samples"], "fid_reference": fid["reference"],
            "fid_reference_view": fid["reference_view"],
            "train_minutes": summary["train_wall_time_s"] / 60, "epochs": summary["epochs_completed"],
            "samples_per_s": fid["samples_per_s"], "parameters": summary["parameters"]}


def format_nll(nll: dict) -> str:
    if nll["value"] is None:
        return "—"
    return f"{'≤ ' if nll['bound'] else ''}{nll['value']:.3f} {nll['unit']} ({nll['n_examples']} images)"


def floor_stage(out: Path, dataset: str, n: int, reference: str) -> dict:
    """FID/KID of n training images against the test reference: what a perfect model would score at this n."""
    path = out / f"data-{reference}-{n}.json"
    if path.is_file():
        return runs.read_json(path)
    result = data_quality(load_dataset(dataset), n, reference)
    runs.write_json(path, result)
    return result


def leaderboard_markdown(table: dict) -> str:
    lines = [f"# genzoo leaderboard: {table['dataset']}", "",
             f"Written by `{table['command']}` on {table['date']} ({table['machine']}). Each family trained with "
             f"its preset within {table['budget_minutes']:g} minutes, unless its finished run was reused (listed "
             "below). "
             "Test NLL in the units of the family's data view: nats per image on the fixed binarisation for "
             "the Bernoulli families, bits per dimension on the 8-bit data otherwise; '≤' marks an upper bound "
             "(an ELBO, an IWAE or a dequantisation bound); '—' where the density kind offers no likelihood. "
             "FID and KID in genzoo's feature space (a small classifier's penultimate layer, not Inception: "
             "comparable only with genzoo's own figures; KID is in the same units, hence large), against the "
             "reference named per row.", "",
             "| family | density kind | view | test NLL (test images) | FID | KID (± s.e.) | FID samples | reference "
             "| epochs | train min | samples/s |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in table["rows"]:
        lines.append(f"| {r['family']} | {r['kind']} | {r['view']} | {format_nll(r['nll'])} | {r['fid']:.2f} | "
                     f"{r['kid']:.3g} (± {r['kid_stderr']:.2g}) | {r['fid_samples']} | "
                     f"{r['fid_reference_view']} view | "
                     f"{r['epochs']} | {r['train_minutes']:.1f} | {r['samples_per_s']:.1f} |")
    for f in table.get("floor", []):
        ref = f["reference_view"]
        lines.append(f"| *training images* | data | {ref} | — | {f['fid']:.2f} | {f['kid']:.3g} "
                     f"(± {f['kid_stderr']:.2g}) | {f['n_samples']} | {ref} view | — | — | — |")
    reused = [r for r in table["rows"] if r.get("reused")]
    if reused:
        lines += ["", "Reused runs (trained elsewhere, e.g. by the benchmarks of BENCHMARKS.md): "
                  + ", ".join(f"{r['family']} = `{r['run']}`" for r in reused) + "."]
    if table.get("floor"):
        lines += ["", "The *training images* rows score real digits the same way: the floor a perfect model would "
                      "reach with as many samples (FID is biased upwards by few samples; KID is unbiased)."]
    return "\n".join(lines) + "\n"


def bench(out: Path, families: list[str], dataset: str = "mnist", budget_minutes: float = 10.0,
          fid_n: int = FID_SAMPLES, nll_n: int = 0, device: str = "auto", reuse: dict[str, Path] | None = None,
          leaderboard: Path | None = None, command: str = "genzoo bench", log: Callable[[str], None] = print,
          progress: bool = False) -> dict:
    """Train or reuse, score, and tabulate ``families``; writes OUT/leaderboard.json and the markdown table."""
    from genzoo.trainer import pick_device

    unknown = [f for f in families + list(reuse or {}) if f not in FAMILIES]
    if unknown:
        raise ConfigError(f"unknown model family '{unknown[0]}'; choose from: {', '.join(FAMILIES)}.")
    if dataset not in BENCH_DATASETS:
        raise ConfigError(f"the bench runs on {' or '.join(BENCH_DATASETS)}; got '{dataset}'.")
    reuse = reuse or {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    leaderboard = leaderboard or out / "LEADERBOARD.md"
    torch_device = pick_device(device)
    table = {"dataset": dataset, "date": datetime.date.today().isoformat(), "command": command,
             "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
             "budget_minutes": budget_minutes, "rows": []}
    for family in families:
        run_dir = reuse.get(family, out / family)
        if family in reuse:
            if not (run_dir / runs.SUMMARY).is_file():
                raise ConfigError(f"--run {family}={run_dir}: not a finished run folder (no {runs.SUMMARY}).")
            summary = runs.read_json(run_dir / runs.SUMMARY)
            if summary.get("family") != family or summary.get("dataset") != dataset:
                raise ConfigError(f"--run {family}={run_dir} holds {summary.get('family')} on "
                                  f"{summary.get('dataset')}, not {family} on {dataset}.")
        else:
            summary = train_stage(family, run_dir, dataset, budget_minutes, nll_n, device, log, progress)
        fid = fid_stage(run_dir, fid_n, torch_device, log, progress)
        table["rows"].append({**row(family, run_dir, summary, fid), "reused": family in reuse})
        write_tables(table, out, leaderboard)
    references = sorted({r["fid_reference_view"] for r in table["rows"]})
    table["floor"] = [floor_stage(out, dataset, fid_n, ref) for ref in references]
    write_tables(table, out, leaderboard)
    return table


def write_tables(table: dict, out: Path, leaderboard: Path) -> None:
    runs.write_json(out / "leaderboard.json", table)
    runs.atomic_write(leaderboard, lambda tmp: Path(tmp).write_text(leaderboard_markdown(table)))
