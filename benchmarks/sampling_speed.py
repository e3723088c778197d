"""Benchmark: how long 100 samples take by sampler, steps and precision, and what the faster settings cost in FID.

    python benchmarks/sampling_speed.py --threads 2 --fid-n 0                    (timing only: give it the machine)
    python benchmarks/sampling_speed.py --threads 1 --repeats 0 --fid-n 2000 --merge      (FID only, beside a run)

For each model (a run folder or zoo:NAME; default the zoo's DDPM and flow models), each sampler (NAME:STEPS) and
each precision (fp32, and bf16 autocast of the network's forward passes, each in the layout it is faster in, as
``genzoo sample --precision`` runs them): the median wall-clock seconds of drawing 100 samples over --repeats
draws after one warm-up draw, the network evaluations that took, and FID/KID of --fid-n samples (genzoo's feature
space, the float reference, the zoo's scoring labels: every class in turn). Writes
benchmarks/results/sampling_speed.json; with --merge, entries of an earlier result that this run did not measure
are kept, and a measured entry keeps the other half (timing or FID) of the earlier one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from diffusion_budget import parse_sampler  # noqa: E402
from genzoo import runs  # noqa: E402
from genzoo.data import load_dataset  # noqa: E402
from genzoo.devices import (autocast, bf16_supported, channels_last_for, describe_machine,  # noqa: E402
                            keep_freed_memory, set_channels_last)
from genzoo.evaluate import EVAL_SEED, sample_quality  # noqa: E402

RESULT = Path(__file__).parent / "results" / "sampling_speed.json"
CPU = torch.device("cpu")
DEFAULT_SAMPLERS = {"ddpm": ["dpm++2m:20", "ddim:20", "ddim:100"], "flow": ["heun:10", "euler:20", "midpoint:10"]}


class CountingNet(torch.nn.Module):
    """Wraps a network and counts its forward passes (a guided evaluation of a batch counts once)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0
        self.num_classes = getattr(net, "num_classes", 0)

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def time_sampling(model, sampler: dict, precision: str, n: int, repeats: int) -> dict:
    labels = model.scoring_labels(n, CPU)
    options = {**sampler, **({"y": labels} if labels is not None else {})}
    counter = CountingNet(model.net)
    model.net, seconds = counter, []
    try:
        for i in range(repeats + 1):  # the first draw warms up oneDNN's kernel caches and is not counted
            gen = torch.Generator().manual_seed(EVAL_SEED + i)
            counter.calls = 0
            start = time.perf_counter()
            with autocast(precision, CPU):
                x = model.sample(n, gen, **options)
            seconds.append(time.perf_counter() - start)
            assert torch.isfinite(x.float()).all()
    finally:
        model.net = counter.net
    return {"seconds_per_100": statistics.median(seconds[1:]) * 100 / n, "all_seconds": seconds[1:],
            "network_evaluations": counter.calls, "n": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["zoo:ddpm-mnist", "zoo:flow-mnist"])
    p.add_argument("--samplers", nargs="+", default=None, help="NAME:STEPS (default: by family)")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="default: fp32, and bf16 where it is native")
    p.add_argument("--n", type=int, default=100, help="samples per timed draw")
    p.add_argument("--repeats", type=int, default=3, help="timed draws (0 = no timing)")
    p.add_argument("--fid-n", type=int, default=2000, help="samples for FID/KID (0 = no FID)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--merge", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every genzoo command runs
    precisions = args.precisions or (["fp32", "bf16"] if bf16_supported(CPU) else ["fp32"])
    old = json.loads(RESULT.read_text()) if args.merge and RESULT.is_file() else {"entries": []}
    entries = {(e["model"], e["sampler"], e["steps"], e["precision"]): e for e in old["entries"]}
    for name in args.models:
        run = runs.load_run(name, device=CPU)
        model = run.model
        data = load_dataset(run.config.train.dataset) if args.fid_n else None
        for text in args.samplers or DEFAULT_SAMPLERS[model.family]:
            sampler = parse_sampler(text)
            for precision in precisions:
                set_channels_last(model, channels_last_for(precision, CPU))  # as genzoo sample does
                key = (name, sampler["sampler"], sampler["steps"], precision)
                entry = {**entries.get(key, {}), "model": name, "sampler": sampler["sampler"],
                         "steps": sampler["steps"], "precision": precision}
                if args.repeats:
                    entry.update(time_sampling(model, sampler, precision, args.n, args.repeats),
                                 timing_threads=torch.get_num_threads())
                if args.fid_n:
                    start = time.perf_counter()
                    with autocast(precision, CPU):
                        q = sample_quality(model, data, args.fid_n, CPU, **sampler)
                    entry.update(fid=q["fid"], kid=q["kid"], kid_stderr=q["kid_stderr"], fid_n=args.fid_n,
                                 fid_seconds=time.perf_counter() - start)
                entries[key] = entry
                print(json.dumps({k: v for k, v in entry.items() if k != "all_seconds"}), flush=True)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    commands = old.get("commands", []) + ["python " + " ".join(sys.argv)]  # a merged result lists every run's
    RESULT.write_text(json.dumps({"commands": commands, "machine": describe_machine(),
                                  "date": datetime.date.today().isoformat(), "entries": list(entries.values())},
                                 indent=2) + "\n")


if __name__ == "__main__":
    main()
