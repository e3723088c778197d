"""What the within-a-CPU-budget benchmarks share: their flags, and a training that resumes until its budget."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from genzoo import runs
from genzoo.devices import PRECISIONS
from genzoo.trainer import train_run

RESULTS = Path(__file__).parent / "results"


def add_budget_arguments(p: argparse.ArgumentParser, epochs: int, budget_minutes: float, precision: str) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help="epochs of the run (and of a cosine schedule)")
    p.add_argument("--budget-minutes", type=float, default=budget_minutes,
                   help="training time limit, resumes included")
    p.add_argument("--precision", default=precision, choices=PRECISIONS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--model", default="{}", help="model options as JSON, e.g. '{\"channels\": 64}'")
    p.add_argument("--tag", default="", help="suffix of the result name, to keep several runs")


def train_within_budget(family_name: str, args: argparse.Namespace, eval_n: int, **train) -> tuple:
    """Train benchmarks/results/FAMILY_mnist[-TAG] for --epochs within --budget-minutes, or resume it (then only
    the epochs and the budget may change). Returns (name, run folder, config, summary)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    name = f"{family_name}_mnist" + (f"-{args.tag}" if args.tag else "")
    run_dir = RESULTS / name
    budget = {"epochs": args.epochs, "time_limit": args.budget_minutes}
    resume = (run_dir / runs.CHECKPOINT).is_file()
    if resume:
        cfg = runs.resumed_config(runs.read_config(run_dir), train=budget)
    else:
        cfg = runs.new_config(family_name, json.loads(args.model),
                              {**train, **budget, "precision": args.precision, "final_eval": "full"}, {"n": eval_n})
    summary = train_run(cfg, run_dir, resume=resume, log=print, progress_bar=sys.stderr.isatty())
    return name, run_dir, cfg, summary
