"""Benchmark: the ODE likelihood's solver — uniform RK4 steps against adaptive Dormand-Prince at a ladder of
tolerances, on the same test images with the same dequantisation noise and Hutchinson probes.

    python benchmarks/ode_solver.py --threads 1                   (zoo:flow-mnist and zoo:ddpm-mnist, 100 images)
    python benchmarks/ode_solver.py --models RUN --n 20 --solvers rk4:50 tol:1e-5

For each model (a run folder or zoo:NAME with an ODE likelihood: flow, DDPM) and each solver (rk4:STEPS or
tol:TOLERANCE), the NLL in bits/dim of the first --n test images (one batch: one seed, so every solver sees the
same dequantisation and probes, and the differences are the solvers'), the network evaluations per path and the
seconds. Writes benchmarks/results/ode_solver.json (merging entries of earlier runs).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from genzoo import runs, storage, theory
from genzoo.data import load_dataset
from genzoo.devices import describe_machine
from genzoo.evaluate import EVAL_SEED, eval_tensor, isolated_rng

RESULT = Path(__file__).parent / "results" / "ode_solver.json"
CPU = torch.device("cpu")


def log_likelihood(model, x: torch.Tensor, steps: int, tol: float, evaluations: list) -> torch.Tensor:
    """log P(x) in nats through the model's ODE (the flow's likelihood, the DDPM's probability-flow ODE)."""
    fn = model.ode_log_prob if getattr(model, "ode_likelihood", False) else model.log_prob
    with isolated_rng(EVAL_SEED, CPU):
        return fn(x, steps=steps, probes=1, generator=torch.Generator().manual_seed(EVAL_SEED), tol=tol,
                  evaluations=evaluations)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["zoo:flow-mnist", "zoo:ddpm-mnist"])
    p.add_argument("--solvers", nargs="+", default=["rk4:25", "rk4:50", "rk4:100", "tol:1e-3", "tol:1e-4", "tol:1e-5"])
    p.add_argument("--n", type=int, default=100, help="test images (one batch)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    old = storage.read_json(RESULT) if RESULT.is_file() else {"entries": []}
    entries = {(e["model"], e["solver"], e["n"]): e for e in old["entries"]}
    for name in args.models:
        run = runs.load_run(name, device=CPU)
        x = eval_tensor(run.model, load_dataset(run.config.train.dataset), "test")[:args.n]
        for solver in args.solvers:
            kind, _, value = solver.partition(":")
            steps, tol = (int(value), 1e-5) if kind == "rk4" else (0, float(value))
            evaluations: list[int] = []
            start = time.perf_counter()
            nats = -log_likelihood(run.model, x, steps, tol, evaluations)
            seconds = time.perf_counter() - start
            mean, se = nats.mean().item(), nats.std().item() / len(nats) ** 0.5
            entry = {"model": name, "solver": solver, "n": len(x), "nll_nats": mean, "nll_nats_stderr": se,
                     "bits_per_dim": theory.nats_to_bits_per_dim(mean, x[0].numel()),
                     "evaluations_per_path": sum(evaluations) / max(len(evaluations), 1), "seconds": seconds,
                     "seconds_per_image": seconds / len(x)}
            entries[(name, solver, len(x))] = entry
            print(f"{name} {solver:<9} {entry['bits_per_dim']:.4f} bits/dim  {entry['evaluations_per_path']:.0f} "
                  f"evaluations  {seconds:.0f} s", flush=True)
            storage.write_json(RESULT, {"benchmark": "ode_solver", "machine": describe_machine(),
                                        "date": datetime.date.today().isoformat(),
                                        "commands": sorted(set(old.get("commands", []) + [
                                            "python benchmarks/ode_solver.py " + " ".join(sys.argv[1:])])),
                                        "entries": list(entries.values())})


if __name__ == "__main__":
    main()
