"""Benchmark: an EBM's samples by SGLD from uniform noise for several chain lengths, against its replay buffer.

    python benchmarks/ebm_sampling.py [--run zoo:ebm-mnist] [--steps 64 256 1024] [--fid-n 1000]
                                      [--buffer CHECKPOINT] [--threads 1]

A model trained with a replay buffer (Du & Mordatch 2019) is sampled from noise with ``--sample-steps`` SGLD
steps; its buffer's chains, continued at every training step while the energy moved under them, are what it
learned to push energy up on. This measures both: FID/KID of --fid-n samples from noise for each step count
(the same weights, the same seed), and FID/KID of the buffer's chains in a run's checkpoint (``--buffer``: the
checkpoint of the training run, which holds all its chains; the zoo ships only 256). Nijkamp et al. (2019) found
that long chains from noise leave the data for such models (over-saturated images) while short chains have not
yet arrived: the step count that scores best is the one to sample with. Writes benchmarks/results/ebm_sampling.json
after each row.
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
from genzoo.evaluate import default_reference, sample_quality, score_images

RESULT = Path(__file__).parent / "results" / "ebm_sampling.json"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="zoo:ebm-mnist")
    p.add_argument("--steps", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--fid-n", type=int, default=1000)
    p.add_argument("--buffer", type=Path, help="a training run's checkpoint.safetensors: score its replay buffer")
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = runs.load_run(args.run)
    if run.model.family != "ebm":
        print(f"{args.run} is a {run.model.family}, not an ebm.", file=sys.stderr)
        return 2
    data = runs.run_data(run.config)
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        print(f"{row['source']}: FID {row['fid']:.1f}, KID {row['kid']:.1f} ({row['seconds']:.0f} s)", flush=True)
        storage.write_json(args.out, {"benchmark": "ebm_sampling", "date": datetime.date.today().isoformat(),
                                      "machine": describe_machine(), "run": args.run, "rows": rows,
                                      "command": "python benchmarks/ebm_sampling.py " + " ".join(sys.argv[1:])})

    if args.buffer is not None:
        tensors, _ = storage.load_tensors(args.buffer)
        if "model.replay" not in tensors:
            print(f"{args.buffer} holds no replay buffer (no 'model.replay').", file=sys.stderr)
            return 2
        tick = time.perf_counter()
        chains = run.model.to_data(tensors["model.replay"].float())
        q = score_images(chains, data.name, default_reference(run.model), 500)
        record({"source": f"replay buffer ({len(chains)} chains)", "steps": None, "n": len(chains),
                "fid": q["fid"], "kid": q["kid"], "seconds": time.perf_counter() - tick})
    for steps in args.steps:
        tick = time.perf_counter()  # sample_quality draws from its own seeded generator: the same noise each row
        q = sample_quality(run.model, data, args.fid_n, steps=steps)
        record({"source": f"{steps} SGLD steps from noise", "steps": steps, "n": args.fid_n, "fid": q["fid"],
                "kid": q["kid"], "kid_stderr": q.get("kid_stderr"), "seconds": time.perf_counter() - tick})
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
