"""Benchmark: the chapter's VAE on MNIST (latent 32, 10 epochs, dynamic binarisation).

Trains (or resumes) the run, then scores it on the 10,000 test images: negative ELBO, and the IWAE NLL with
k = 1000 and k = 5000. Reports wall time, training images/s and peak memory, and writes everything to
benchmarks/results/vae_mnist[-TAG].json. Every step is resumable: run the same command again after an
interruption and it continues the training, and reuses finished evaluations.

    python benchmarks/vae_mnist.py                                   # the chapter's MLP configuration
    python benchmarks/vae_mnist.py --hidden 1024 --tag wide          # wider layers, same 10 epochs
    python benchmarks/vae_mnist.py --arch conv --epochs 50 --tag conv  # the stretch configuration
    python benchmarks/vae_mnist.py --train-k 5 --latent-dim 50 --epochs 45 --ks 1000 --tag iwae
                                                    # the IWAE recipe (genzoo train vae --preset iwae)
"""

from __future__ import annotations

import argparse

import datetime
import json
import resource
import sys
import time
from pathlib import Path

import torch

from genzoo import runs, storage
from genzoo.config import EvalConfig
from genzoo.data import load_dataset
from genzoo.evaluate import evaluate
from genzoo.trainer import train_run

from genzoo.devices import describe_machine

HERE = Path(__file__).parent
TARGETS = {"neg_elbo_nats": 95.0, "nll_iwae5000_nats": 90.0, "train_minutes": 3.0, "stretch_nll_nats": 84.0}


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mlp", choices=("mlp", "conv"))
    p.add_argument("--hidden", type=int, default=768, help="width of the MLP's hidden layers")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--train-k", type=int, default=1, help="importance samples of the training bound (1 = the ELBO)")
    p.add_argument("--ks", default="1000,5000", help="IWAE k values to evaluate, comma-separated")
    p.add_argument("--tag", default="", help="suffix of the run and result names")
    args = p.parse_args()

    name = "vae_mnist" + (f"-{args.tag}" if args.tag else "")
    run_dir = HERE / "results" / name
    result_path = HERE / "results" / f"{name}.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    cfg = runs.new_config(
        "vae", {"latent_dim": args.latent_dim, "arch": args.arch, "hidden": args.hidden, "train_k": args.train_k},
        {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": args.lr_schedule,
         "seed": 0, "final_eval": "full"},
        {"iwae_k": 1, "n": 0})  # the figures below are computed separately, with several k
    t0 = time.perf_counter()
    summary = train_run(cfg, run_dir, resume=(run_dir / runs.CHECKPOINT).is_file(), log=print,
                        progress_bar=sys.stderr.isatty())
    result.update({
        "benchmark": name, "date": datetime.date.today().isoformat(), "machine": describe_machine(),
        "config": cfg.to_json(), "command": "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:]),
        "train_wall_time_s": summary["train_wall_time_s"], "train_images_per_s": summary["images_per_s"],
        "epochs": summary["epochs_completed"], "parameters": summary["parameters"],
        "neg_elbo_nats": summary["eval"]["neg_elbo_nats"], "neg_elbo_nats_stderr": summary["eval"]["neg_elbo_nats_stderr"],
        "n_test_examples": summary["eval"]["n_examples"],
    })
    storage.write_json(result_path, result)

    run = runs.load_run(run_dir)
    data = load_dataset("mnist")
    for k in (int(s) for s in args.ks.split(",")):
        key = f"nll_iwae{k}_nats"
        if key in result:
            print(f"{key} = {result[key]:.3f} (already measured)")
            continue
        t = time.perf_counter()
        ev = evaluate(run.model, data, EvalConfig(iwae_k=k), torch.device("cpu"), progress=sys.stderr.isatty())
        result[key] = ev["nll_nats"]
        result[f"{key}_stderr"] = ev["nll_nats_stderr"]
        result[f"eval_iwae{k}_seconds"] = time.perf_counter() - t
        print(f"{key} = {ev['nll_nats']:.3f} ± {ev['nll_nats_stderr']:.3f} ({result[f'eval_iwae{k}_seconds']:.0f} s)")
        storage.write_json(result_path, result)

    result["peak_memory_mb"] = max(result.get("peak_memory_mb", 0.0), peak_memory_mb())
    result["targets"] = {
        "neg_elbo_le_95": result["neg_elbo_nats"] <= TARGETS["neg_elbo_nats"],
        "nll_le_90": result.get("nll_iwae5000_nats", float("inf")) <= TARGETS["nll_iwae5000_nats"],
        "ten_epochs_under_3_min": result["epochs"] == 10 and result["train_wall_time_s"] <= 60 * TARGETS["train_minutes"],
        "stretch_nll_le_84": result.get("nll_iwae5000_nats", float("inf")) <= TARGETS["stretch_nll_nats"],
    }
    storage.write_json(result_path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "machine")}, indent=2))
    print(f"benchmark finished in {time.perf_counter() - t0:.0f} s; results in {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
