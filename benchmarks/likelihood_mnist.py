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
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from budget import RESULTS, add_budget_arguments, train_within_budget  # noqa: E402

from genzoo import runs, storage  # noqa: E402
from genzoo.config import EvalConfig  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.devices import describe_machine  # noqa: E402
from genzoo.evaluate import evaluate  # noqa: E402

PUBLISHED = {"pixelcnn": {"figure": 81.30, "unit": "nats", "source": "van den Oord et al. 2016 (PixelRNN), Table 4"},
             "realnvp": {"figure": 1.06, "unit": "bits/dim", "source": "Dinh et al. 2017 as tabulated by Grathwohl "
                                                                      "et al. 2019 (FFJORD), Table 2"}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=tuple(PUBLISHED))
    add_budget_arguments(p, epochs=6, budget_minutes=60.0, precision="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test-n", type=int, default=0, help="test images to score (0 = all 10,000)")
    args = p.parse_args()
    name, run_dir, cfg, summary = train_within_budget(args.family, args, eval_n=500, batch_size=args.batch_size)
    curve = [{k: row[k] for k in row if k.startswith("val_") or k in ("epoch", "step", "train_loss", "partial")}
             for row in runs.read_metrics(run_dir)]
    model = runs.load_run(run_dir).model
    ev = evaluate(model, load_dataset("mnist"), EvalConfig(n=args.test_n), torch.device("cpu"),
                  progress=sys.stderr.isatty())
    result = {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": describe_machine(),
              "command": f"python benchmarks/likelihood_mnist.py {' '.join(sys.argv[1:])}",
              "config": cfg.to_json(), "parameters": summary["parameters"],
              "finished": summary["finished"], "epochs_completed": summary["epochs_completed"], "steps": summary["steps"],
              "train_minutes": summary["train_wall_time_s"] / 60, "train_images_per_s": summary["images_per_s"],
              "curve": curve, "test": ev, "published": PUBLISHED[args.family]}
    storage.write_json(RESULTS / f"{name}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "machine", "curve")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
