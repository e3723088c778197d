"""Put a finished run into the zoo: pack it (half-precision weights, its JSON and pictures), score the packed
weights on the full protocol, and write the model card from those scores.

    python scripts/zoo_add.py RUN NAME --command "genzoo train vae --out runs/vae-mnist" [--fid-n 10000]
        [--sampler ddim --steps 50] [--guidance 1.5] [--temperature 0.8] [--eval-n 0] [--iwae-k 1000] [--threads 1]

Figures are measured on the packed copy (half precision), not on the run, so the card describes what users load: the
likelihood the family's kind allows on --eval-n test images (0 = all 10,000), and FID/KID of --fid-n samples in
genzoo's feature space (a class-conditional model: every class in turn, with --guidance). The card also holds
the training command, genzoo's version and commit, the CPU time, the machine and the date. The pictures are
drawn again from the packed weights at full quality (a long run trained with --final-eval skip drew quick ones).
A run that fine-tuned another (``--init-from``) carries its source's card (or training summary) under
``fine_tuned_from``, and its ``cpu_hours`` count both trainings.

    python scripts/zoo_add.py --redraw NAME

only redraws the pictures of zoo model NAME (after a family gained a picture) and rewrites its index entry.

    python scripts/zoo_add.py --rescore NAME [--eval-n 0] [--bound-t 50] [--ode-nll false] [--ode-tol 1e-4]
        [--partial PATH]

measures the likelihood of the shipped model NAME again (e.g. on all 10,000 test images where the card had 200):
the card's likelihood figures of the same name and unit are replaced, the others (FID, KID, an ODE NLL not
measured again) kept; the card records the rescoring's command, machine and date.

    python scripts/zoo_add.py --repack NAME --storage int8 [--iwae-k 1000] [--fid-n 10000] [sampler flags]

stores zoo model NAME's weights again as --storage (int8: the large weights in 8 bits with a scale per output
unit, to keep the zoo small) and measures on that copy again what the card had measured with --eval-n/--iwae-k and
--fid-n (give the card's sampler flags): its likelihood and FID/KID figures are replaced, any other kept; the card
records the repack's command, machine and date. The entry is replaced only once every figure is in.

    python scripts/zoo_add.py --refit-prior NAME --components 20 [--fid-n 10000]

gives the shipped VAE NAME a sampling mixture of K Gaussians fitted to its training images' posterior means
(``--prior-components``; the weights and so the likelihoods unchanged), redraws its pictures and measures its
FID/KID again on the packed weights; the card records the refit's command, machine and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from genzoo import __version__, runs, storage, zoo
from genzoo.cli import add_sampler_options, sampler_options
from genzoo.models import get_family
from genzoo.config import EvalConfig, parse_bool
from genzoo.devices import describe_machine
from genzoo.evaluate import eval_tensor, evaluate, sample_quality
from genzoo.trainer import draw_pictures


def likelihood_figures(ev: dict) -> list[dict]:
    figures = []
    for key, value in ev.items():
        if key.endswith("_nats") and f"{key}_stderr" in ev:
            what = {"neg_elbo": "-ELBO", "nll": "NLL", "nll_ode": "NLL (ODE)", "nll_ais": "NLL (AIS)"}.get(key[:-5],
                                                                                                       key[:-5])
            how = ev.get(f"{key[:-5]}_estimator")  # e.g. the IWAE's k, the ODE's solver, the bound's stratified steps
            figures.append({"name": what, "value": round(value, 3), "stderr": round(ev[f"{key}_stderr"], 3),
                            "unit": "nats", "n": ev["n_examples"], "reference": f"{ev['dataset']} {ev['split']}",
                            **({"estimator": how} if how else {})})
            bits = ev.get(f"{key[:-5]}_bits_per_dim")
            if bits is not None:
                figures.append({"name": what, "value": round(bits, 4), "unit": "bits/dim", "n": ev["n_examples"],
                                "reference": f"{ev['dataset']} {ev['split']}"})
    return figures


def eval_config(run: runs.Run, args) -> EvalConfig:
    """The likelihood settings of ``args`` over the family's evaluation defaults."""
    return EvalConfig(**{**type(run.model).eval_defaults, "n": args.eval_n, "iwae_k": args.iwae_k,
                         "ode_steps": args.ode_steps, "ode_tol": args.ode_tol, "bound_t": args.bound_t,
                         "ode_nll": args.ode_nll})


def replace_figures(card: dict, new: list[dict]) -> None:
    """Put ``new`` in ``card`` in place of its figures of the same name and unit; the others are kept."""
    again = {(f["name"], f["unit"]) for f in new}
    card["figures"] = new + [f for f in card["figures"] if (f["name"], f["unit"]) not in again]


def record_rescoring(card: dict, what: str | None = None) -> None:
    """Add to ``card`` that this command measured it again: the command, ``what`` changed, the machine, the date."""
    card.setdefault("rescored", []).append({"command": "python scripts/zoo_add.py " + " ".join(sys.argv[1:]),
                                            **({"what": what} if what else {}), "machine": describe_machine(),
                                            "date": datetime.date.today().isoformat()})


def figures_line(figures: list[dict]) -> str:
    return "; ".join(f"{f['name']} {f['value']} {f['unit']} (n={f['n']})" for f in figures)


def score(run: runs.Run, args, card: dict, likelihood: bool = True) -> dict[str, dict]:
    """Score a packed model on the protocol of ``args`` (without ``likelihood``: FID/KID only), adding the figures
    to ``card``; returns its result files ({file name: JSON}). The pictures are drawn again into the folder
    ``args.run``, which the final pack copies."""
    device = torch.device(args.device)
    run.model.to(device)
    sampler = sampler_options(args, run.model, device, args.fid_n)  # checked against the family's declaration first
    data = runs.run_data(run.config)
    draw_pictures(run.model, data, args.run, device)
    results = {}
    if likelihood:
        ev = evaluate(run.model, data, eval_config(run, args), device, log=print)
        card["figures"] += likelihood_figures(ev)
        results[runs.eval_file("test")] = ev
    if args.fid_n:
        q = sample_quality(run.model, data, args.fid_n, device, **sampler)
        results[runs.FID_EVAL] = q
        for what in ("fid", "kid"):
            card["figures"].append({"name": what.upper(), "value": round(q[what], 4 if what == "kid" else 2),
                                    **({"stderr": round(q["kid_stderr"], 4)} if what == "kid" else {}),
                                    "unit": "", "n": q["n_samples"],
                                    "reference": f"{run.config.train.dataset} test, {q['reference_view']} view, "
                                                 f"genzoo features", "sampler": q["sampler"],
                                    **({"labels": q["labels"]} if "labels" in q else {})})
    return results


def rescore(name: str, args) -> int:
    """Measure zoo model ``name``'s likelihood again with ``args``' settings and update its card in place."""
    run = runs.load_run(zoo.PREFIX + name)  # verified against the index before anything is rewritten
    folder = zoo.ROOT / name
    device = torch.device(args.device)
    ev = evaluate(run.model.to(device), runs.run_data(run.config), eval_config(run, args), device, log=print,
                  partial=args.partial)
    new = likelihood_figures(ev)
    if not new:
        print(f"zoo:{name}: its family has no likelihood to measure.", file=sys.stderr)
        return 2
    card = storage.read_json(folder / zoo.CARD)
    replace_figures(card, new)
    record_rescoring(card)
    storage.write_json(folder / zoo.CARD, card)
    storage.write_json(folder / runs.eval_file("test"), ev)
    zoo.reindex(name)
    print(f"zoo:{name}: " + figures_line(new))
    return 0


def repack(name: str, stored_as: str, args) -> int:
    """Store zoo model ``name``'s weights as ``stored_as`` and measure its figures again on the stored copy, before
    the zoo's entry is replaced."""
    run = runs.load_run(zoo.PREFIX + name)  # verified against the index before anything is rewritten
    folder = zoo.ROOT / name
    card = storage.read_json(folder / zoo.CARD)
    with tempfile.TemporaryDirectory(prefix="zoo-repack-") as staging:
        source = Path(staging) / "run"  # the entry as a run folder of fp32 weights (restored from their storage)
        shutil.copytree(folder, source)
        storage.save_tensors(source / zoo.WEIGHTS, run.model.state_dict())
        zoo.pack(source, name, card, root=Path(staging) / "zoo", stored_as=stored_as)
        measured = dict(card, figures=[])
        packed = runs.load_run(Path(staging) / "zoo" / name)
        results = score(packed, argparse.Namespace(**{**vars(args), "run": source}), measured)
        replace_figures(card, measured["figures"])
        record_rescoring(card, f"weights stored as {stored_as}; the figures above measured on that copy")
        zoo.pack(source, name, card, results=results, stored_as=stored_as)
    print(f"zoo:{name}: stored as {stored_as}, {zoo.read_index()[name]['bytes'] / 1e6:.1f} MB; "
          + figures_line(measured["figures"]))
    return 0


def refit_prior(name: str, components: int, args) -> int:
    """Give zoo VAE ``name`` a sampling mixture of ``components`` Gaussians (its weights unchanged), then redraw
    its pictures and measure FID/KID again, on the packed copy, before the zoo's entry is replaced."""
    run = runs.load_run(zoo.PREFIX + name)  # verified against the index before anything is rewritten
    if not hasattr(run.config.model, "prior_components"):
        print(f"zoo:{name}: a {run.config.family} model has no latent prior to fit.", file=sys.stderr)
        return 2
    data = runs.run_data(run.config)
    model = run.model.with_prior(components, eval_tensor(run.model, data, "train"))
    cfg = dataclasses.replace(run.config, model=model.cfg)
    folder = zoo.ROOT / name
    with tempfile.TemporaryDirectory(prefix="zoo-refit-") as staging:
        stage = Path(staging) / name
        shutil.copytree(folder, stage)
        storage.write_json(stage / runs.CONFIG, cfg.to_json())
        stored_as = storage.load_tensors(folder / zoo.WEIGHTS)[1].get("storage_dtype", zoo.HALF)  # kept as it was
        storage.save_tensors(stage / zoo.WEIGHTS, *zoo.stored_weights(model.state_dict(), stored_as))
        packed = runs.load_run(stage)  # what users will load: the mixture in half precision too
        card = storage.read_json(stage / zoo.CARD)
        card["figures"] = [f for f in card["figures"] if f["name"] not in ("FID", "KID")]
        results = score(packed, argparse.Namespace(**{**vars(args), "run": stage}), card, likelihood=False)
        for file, result in results.items():
            storage.write_json(stage / file, result)
        record_rescoring(card, f"sampling prior: a mixture of {components} Gaussians fitted to the training "
                               f"posteriors; weights unchanged")
        storage.write_json(stage / zoo.CARD, card)
        for path in stage.iterdir():
            shutil.copy2(path, folder / path.name)
    zoo.reindex(name)
    print(f"zoo:{name}: " + "; ".join(f"{f['name']} {f['value']} (n={f['n']})" for f in card["figures"]
                                      if f["name"] in ("FID", "KID")))
    return 0


def summary_hours(summary: dict) -> float:
    """A run's training wall time in hours, as cards record it (``cpu_hours``)."""
    return round(summary["train_wall_time_s"] / 3600, 3)


def source_record(source: str) -> dict:
    """What a fine-tuned run started from: the zoo card of ``zoo:NAME`` (less its figures), or a run folder's
    training summary. Read before the new model is packed, which may replace the very zoo entry it started from."""
    if zoo.is_zoo(source):
        card = zoo.read_card(source)
        return {"from": source, **{k: v for k, v in card.items() if k not in ("figures", "name")}}
    summary = storage.read_json(Path(source) / runs.SUMMARY)
    return {"from": source, "cpu_hours": summary_hours(summary),
            "device": summary.get("device", "cpu"), "steps": summary["steps"], "epochs": summary["epochs_completed"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("--redraw", metavar="NAME", help="only redraw the pictures of this zoo model")
    p.add_argument("--rescore", metavar="NAME", help="only measure the likelihood of this zoo model again")
    p.add_argument("--repack", metavar="NAME", help="store this zoo model's weights as --storage and score it again")
    p.add_argument("--storage", default=zoo.HALF, choices=(zoo.HALF, zoo.INT8),
                   help="how the weights are stored (default float16; int8 for the large weights of the largest)")
    p.add_argument("--refit-prior", metavar="NAME", help="give this zoo VAE a sampling mixture of --components "
                                                          "Gaussians, and measure its FID/KID again")
    p.add_argument("--components", type=int, default=20, help="--refit-prior's mixture components")
    p.add_argument("--partial", type=Path, metavar="PATH",
                   help="--rescore: keep its progress in PATH (safetensors) and continue from it when run again "
                        "(e.g. an ODE likelihood of hours, across sessions)")
    p.add_argument("--command", help="the command that trained the run (resumes included)")
    p.add_argument("--eval-n", type=int, default=0, help="test images of the likelihood (0 = all)")
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--ode-steps", type=int, default=0, help="0 = the adaptive solver to --ode-tol; N = N uniform RK4 steps")
    p.add_argument("--ode-tol", type=float, default=1e-5)
    p.add_argument("--bound-t", type=int, default=0,
                   help="DDPM: the bound from K stratified steps per image (0 = all T)")
    p.add_argument("--ode-nll", type=parse_bool, default=True,
                   help="DDPM: also the NLL through the probability-flow ODE (hours on all test images)")
    p.add_argument("--fid-n", type=int, default=10_000)
    add_sampler_options(p)  # genzoo sample's flags (--sampler, --steps, --guidance, --temperature, ...)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the packed model is scored (default cpu; the card names the machine either way)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    if args.rescore:
        return rescore(args.rescore.removeprefix(zoo.PREFIX), args)
    if args.repack:
        return repack(args.repack.removeprefix(zoo.PREFIX), args.storage, args)
    if args.refit_prior:
        return refit_prior(args.refit_prior.removeprefix(zoo.PREFIX), args.components, args)
    if args.redraw:
        name = args.redraw.removeprefix(zoo.PREFIX)
        run = runs.load_run(zoo.PREFIX + name)  # verified against the index before anything is rewritten
        drawn = draw_pictures(run.model, runs.run_data(run.config), zoo.ROOT / name, cpu)
        zoo.reindex(name)
        print(f"zoo:{name}: drew {', '.join(drawn)}")
        return 0
    if args.run is None or args.name is None or not args.command:
        p.error("give RUN NAME --command, or --redraw NAME")
    summary = storage.read_json(args.run / runs.SUMMARY)
    config = runs.read_config(args.run)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    card = {"name": args.name, "family": config.family, "kind": summary["kind"], "dataset": config.train.dataset,
            "command": args.command, "genzoo_version": __version__, "commit": commit,
            "cpu_hours": summary_hours(summary), "device": summary.get("device", "cpu"),
            "steps": summary["steps"],
            "epochs": summary["epochs_completed"], "parameters": summary["parameters"],
            "machine": describe_machine(), "date": datetime.date.today().isoformat(), "figures": []}
    if config.train.init_from:  # a fine-tuning: the card carries its source's record, and the cost of both
        card["fine_tuned_from"] = source = source_record(config.train.init_from)
        if source.get("device", "cpu") == card["device"]:
            card["cpu_hours"] = round(card["cpu_hours"] + source["cpu_hours"], 3)
    release = get_family(config.family).for_release  # what of the run ships (the EBM: a few chains of its buffer)
    # the figures are measured on the packed weights, packed first into a staging folder: the zoo's entry is
    # replaced only once they are all measured, so an interrupted scoring leaves the shipped model as it was
    with tempfile.TemporaryDirectory(prefix="zoo-add-") as staging:
        zoo.pack(args.run, args.name, card, root=Path(staging), release=release, stored_as=args.storage)
        results = score(runs.load_run(Path(staging) / args.name), args, card)
    zoo.pack(args.run, args.name, card, results=results, release=release, stored_as=args.storage)
    print(f"zoo:{args.name}: " + figures_line(card["figures"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
