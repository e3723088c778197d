"""Benchmark: FID of an EBM's weights saved at several steps of one training, against the validation split.

    python benchmarks/ebm_snapshots.py RUN SNAPSHOTS_DIR [--fid-n 1000] [--steps 256] [--threads 1]

An EBM trained by contrastive divergence does not settle: its energy moves with the chains it is trained on, and
the samples of weights 50 steps apart can score FID 150 and 640 (BENCHMARKS.md, "Fine-tuning the zoo's EBM"). So
the weights to keep are chosen the way a training's best epoch is: SNAPSHOTS_DIR holds STEP.safetensors files (the
run's model.safetensors copied after each sitting of `genzoo train ... --resume --max-steps STEP`), and each is
scored by the FID of --fid-n samples (--steps SGLD steps from noise, genzoo's evaluation seed) against the
*validation* split's features, so that the test split stays for the figure of the chosen weights. The test FID of
the same samples is written too, for the record. Rows already in the output are not scored again.
Writes benchmarks/results/ebm_snapshots.json after each row.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from genzoo import features, quality, runs, storage
from genzoo.devices import describe_machine
from genzoo.evaluate import draw_samples

RESULT = Path(__file__).parent / "results" / "ebm_snapshots.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the training's run folder (its config.json builds the model)")
    p.add_argument("snapshots", type=Path, help="a folder of STEP.safetensors weights of that run")
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=256, help="SGLD steps from noise per sample")
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = runs.load_run(args.run)
    if run.model.family != "ebm":
        print(f"{args.run} is a {run.model.family}, not an ebm.", file=sys.stderr)
        return 2
    snapshots = sorted(args.snapshots.glob("*.safetensors"), key=lambda s: int(s.stem))
    if not snapshots:
        print(f"{args.snapshots} holds no STEP.safetensors files.", file=sys.stderr)
        return 2
    data = runs.run_data(run.config)
    name, shape = data.name, features.image_shape(data.name)
    net = features.feature_net(name)
    val = quality.gaussian_statistics(features.features(net, features.reference_images(data, "float", "val"), 500,
                                                        shape))
    test_mean, test_cov, _ = features.reference(name, "float")
    previous = storage.read_json(args.out) if args.out.is_file() else {}
    rows = [r for r in previous.get("rows", []) if previous.get("run") == str(args.run)]
    done = {(r["step"], r["sgld_steps"], r["n"]) for r in rows}
    for snapshot in snapshots:
        step = int(snapshot.stem)
        if (step, args.steps, args.fid_n) in done:
            continue
        tick = time.perf_counter()
        tensors, _ = storage.load_tensors(snapshot)
        storage.load_weights(run.model, tensors, snapshot)
        samples, _ = draw_samples(run.model, args.fid_n, torch.device("cpu"), steps=args.steps)
        stats = quality.gaussian_statistics(features.features(net, samples, 500, shape))
        row = {"step": step, "sgld_steps": args.steps, "n": args.fid_n,
               "val_fid": quality.frechet_distance(*stats, *val),
               "test_fid": quality.frechet_distance(*stats, test_mean, test_cov), "seconds": time.perf_counter() - tick}
        print(f"step {step}: val FID {row['val_fid']:.1f}, test FID {row['test_fid']:.1f}", flush=True)
        rows = sorted([*rows, row], key=lambda r: (r["step"], r["sgld_steps"]))
        storage.write_json(args.out, {"benchmark": "ebm_snapshots", "date": datetime.date.today().isoformat(),
                                      "machine": describe_machine(), "run": str(args.run), "rows": rows,
                                      "command": "python benchmarks/ebm_snapshots.py " + " ".join(sys.argv[1:])})
    best = min(rows, key=lambda r: r["val_fid"])
    print(f"best by val FID: step {best['step']} (val {best['val_fid']:.1f}, test {best['test_fid']:.1f}, "
          f"{best['n']} samples of {best['sgld_steps']} SGLD steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
