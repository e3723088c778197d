"""Benchmark: training throughput of every family, and the share of the machine's matmul peak it reaches.

    python benchmarks/throughput.py [--families ddpm flow ...] [--precisions fp32 bf16] [--threads 2]
    python benchmarks/throughput.py --families ddpm --precisions bf16 --compile eager compiled   (torch.compile's gain)

For each family (its default configuration, batch 128 of real MNIST in the family's view) and precision: images
per second of whole optimizer steps (forward, backward, Adam), the floating-point operations of one step counted
by torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions), and so the achieved GFLOP/s, beside the
fp32 and bf16 peaks of a 2048 x 2048 matmul measured in the same run. bf16 is measured only where it is native
(``devices.bf16_supported``) unless named. With --compile compiled, the networks run through torch.compile (as
``genzoo train --compile true``): the first step's seconds (the compiling) are recorded apart, and the FLOPs are
counted on an eager step (inductor's kernels bypass the counter). Writes benchmarks/results/throughput[-TAG].json.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from genzoo import runs, storage
from genzoo.data import load_dataset
from genzoo.data.views import get_view
from genzoo.devices import (autocast, bf16_supported, channels_last_for, compile_networks, describe_machine,
                            keep_freed_memory, set_channels_last)
from genzoo.models import FAMILIES
from genzoo.trainer import adam

RESULT = Path(__file__).parent / "results" / "throughput.json"


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``, best of repeated timings."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        tick = time.perf_counter()
        a @ b
        took = time.perf_counter() - tick
        best, spent = min(best, took), spent + took
    return 2 * n ** 3 / best / 1e9


def family_throughput(name: str, precision: str, batch: int, seconds: float, kernel: str = "fused",
                      mode: str = "eager") -> dict:
    torch.manual_seed(0)
    cfg = runs.new_config(name)
    data = load_dataset("mnist")
    model = runs.build_model(cfg, data.image_shape)
    set_channels_last(model, channels_last_for(precision, torch.device("cpu")))
    model.train()
    # the trainer's optimizer, or torch's default foreach kernel that genzoo trained with before
    make = adam if kernel == "fused" else (lambda params, device, **options: torch.optim.Adam(params, **options))
    optimizers = {p: make(model.player_parameters(p), torch.device("cpu"), lr=1e-4, **model.optimizer_options)
                  for p in model.players}
    g = torch.Generator().manual_seed(0)
    x = get_view(model.view).train_batch(data.train.images[:batch], g)
    y = data.train.labels[:batch]

    def update(player, losses):
        optimizers[player].zero_grad(set_to_none=True)
        with torch.autocast("cpu", enabled=False):
            losses.float().mean().backward()
        optimizers[player].step()
        return losses.detach().float().mean().item()

    def step(i):
        with autocast(precision, torch.device("cpu")):
            model.train_step(x, y, i, update, model)

    compiled = compile_networks(model) if mode == "compiled" else []
    tick = time.perf_counter()
    step(0)  # warm-up (first-call allocations, oneDNN kernel choice; the compiling)
    first_step_s = time.perf_counter() - tick
    try:
        with FlopCounterMode(display=False) as counter, torch.compiler.set_stance("force_eager"):
            step(1)
        flops = counter.get_total_flops() / batch
    except RuntimeError:  # the EBM's Langevin steps call autograd.grad, which the flop counter cannot follow
        flops = float("nan")
    steps, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds or steps < 2:
        step(2 + steps)
        steps += 1
    images_per_s = steps * batch / (time.perf_counter() - tick)
    return {"family": name, "precision": precision, "adam": kernel, "mode": mode, "compiled": compiled,
            "first_step_s": first_step_s, "batch": batch, "steps_timed": steps,
            "images_per_s": images_per_s, "gflop_per_image": flops / 1e9,
            "achieved_gflop_per_s": images_per_s * flops / 1e9 if flops == flops else None,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "bf16"),
                   help="default: fp32, and bf16 where it is native")
    p.add_argument("--adam", nargs="+", default=["fused"], choices=("fused", "foreach"),
                   help="Adam's kernel: fused (the trainer's) and/or foreach (torch's default), side by side")
    p.add_argument("--compile", nargs="+", default=["eager"], choices=("eager", "compiled"),
                   help="the networks eager and/or through torch.compile, side by side")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=20.0, help="timing per family and precision")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--merge", action="store_true", help="keep the other families' rows of an earlier result")
    p.add_argument("--tag", default="", help="results go to throughput-TAG.json (e.g. the machine's kind)")
    args = p.parse_args()
    result_path = RESULT.with_name(f"throughput-{args.tag}.json") if args.tag else RESULT
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every genzoo command runs
    native = bf16_supported(torch.device("cpu"))
    precisions = args.precisions or (["fp32", "bf16"] if native else ["fp32"])
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    for name, precision, kernel, mode in itertools.product(args.families, precisions, args.adam, args.compile):
        row = family_throughput(name, precision, args.batch_size, args.seconds, kernel, mode)
        achieved = row["achieved_gflop_per_s"]
        row["share_of_peak"] = achieved / peaks[precision] if achieved is not None else None
        rows.append(row)
        print(f"{name:<9} {precision} {kernel:<7} {mode:<8} {row['images_per_s']:8.1f} img/s  "
              f"{row['gflop_per_image']:6.3f} GFLOP/img  "
              + (f"{achieved:7.1f} GFLOP/s  {100 * row['share_of_peak']:5.1f} % of the {precision} peak"
                 if achieved is not None else "FLOPs not countable"), flush=True)
    result = {"benchmark": "throughput", "date": datetime.date.today().isoformat(), "machine": describe_machine(),
              "threads": torch.get_num_threads(), "bf16_native": native,
              "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
              "matmul_peak_gflop_per_s": peaks, "rows": rows}
    if args.merge and result_path.is_file():  # keep the rows of families not measured this time
        # rows written before a key existed: foreach, eager
        key = lambda r: (r["family"], r["precision"], r.get("adam", "foreach"), r.get("mode", "eager"))
        measured = {key(r) for r in rows}
        kept = [r for r in storage.read_json(result_path).get("rows", []) if key(r) not in measured]
        result["rows"] = kept + rows
    storage.write_json(result_path, result)
    print(json.dumps({"matmul_peak_gflop_per_s": peaks, "machine": result["machine"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
