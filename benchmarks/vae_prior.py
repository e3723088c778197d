"""Benchmark: a VAE's samples with z from N(0, I) against z from mixtures fitted to its training posteriors.

    python benchmarks/vae_prior.py [--run zoo:vae-mnist] [--components 0 10 20 50] [--fid-n 10000] [--threads 1]

For each K (0 = the N(0, I) prior the model was trained with) the trained weights get a mixture of K
full-covariance Gaussians fitted to the posterior means of every training image (``--prior-components K``, as
training with it would fit at its end; ex-post density estimation, Ghosh et al. 2020), and FID/KID of --fid-n
samples are measured against the test split in the family's reference (binary for the Bernoulli VAE: samples are
Bernoulli draws of the decoder's means). The weights are the same in every row: only the sampling prior changes.
Writes benchmarks/results/vae_prior.json after each K.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from genzoo import runs, storage
from genzoo.devices import describe_machine
from genzoo.evaluate import eval_tensor, sample_quality

RESULT = Path(__file__).parent / "results" / "vae_prior.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="zoo:vae-mnist")
    p.add_argument("--components", nargs="+", type=int, default=[0, 10, 20, 50])
    p.add_argument("--fid-n", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = runs.load_run(args.run)
    data = runs.run_data(run.config)
    train_x = eval_tensor(run.model, data, "train")
    rows = []
    for k in args.components:
        tick = time.perf_counter()
        model = run.model.with_prior(k, train_x)  # the same weights; the mixture (if any) fitted anew
        fit_s = time.perf_counter() - tick
        q = sample_quality(model, data, args.fid_n)
        rows.append({"components": k, "fit_seconds": fit_s, "fid": q["fid"], "kid": q["kid"],
                     "kid_stderr": q.get("kid_stderr"), "reference": q.get("reference"), "n": args.fid_n})
        print(f"K = {k:>3}: FID {q['fid']:.2f}, KID {q['kid']:.2f} (fit {fit_s:.1f} s)", flush=True)
        storage.write_json(RESULT, {"benchmark": "vae_prior", "date": datetime.date.today().isoformat(),
                                    "machine": describe_machine(), "run": args.run, "rows": rows,
                                    "command": "python benchmarks/vae_prior.py " + " ".join(sys.argv[1:])})
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
