"""Benchmark: a sample-only family (GAN, EBM) on MNIST within a CPU budget; sample quality by the classifier
stand-in of sample_quality.py (NOT FID: the evaluation issue ships FID).

    python benchmarks/samples_mnist.py gan --epochs 10 --budget-minutes 30
    python benchmarks/samples_mnist.py ebm --epochs 2 --budget-minutes 30

Resumable: the same command continues from the checkpoint. Writes benchmarks/results/FAMILY_mnist[-TAG].json with
the per-epoch validation diagnostics (for the GAN: D(x), D(G(z)), spreads, warnings), the training time and the
quality of 100 samples beside that of 100 real test digits.
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
from sample_quality import classifier, quality  # noqa: E402
from vae_mnist import machine  # noqa: E402

from genzoo import runs  # noqa: E402
from genzoo.config import EvalConfig, TrainConfig  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.models import get_family  # noqa: E402
from genzoo.trainer import train_run  # noqa: E402

HERE = Path(__file__).parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=("gan", "ebm"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--budget-minutes", type=float, default=30.0)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--model", default="{}", help="model options as JSON")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    family = get_family(args.family)
    name = f"{args.family}_mnist" + (f"-{args.tag}" if args.tag else "")
    run_dir, result_path = HERE / "results" / name, HERE / "results" / f"{name}.json"
    train = {**family.train_defaults, "epochs": args.epochs, "time_limit": args.budget_minutes,
             "precision": args.precision}
    cfg = runs.RunConfig(family=args.family, model=family.Config(**json.loads(args.model)),
                         train=TrainConfig(**train), eval=EvalConfig(n=100))
    resume = (run_dir / runs.CHECKPOINT).is_file()
    if resume:
        saved = runs.read_config(run_dir)
        cfg = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=args.epochs,
                                                                   time_limit=args.budget_minutes))
    summary = train_run(cfg, run_dir, resume=resume, log=print, progress_bar=sys.stderr.isatty())
    model = runs.load_run(run_dir).model
    net, accuracy = classifier()
    samples = model.sample(100, torch.Generator().manual_seed(0))
    real = load_dataset("mnist").test.images[:100].float() / 255
    result = {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": machine(),
              "command": f"python benchmarks/samples_mnist.py {' '.join(sys.argv[1:])}", "config": cfg.to_json(),
              "parameters": summary["parameters"], "finished": summary["finished"],
              "epochs_completed": summary["epochs_completed"], "steps": summary["steps"],
              "train_minutes": summary["train_wall_time_s"] / 60, "train_images_per_s": summary["images_per_s"],
              "curve": [{k: v for k, v in row.items() if k.startswith("val_") or k in ("epoch", "step", "warnings")}
                        for row in runs.read_metrics(run_dir)],
              "quality_metric": "stand-in: small MNIST classifier confidence and label entropy, not FID",
              "classifier_test_accuracy": accuracy, "quality_samples": quality(net, samples),
              "quality_real_test_images": quality(net, real)}
    runs.write_json(result_path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
