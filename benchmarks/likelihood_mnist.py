"""Benchmark: an exact-likelihood family (PixelCNN, RealNVP) on MNIST within a CPU budget; test NLL on all 10,000
test images.

    python benchmarks/likelihood_mnist.py pixelcnn --epochs 6 --budget-minutes 60      # binarised MNIST, nats
    python benchmarks/likelihood_mnist.py realnvp --epochs 6 --budget-minutes 60       # 8-bit MNIST, bits/dim

Resumable: run the same command again and training continues from the checkpoint (a larger --budget-minutes
extends it). Writes benchmarks/results/FAMILY_mnist[-TAG].json with the per-epoch validation curve, the training
time and throughput, and the test figure with its standard error. Published figures to compare with:
PixelCNN 81.30 nats on binarised MNIST (van den Oord et al. 2016, PixelRNN paper, Table 4); RealNVP 1.06,
Glow 1.05, FFJORD 0.99 bits/dim on 8-bit MNIST (as tabulated by Grathwohl et al. 2019).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from vae_mnist import machine  # noqa: E402

from genzoo import runs  # noqa: E402
from genzoo.config import EvalConfig, TrainConfig  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.evaluate import evaluate  # noqa: E402
from genzoo.models import get_family  # noqa: E402
from genzoo.trainer import train_run  # noqa: E402

HERE = Path(__file__).parent
PUBLISHED = {"pixelcnn": {"figure": 81.30, "unit": "nats", "source": "van den Oord et al. 2016 (PixelRNN), Table 4"},
             "realnvp": {"figure": 1.06, "unit": "bits/dim", "source": "Dinh et al. 2017 as tabulated by Grathwohl "
                                                                      "et al. 2019 (FFJORD), Table 2"}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=tuple(PUBLISHED))
    p.add_argument("--epochs", type=int, default=6, help="epochs of the cosine schedule")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="training time limit, resumes included")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--model", default="{}", help="model options as JSON, e.g. '{\"channels\": 64}'")
    p.add_argument("--test-n", type=int, default=0, help="test images to score (0 = all 10,000)")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    family = get_family(args.family)
    name = f"{args.family}_mnist" + (f"-{args.tag}" if args.tag else "")
    run_dir, result_path = HERE / "results" / name, HERE / "results" / f"{name}.json"
    train = {**family.train_defaults, "epochs": args.epochs, "batch_size": args.batch_size,
             "time_limit": args.budget_minutes, "precision": args.precision}
    cfg = runs.RunConfig(family=args.family, model=family.Config(**json.loads(args.model)),
                         train=TrainConfig(**train), eval=EvalConfig(n=500))
    resume = (run_dir / runs.CHECKPOINT).is_file()
    if resume:  # only the budget and the epochs may change between resumptions
        saved = runs.read_config(run_dir)
        cfg = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=args.epochs,
                                                                   time_limit=args.budget_minutes))
    summary = train_run(cfg, run_dir, resume=resume, log=print, progress_bar=sys.stderr.isatty())
    curve = [{k: row[k] for k in row if k.startswith("val_") or k in ("epoch", "step", "train_loss", "partial")}
             for row in runs.read_metrics(run_dir)]
    model = runs.load_run(run_dir).model
    ev = evaluate(model, load_dataset("mnist"), EvalConfig(n=args.test_n), torch.device("cpu"),
                  progress=sys.stderr.isatty())
    result = {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": machine(),
              "command": f"python benchmarks/likelihood_mnist.py {' '.join(sys.argv[1:])}",
              "config": cfg.to_json(), "parameters": summary["parameters"],
              "finished": summary["finished"], "epochs_completed": summary["epochs_completed"], "steps": summary["steps"],
              "train_minutes": summary["train_wall_time_s"] / 60, "train_images_per_s": summary["images_per_s"],
              "curve": curve, "test": ev, "published": PUBLISHED[args.family]}
    runs.write_json(result_path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "machine", "curve")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
