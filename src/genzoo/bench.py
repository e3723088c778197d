"""`genzoo bench`: every family on one data set with its preset, scored the same way, in one table.

For each family the bench trains a run in OUT/FAMILY within the budget (or resumes it, or reuses it when it is
done), then scores it: the test NLL the trainer's final evaluation computed (in the units of the family's data
view, a bound marked as a bound) and FID/KID of n samples (``evaluate.sample_quality``). Each stage leaves its
result in the run folder and the table is rewritten after every family, so an interrupted bench picks up where it
stopped.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import torch

from genzoo import runs, storage, zoo
from genzoo.data import load_dataset
from genzoo.devices import machine_line, pick_device
from genzoo.errors import ConfigError
from genzoo.features import FEATURE_DATASETS
from genzoo.evaluate import FID_SAMPLES, data_quality, sample_quality
from genzoo.models import FAMILIES
from genzoo.tables import leaderboard_markdown, row



def run_is_done(run_dir: Path, budget_minutes: float) -> bool:
    """A run with a summary that finished its epochs, or spent the budget (a signal stops it earlier)."""
    path = run_dir / runs.SUMMARY
    if not path.is_file():
        return False
    summary = storage.read_json(path)
    return bool(summary.get("finished")) or summary.get("train_wall_time_s", 0.0) >= 60 * budget_minutes - 1.0


def train_stage(family: str, run_dir: Path, dataset: str, budget_minutes: float, nll_n: int, device: str,
                log: Callable[[str], None], progress: bool) -> dict:
    """Train, resume or reuse the run; returns its summary."""
    from genzoo.trainer import train_run

    if run_is_done(run_dir, budget_minutes):
        log(f"{family}: reusing the finished run {run_dir}")
        return storage.read_json(run_dir / runs.SUMMARY)
    if (run_dir / runs.CHECKPOINT).is_file():
        saved = runs.read_config(run_dir)
        if saved.family != family or saved.train.dataset != dataset:
            raise ConfigError(f"{run_dir} holds a {saved.family} run on {saved.train.dataset}, not {family} on "
                              f"{dataset}; pass another --out.")
        cfg = runs.resumed_config(saved, train={"time_limit": budget_minutes})
        log(f"{family}: resuming {run_dir}")
        return train_run(cfg, run_dir, resume=True, log=log, progress_bar=progress)
    # the bench scores every run on its family's full final evaluation, however short the budget
    train = {"dataset": dataset, "time_limit": budget_minutes, "device": device, "final_eval": "full"}
    cfg = runs.new_config(family, train=train, eval={"n": nll_n} if nll_n else {})
    return train_run(cfg, run_dir, log=log, progress_bar=progress)


def fid_stage(run_dir: Path, n: int, device: torch.device, log: Callable[[str], None], progress: bool,
              write_to: Path | None = None, shipped: bool = False) -> dict:
    """FID/KID of n samples of the run: reused from RUN/eval-fid.json (or ``write_to``) when it scored n samples
    with the family's default sampler — or, for a zoo model (``shipped``), with the sampler its card names —
    otherwise computed and written to ``write_to`` (default RUN/eval-fid.json; a zoo model's folder is never
    written)."""
    write_to = write_to or run_dir / runs.FID_EVAL
    for path in dict.fromkeys((run_dir / runs.FID_EVAL, write_to)):
        if path.is_file():
            saved = storage.read_json(path)
            card_protocol = shipped and path == run_dir / runs.FID_EVAL
            if saved.get("n_samples") == n and (card_protocol or not saved.get("sampler")):
                log(f"{run_dir.name}: reusing {path}")
                return saved
    path = write_to
    run = runs.load_run(run_dir, device=device)
    data = runs.run_data(run.config)
    log(f"{run_dir.name}: FID and KID of {n} samples")
    result = sample_quality(run.model, data, n, device, progress=progress)
    storage.write_json(path, result)
    return result


def floor_stage(out: Path, dataset: str, n: int, reference: str) -> dict:
    """FID/KID of n training images against the test reference: what a perfect model would score at this n."""
    path = out / f"data-{reference}-{n}.json"
    if path.is_file():
        return storage.read_json(path)
    result = data_quality(load_dataset(dataset), n, reference)
    storage.write_json(path, result)
    return result


def bench(out: Path, families: list[str], dataset: str = "mnist", budget_minutes: float = 10.0,
          fid_n: int = FID_SAMPLES, nll_n: int = 0, device: str = "auto", reuse: dict[str, str | Path] | None = None,
          leaderboard: Path | None = None, command: str = "genzoo bench", log: Callable[[str], None] = print,
          progress: bool = False) -> dict:
    """Train or reuse, score, and tabulate ``families``; writes OUT/leaderboard.json and the markdown table."""
    unknown = [f for f in families + list(reuse or {}) if f not in FAMILIES]
    if unknown:
        raise ConfigError(f"unknown model family '{unknown[0]}'; choose from: {', '.join(FAMILIES)}.")
    if dataset not in FEATURE_DATASETS:
        raise ConfigError(f"the bench runs on {' or '.join(FEATURE_DATASETS)}; got '{dataset}'.")
    reuse = reuse or {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    leaderboard = leaderboard or out / "LEADERBOARD.md"
    torch_device = pick_device(device)
    table = {"dataset": dataset, "date": datetime.date.today().isoformat(), "command": command,
             "machine": machine_line(),
             "budget_minutes": budget_minutes, "rows": []}
    for family in families:
        name = reuse.get(family)
        run_dir = zoo.resolve(name) if name is not None else out / family
        if family in reuse:
            if not (run_dir / runs.SUMMARY).is_file():
                raise ConfigError(f"--run {family}={run_dir}: not a finished run folder (no {runs.SUMMARY}).")
            summary = storage.read_json(run_dir / runs.SUMMARY)
            if summary.get("family") != family or summary.get("dataset") != dataset:
                raise ConfigError(f"--run {family}={run_dir} holds {summary.get('family')} on "
                                  f"{summary.get('dataset')}, not {family} on {dataset}.")
        else:
            summary = train_stage(family, run_dir, dataset, budget_minutes, nll_n, device, log, progress)
        write_to = out / f"{str(name).removeprefix(zoo.PREFIX)}-{runs.FID_EVAL}" if zoo.is_zoo(name) else None
        fid = fid_stage(run_dir, fid_n, torch_device, log, progress, write_to, shipped=zoo.is_zoo(name))
        table["rows"].append({**row(family, run_dir, summary, fid), "reused": family in reuse,
                              **({"run": name} if zoo.is_zoo(name) else {})})
        write_tables(table, out, leaderboard)
    references = sorted({r["fid_reference_view"] for r in table["rows"]})
    table["floor"] = [floor_stage(out, dataset, fid_n, ref) for ref in references]
    write_tables(table, out, leaderboard)
    return table


def write_tables(table: dict, out: Path, leaderboard: Path) -> None:
    storage.write_json(out / "leaderboard.json", table)
    storage.atomic_write(leaderboard, lambda tmp: Path(tmp).write_text(leaderboard_markdown(table)))
