"""Benchmark: mode collapse on the ring of 8 Gaussians, for each GAN loss and for the EBM.

    python benchmarks/toy_ring.py                 # all five, with the families' toy-ring defaults
    python benchmarks/toy_ring.py --epochs 3      # shorter

Each model trains through the ordinary trainer (the settings `genzoo train FAMILY --dataset toy-ring` uses) and is
scored on 2,500 samples: modes covered out of 8 and the share of high-quality samples (within 3 standard deviations
of a mode; Srivastava et al. 2017), plus for the EBM the KL from the data to the model normalised on a grid.
Results go to benchmarks/results/toy_ring.json; finished entries are kept when the script is run again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from pathlib import Path

import torch

from genzoo import runs, storage
from genzoo.devices import describe_machine
from genzoo.trainer import train_run

HERE = Path(__file__).parent
RUNS = {  # name: (family, model options, training options beyond the family's toy-ring defaults)
    "gan-minimax": ("gan", {"loss": "minimax"}, {}),
    "gan-non-saturating": ("gan", {"loss": "non-saturating"}, {}),
    "gan-hinge": ("gan", {"loss": "hinge"}, {}),
    "gan-wgan-gp": ("gan", {"loss": "wgan-gp", "n_critic": 5}, {}),
    "gan-wgan-gp-lr1e-4": ("gan", {"loss": "wgan-gp", "n_critic": 5}, {"lr": 1e-4}),  # Gulrajani et al.'s lr
    "ebm": ("ebm", {}, {}),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=0, help="epochs per model (0 = the family's toy-ring default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--only", nargs="*", choices=tuple(RUNS), help="run only these")
    p.add_argument("--redo", nargs="*", default=[], choices=tuple(RUNS),
                   help="train these again from scratch (their folders and entries are replaced)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result_path = HERE / "results" / "toy_ring.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    result.update({"benchmark": "toy_ring", "date": datetime.date.today().isoformat(), "machine": describe_machine(),
                   "command": "python benchmarks/toy_ring.py " + " ".join(sys.argv[1:])})
    table = result.setdefault("runs", {})
    for name in args.redo:
        table.pop(name, None)
        shutil.rmtree(HERE / "results" / "toy_ring" / name, ignore_errors=True)
    for name, (family_name, model_options, train_options) in RUNS.items():
        if (args.only and name not in args.only) or name in table:
            continue
        train = {**train_options, "dataset": "toy-ring", "seed": args.seed, "final_eval": "full"}
        if args.epochs:
            train["epochs"] = args.epochs
        cfg = runs.new_config(family_name, model_options, train, {"n": 2500})
        run_dir = HERE / "results" / "toy_ring" / name
        summary = train_run(cfg, run_dir, resume=(run_dir / runs.CHECKPOINT).is_file(), log=print)
        ev = summary["eval"]
        last = runs.read_metrics(run_dir)[-1]
        table[name] = {"config": cfg.to_json(), "steps": summary["steps"],
                       "train_seconds": summary["train_wall_time_s"],
                       **{k: ev[k] for k in ("modes_covered", "modes", "high_quality_share", "n_samples",
                                             "kl_data_to_model_nats") if k in ev},
                       "last_epoch": {k: v for k, v in last.items() if k.startswith("val_") or k == "warnings"}}
        print(name, json.dumps({k: v for k, v in table[name].items() if k != "config"}), flush=True)
        storage.write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
