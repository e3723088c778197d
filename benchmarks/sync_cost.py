"""Benchmark: what the ranks' agreement every step costs, against every k steps, under torchrun with gloo.

    python benchmarks/sync_cost.py                      (launches the torchrun pairs itself, alternating)

Each measurement is `torchrun --nproc_per_node=2` training the VAE (batch 128, one thread per process) for
--steps optimizer steps with Trainer.sync_every = 1 (one all-reduce of the loss and the stop flags per step, as
before) or = 25 (the default); the figure is training seconds per step from summary.json, the median of
--rounds alternating rounds. Writes benchmarks/results/sync_cost.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


def child(args) -> None:
    """One rank of one measurement (run by torchrun)."""
    import torch

    from genzoo import runs
    from genzoo.trainer import Trainer, train_run

    torch.set_num_threads(1)
    Trainer.sync_every = args.sync_every
    cfg = runs.new_config("vae", train={"max_steps": args.steps, "epochs": 1, "final_eval": "skip",
                                        "precision": "fp32", "device": "cpu"})
    train_run(cfg, Path(args.out), log=lambda m: None)


def measure(sync_every: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "run"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with socket.socket() as sock:  # a free port for each launch (a just-closed one may linger in TIME_WAIT)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        __file__, "--child", "--sync-every", str(sync_every), "--steps", str(steps), "--out", str(out)],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        if not (out / "summary.json").is_file():
            raise SystemExit(f"the torchrun measurement failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        return summary["train_wall_time_s"] / summary["steps"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync-every", type=int, default=25)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    from genzoo import storage
    from genzoo.devices import describe_machine

    times: dict[int, list[float]] = {1: [], 25: []}
    for r in range(args.rounds):
        for k in times:
            times[k].append(measure(k, args.steps))
            print(f"round {r + 1}: sync every {k:>2} steps: {1000 * times[k][-1]:.2f} ms per step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"benchmark": "sync_cost", "date": datetime.date.today().isoformat(), "machine": describe_machine(),
              "command": "python benchmarks/sync_cost.py " + " ".join(sys.argv[1:]), "steps": args.steps,
              "seconds_per_step_median": {str(k): v for k, v in med.items()},
              "seconds_per_step_rounds": {str(k): v for k, v in times.items()},
              "ratio_every_step_over_every_25": med[1] / med[25]}
    storage.write_json(HERE / "results" / "sync_cost.json", result)
    print(json.dumps({k: result[k] for k in ("seconds_per_step_median", "ratio_every_step_over_every_25")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
