"""Benchmark: a sample-only family (GAN, EBM) on MNIST within a CPU budget; sample quality by FID and KID of
--fid-n samples (genzoo.evaluate.sample_quality), and by the confidence and label spread of genzoo's MNIST
classifier on 100 samples beside 100 real test digits (sample_quality.py).

    python benchmarks/samples_mnist.py gan --epochs 10 --budget-minutes 30
    python benchmarks/samples_mnist.py ebm --epochs 2 --budget-minutes 30

Resumable: the same command continues from the checkpoint. Writes benchmarks/results/FAMILY_mnist[-TAG].json with
the per-epoch validation diagnostics (for the GAN: D(x), D(G(z)), spreads, warnings), the training time and the
quality of 100 samples beside that of 100 real test digits.
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
from sample_quality import classifier, quality  # noqa: E402

from genzoo import runs, storage  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.devices import describe_machine  # noqa: E402
from genzoo.evaluate import sample_quality  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=("gan", "ebm"))
    add_budget_arguments(p, epochs=10, budget_minutes=30.0, precision="auto")
    p.add_argument("--fid-n", type=int, default=10_000, help="samples for FID and KID (default 10,000)")
    args = p.parse_args()
    name, run_dir, cfg, summary = train_within_budget(args.family, args, eval_n=100)
    model = runs.load_run(run_dir).model
    net, accuracy = classifier()
    samples = model.sample(100, torch.Generator().manual_seed(0))
    data = load_dataset("mnist")
    real = data.test.images[:100].float() / 255
    fid = sample_quality(model, data, args.fid_n)
    storage.write_json(run_dir / runs.FID_EVAL, fid)  # what `genzoo eval RUN --fid` writes: `genzoo bench` reuses it
    result = {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": describe_machine(),
              "command": f"python benchmarks/samples_mnist.py {' '.join(sys.argv[1:])}", "config": cfg.to_json(),
              "parameters": summary["parameters"], "finished": summary["finished"],
              "epochs_completed": summary["epochs_completed"], "steps": summary["steps"],
              "train_minutes": summary["train_wall_time_s"] / 60, "train_images_per_s": summary["images_per_s"],
              "curve": [{k: v for k, v in row.items() if k.startswith("val_") or k in ("epoch", "step", "warnings")}
                        for row in runs.read_metrics(run_dir)],
              "fid": fid, "classifier_test_accuracy": accuracy, "quality_samples": quality(net, samples),
              "quality_real_test_images": quality(net, real)}
    storage.write_json(RESULTS / f"{name}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
