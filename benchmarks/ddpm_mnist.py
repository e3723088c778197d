"""Benchmark: DDPM on MNIST within a fixed CPU budget, then sampling speed and quality by step count.

    python benchmarks/ddpm_mnist.py --budget-minutes 60          # resumable: run it again to continue
    python benchmarks/ddpm_mnist.py --budget-minutes 10 --tag short

Reports, into benchmarks/results/ddpm_mnist[-TAG].json:
  - the test NLL bound in bits/dim (all T terms, on the first --bound-n test images);
  - wall time to sample 100 images with 1000, 100, 50, 20 and 10 steps, for "DDPM" (ancestral, eta = 1 on the
    step subsequence, the DDIM paper's sigma-hat = 1 row) and DDIM (eta = 0);
  - sample quality at each step count, by the confidence and label spread of genzoo's MNIST classifier
    (sample_quality.py; 100 samples are too few for FID, which `genzoo eval RUN --fid` gives).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sample_quality import classifier, quality  # noqa: E402

from genzoo import runs, storage  # noqa: E402
from genzoo.config import EvalConfig  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.devices import describe_machine  # noqa: E402
from genzoo.evaluate import evaluate  # noqa: E402
from genzoo.trainer import train_run  # noqa: E402

HERE = Path(__file__).parent
STEPS = (1000, 100, 50, 20, 10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=60.0)
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--bound-n", type=int, default=100, help="test images for the bits/dim bound")
    p.add_argument("--tag", default="")
    args = p.parse_args()

    name = "ddpm_mnist" + (f"-{args.tag}" if args.tag else "")
    run_dir, result_path = HERE / "results" / name, HERE / "results" / f"{name}.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    resume = (run_dir / runs.CHECKPOINT).is_file()
    train = {"epochs": 200, "batch_size": 128, "time_limit": args.budget_minutes, "final_eval": "full"}
    cfg = (runs.resumed_config(runs.read_config(run_dir), train={"time_limit": args.budget_minutes}) if resume
           else runs.new_config("ddpm", train=train, eval={"n": 4}))
    summary = train_run(cfg, run_dir, resume=resume, log=print, progress_bar=sys.stderr.isatty())
    result.update({"benchmark": name, "date": datetime.date.today().isoformat(), "machine": describe_machine(),
                   "config": cfg.to_json(), "command": "python benchmarks/ddpm_mnist.py " + " ".join(sys.argv[1:]),
                   "train_minutes": summary["train_wall_time_s"] / 60, "train_images_per_s": summary["images_per_s"],
                   "steps": summary["steps"], "epochs_completed": summary["epochs_completed"],
                   "parameters": summary["parameters"]})
    storage.write_json(result_path, result)

    run = runs.load_run(run_dir)
    model = run.model
    net, accuracy = classifier()
    result["classifier_test_accuracy"] = accuracy
    result["quality_metric"] = "genzoo's MNIST classifier: confidence and label entropy of 100 samples (not FID)"
    real = load_dataset("mnist").test.images[: args.n_samples].float() / 255
    result["quality_real_test_images"] = quality(net, real)
    table = result.setdefault("sampling", {})
    for sampler, eta in (("ddim", 0.0), ("ddpm", 1.0)):
        for steps in STEPS:
            key = f"{sampler}-{steps}"
            if key in table:
                continue
            t = time.perf_counter()
            x = model.sample(args.n_samples, torch.Generator().manual_seed(0), sampler="ddim", steps=steps, eta=eta,
                             progress=sys.stderr.isatty())
            seconds = time.perf_counter() - t
            table[key] = {"sampler": sampler, "eta": eta, "steps": steps, "seconds": seconds, **quality(net, x)}
            print(key, json.dumps(table[key]))
            storage.write_json(result_path, result)
    if "bound_bits_per_dim" not in result:
        ev = evaluate(model, load_dataset("mnist"), EvalConfig(n=args.bound_n), torch.device("cpu"),
                      progress=sys.stderr.isatty())
        result["bound_bits_per_dim"] = ev["neg_elbo_bits_per_dim"]
        result["bound_n_examples"] = ev["n_examples"]
        storage.write_json(result_path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "machine")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
