"""The genzoo command line: train, sample, eval, list.

Bad input of any kind ends in one sentence on stderr and exit status 2; a training stopped by a signal exits
130 and one stopped by a diverging loss exits 1, both with their checkpoint intact.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from genzoo import distributed, runs, storage, zoo
from genzoo._version import __version__
from genzoo.config import EvalConfig, TrainConfig, add_dataclass_arguments, from_args, given_flags, parse_bool
from genzoo.data.cifar import ARCHIVE_DATASETS
from genzoo.data.datasets import DATASETS, is_folder_name, locate, locate_archive, search_dirs
from genzoo.devices import (DEVICES, PRECISIONS, autocast, channels_last_for, keep_freed_memory, pick_device,
                            resolve_precision, set_channels_last)
from genzoo.features import FEATURE_DATASETS
from genzoo.errors import ConfigError, GenzooError
from genzoo.models import FAMILIES, get_family
from genzoo.options import Option

FID_BATCH = 500  # samples drawn per batch by `eval --fid`


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message: str):
        sys.stderr.write(f"genzoo: error: {message} (see '{self.prog} --help').\n")
        sys.exit(2)


def build_parser() -> Parser:
    p = Parser(prog="genzoo", description="Deep generative models, one coherent system.")
    p.add_argument("--version", action="version", version=f"genzoo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model family", description="Train a model family.")
    fam = train.add_subparsers(dest="family", required=True, parser_class=Parser, metavar="FAMILY")
    for name, family in FAMILIES.items():
        f = fam.add_parser(name, help=f"{family.kind.value}: {family.kind.description}")
        f.add_argument("--out", type=Path, default=None,
                       help="run folder to write (default: runs/FAMILY-DATASET, numbered if it exists)")
        f.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
        if family.presets:
            f.add_argument("--preset", choices=list(family.presets), default=None,
                           help="a named recipe over the defaults (flags given still win): " + "; ".join(
                               f"{name}: {p.about}, {p.expect}" for name, p in family.presets.items()))
        add_dataclass_arguments(f.add_argument_group("model"), family.Config)
        add_dataclass_arguments(f.add_argument_group("training"), TrainConfig,
                                defaults=TrainConfig(**family.train_defaults))
        add_dataclass_arguments(f.add_argument_group("final evaluation"), EvalConfig, prefix="eval-",
                                defaults=EvalConfig(**family.final_eval_defaults))

    sample = sub.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run", type=run_argument, help="run folder, or zoo:NAME (see genzoo zoo)")
    sample.add_argument("--n", type=int, default=None,
                        help="number of samples (default 100), or frames of --interpolate (default 10)")
    sample.add_argument("--out", type=Path, default=None,
                        help="PNG file (default RUN/samples-seedS.png, completions-seedS.png or interpolation.png; for "
                             "zoo:NAME, NAME-samples-seedS.png and so on, here)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--device", default="auto", choices=DEVICES)
    sample.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="arithmetic of the network's forward passes: fp32, bf16 autocast, or auto: bf16 where it "
                             "is native (CUDA, or a CPU with AVX-512-BF16 or AMX), fp32 elsewhere (default auto; "
                             "genzoo eval samples in fp32)")
    opts = add_sampler_options(sample)
    opts.add_argument("--complete", type=Path, metavar="FILE.png",
                      help="autoregressive: draw --n completions of the bottom half of this image")
    opts.add_argument("--interpolate", type=Path, nargs=2, metavar=("A.png", "B.png"),
                      help="vae, ddpm, flow: decode --n frames along the path between the latent codes (the "
                           "ODE-inverted noises) of two images; ddpm and flow take --steps")

    ev = sub.add_parser("eval", help="score a trained run by what its density kind offers, or its samples by FID",
                        description="Score a run: its test likelihood as its density kind allows, or with --fid the "
                                    "quality of its samples (FID and KID in genzoo's feature space).")
    ev.add_argument("run", type=run_argument,
                    help="run folder, or zoo:NAME (its results are then written here, as NAME-eval-SPLIT.json)")
    add_dataclass_arguments(ev, EvalConfig)  # shown defaults are EvalConfig's; a family may lower --n (ddpm: 500)
    ev.add_argument("--device", default="auto", choices=DEVICES)
    fid = ev.add_argument_group("sample quality")
    fid.add_argument("--fid", action="store_true",
                     help="score samples by FID and KID instead of the likelihood; --n is then the number of "
                          "samples (0 = 10,000)")
    fid.add_argument("--reference", choices=("auto", "float", "binary"), default="auto",
                     help="test images to compare with: grey (float) or the fixed binarisation (binary); auto "
                          "picks binary for the Bernoulli families")
    fid.add_argument("--batch-size", type=int, default=FID_BATCH, help=f"samples drawn per batch (default {FID_BATCH})")
    add_sampler_options(ev)

    b = sub.add_parser("bench", help="train, score and tabulate every family on one data set",
                       description="Train each family with its preset within a budget (or resume or reuse its run), "
                                   "score its test NLL and its samples' FID and KID, and write one leaderboard. "
                                   "Interrupted, the same command picks up where it stopped.")
    b.add_argument("--families", nargs="+", default=None, metavar="FAMILY",
                   help=f"families to run, in table order (default: {' '.join(FAMILIES)})")
    b.add_argument("--dataset", default="mnist", choices=FEATURE_DATASETS)
    b.add_argument("--budget-minutes", type=float, default=10.0, help="training minutes per family (default 10)")
    b.add_argument("--fid-n", type=int, default=10_000, help="samples per FID/KID (default 10,000)")
    b.add_argument("--nll-n", type=int, default=0, help="test images for the NLL (default 0: the family's preset)")
    b.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder of the runs (default runs/bench)")
    b.add_argument("--leaderboard", type=Path, default=None, help="markdown file (default OUT/LEADERBOARD.md)")
    b.add_argument("--run", action="append", default=[], metavar="FAMILY=RUN",
                   help="score this finished run folder for FAMILY instead of training one (repeatable)")
    b.add_argument("--zoo", action="store_true",
                   help="score the zoo's models of --dataset (their shipped scores reused) instead of training")
    b.add_argument("--device", default="auto", choices=DEVICES)

    r = sub.add_parser("report", help="one self-contained HTML page for one or more runs")
    r.add_argument("runs", type=run_argument, nargs="*", metavar="RUN", help="run folders or zoo:NAME")
    r.add_argument("--zoo", action="store_true", help="every model of the zoo (after the RUNs given)")
    r.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default report.html)")

    fe = sub.add_parser("features", help="train the feature network of FID and KID for another data set",
                        description="FID and KID compare samples with test images in the feature space of a "
                                    "classifier of the data's own domain. genzoo ships those of mnist and "
                                    "fashion-mnist; `genzoo features train DATASET` trains one for any labelled data "
                                    "(cifar10, a folder with class subfolders) and stores it, with the statistics of "
                                    "the test split, where `genzoo eval --fid` finds it.")
    fe.add_argument("action", choices=("train",))
    fe.add_argument("dataset", help="cifar10, or a folder of images with one subfolder per class")
    fe.add_argument("--epochs", type=int, default=10, help="passes over the training split (default 10)")
    fe.add_argument("--image-channels", type=int, choices=(0, 1, 3), default=0,
                    help="folder data: 1 or 3 (default 0: what the images are)")
    fe.add_argument("--image-size", type=int, default=0, help="folder data: image side (default 0: 32 colour, 28 grey)")
    fe.add_argument("--max-shift", type=int, default=2, help="augmentation: random shifts of up to N pixels "
                                                             "(default 2)")
    fe.add_argument("--flips", type=parse_bool, default=False, metavar="BOOL",
                    help="augmentation: random left-right flips (default false)")
    fe.add_argument("--seed", type=int, default=0)

    z = sub.add_parser("zoo", help="the trained models that ship with genzoo (use them as zoo:NAME)")
    z.add_argument("name", nargs="?", default=None, help="show this model's card")

    sub.add_parser("list", help="the model families and data sets")
    sub.add_parser("theory", help="run every identity of the chapter as a numeric check")
    return p


def run_argument(text: str) -> str | Path:
    """A run folder, or the name zoo:NAME kept as it is (resolved, and verified, where it is opened)."""
    return text if zoo.is_zoo(text) else Path(text)


def output_path(run: str | Path, name: str) -> Path:
    """Where a command writes a result about ``run``: inside its folder, or for a zoo model (whose folder is part
    of the installation) in the working folder, prefixed with the model's name."""
    return Path(f"{str(run).removeprefix(zoo.PREFIX)}-{name}") if zoo.is_zoo(run) else Path(run) / name


def declared_sampler_options() -> dict[str, Option]:
    """Every sampler option any family declares, by keyword; one flag each (the same keyword means the same
    option in every family)."""
    out: dict[str, Option] = {}
    for family in FAMILIES.values():
        for option in family.sample_options:
            known = out.setdefault(option.name, option)
            assert known.type is option.type, f"sampler option {option.name} declared with two types"
    return out


def add_sampler_options(parser):
    """The sampler flags of `sample` and `eval --fid`, generated from the families' declarations; which family
    takes which is checked against the loaded run's family (``sampler_options``)."""
    opts = parser.add_argument_group("sampler options (each family takes those it declares: see 'genzoo list')")
    for option in declared_sampler_options().values():
        takers = [name for name, fam in FAMILIES.items() if any(o.name == option.name for o in fam.sample_options)]
        opts.add_argument(option.cli_flag, dest=f"sampler_{option.name}",
                          type=parse_bool if option.type is bool else option.type,
                          metavar="BOOL" if option.type is bool else option.cli_flag.lstrip("-").upper(),
                          help=f"{', '.join(takers)}: {option.help}")
    return opts


def given_sampler_options(args) -> dict:
    return {name: getattr(args, f"sampler_{name}") for name in declared_sampler_options()
            if getattr(args, f"sampler_{name}", None) is not None}


def positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value}.")


# --- train -----------------------------------------------------------------------------------------
def default_out(family: str, dataset: str) -> Path:
    base = Path("runs") / f"{family}-{Path(dataset).name if is_folder_name(dataset) else dataset}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def resolve_train_config(args) -> tuple[runs.RunConfig, Path]:
    family = get_family(args.family)
    model, train = given_flags(family.Config, args), given_flags(TrainConfig, args)
    ev = given_flags(EvalConfig, args, prefix="eval-")
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_FOLDER, the run to continue.")
        if getattr(args, "preset", None) is not None:
            raise ConfigError("--preset applies to a new run; a resumed run keeps its saved settings.")
        saved = runs.read_config(args.out)
        if saved.family != args.family:
            raise ConfigError(f"{args.out} is a {saved.family} run, not a {args.family} run.")
        return runs.resumed_config(saved, model, train, ev), args.out
    cfg = runs.new_config(args.family, model, train, ev, getattr(args, "preset", None))
    out = args.out if args.out is not None else default_out(args.family, cfg.train.dataset)
    if out.exists() and (not out.is_dir() or any(p.name != storage.LOCK for p in out.iterdir())):
        raise ConfigError(f"{out} already exists and is not empty; continue that run with --resume, "
                          f"or choose another --out.")
    return cfg, out


def cmd_train(args) -> int:
    from genzoo.trainer import train_run

    cfg, out = resolve_train_config(args)
    summary = train_run(cfg, out, resume=args.resume, log=lambda m: print(m, flush=True),
                        progress_bar=sys.stderr.isatty())
    if not summary:  # a rank other than 0 of a distributed training: rank 0 reports
        return 0
    print(format_metrics(summary["eval"]))
    print(f"{summary['steps']} steps in {summary['train_wall_time_s']:.1f} s ({summary['images_per_s']:.0f} images/s); "
          f"pictures and metrics in {out}")
    return 0


# --- sample, eval, list ----------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from genzoo.plots import density_image, points_extent, read_image, save_grid

    if args.complete is not None and args.interpolate is not None:
        raise ConfigError("--complete and --interpolate draw different pictures; give one of them.")
    if args.n is None:
        args.n = 10 if args.interpolate is not None else 100
    positive("--n", args.n)
    if args.interpolate is not None and args.n < 2:
        raise ConfigError(f"--interpolate needs at least 2 frames (--n); got {args.n}.")
    if args.seed < 0:
        raise ConfigError(f"--seed must be non-negative; got {args.seed}.")
    what = ("completions" if args.complete is not None else "interpolation" if args.interpolate is not None
            else "samples")
    default_name = f"{what}.png" if args.interpolate is not None else f"{what}-seed{args.seed}.png"  # (no noise)
    out = args.out if args.out is not None else output_path(args.run, default_name)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file; got {out}.")
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device)
    run = runs.load_run(args.run, device=device)
    model = run.model
    set_channels_last(model, channels_last_for(precision, device))  # the layout that is faster in this precision
    gen = torch.Generator(device=device).manual_seed(args.seed)
    torch.manual_seed(args.seed)
    options = {**sampler_options(args, model, device), "progress": sys.stderr.isatty()}
    with autocast(precision, device):  # the networks' forward passes; the pictures below are drawn in fp32
        if args.complete is not None:
            if not model.can_complete:
                raise ConfigError(f"the {model.family} family cannot complete an image; --complete needs an "
                                  f"autoregressive model (pixelcnn).")
            given = model.from_image(read_image(args.complete, model.image_shape)).to(device)
            x = model.completion_grid(given, args.n, gen, **options)
        elif args.interpolate is not None:
            if not model.can_interpolate:
                raise ConfigError(f"the {model.family} family cannot interpolate between images; --interpolate "
                                  f"needs an encoder (vae) or an invertible sampler (ddpm, flow).")
            extra = sorted(set(options) - {"progress", "steps"})
            if extra:
                raise ConfigError(f"--interpolate takes no --{extra[0]}: the path is decoded deterministically.")
            a, b = (model.from_image(read_image(f, model.image_shape)).to(device)[None] for f in args.interpolate)
            steps = {"steps": options["steps"]} if "steps" in options else {}
            x = model.interpolate(a, b, frames=args.n, **steps)
        else:
            x = model.sample(args.n, gen, **options)
    x = x.float()
    if x.dim() == 5:  # an interpolation: one row of frames
        save_grid(x, out)
        print(f"wrote {args.n} frames of the {what} to {out}")
        return 0
    if x.dim() == 2:  # points (toy data): one picture of their density
        x = density_image(x, points_extent(x))[None]
    count = len(x)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    pad = torch.ones((rows * cols - count, *x.shape[1:]), device=x.device)
    save_grid(torch.cat([x, pad]).reshape(rows, cols, *x.shape[1:]), out)
    print(f"wrote {args.n} {what} to {out}")
    return 0


def sampler_options(args, model, device, n: int | None = None) -> dict:
    """The sampler flags that were given, checked against the options the run's family declares."""
    options = given_sampler_options(args)
    model.check_sample_options(**options)
    if "y" in options:
        if not model.class_conditional:
            raise ConfigError(f"the {model.family} family cannot draw a chosen class (--class).")
        options["y"] = torch.full((n or args.n,), options["y"], dtype=torch.long, device=device)
    return options


def format_metrics(result: dict) -> str:
    lines = [f"{result['family']} ({result['kind']}) on {result['dataset']} {result['split']}, "
             f"{result['n_examples']} examples, {result['view']} view:"]
    for key, value in result.items():
        if key.endswith("_nats") and key != "kl_data_to_model_nats":  # the KL has a line of its own
            se = result.get(f"{key}_stderr", float("nan"))
            lines.append(f"  {key[:-5]:<10} {value:9.3f} nats  (± {se:.3f} s.e.)")
        elif key.endswith("_bits_per_dim"):
            lines.append(f"  {key[:-13]:<10} {value:9.4f} bits/dim")
    if "modes_covered" in result:
        lines.append(f"  modes covered {result['modes_covered']} of {result['modes']}, high-quality samples "
                     f"{100 * result['high_quality_share']:.1f}% (of {result['n_samples']})")
    if "kl_data_to_model_nats" in result:
        lines.append(f"  KL(data || model) {result['kl_data_to_model_nats']:.4f} nats (model normalised on a "
                     f"{int(result['grid_points'] ** 0.5)}^2 grid)")
    if "log_z_ais" in result:
        lines.append(f"  log Z (AIS) {result['log_z_ais']:.3f} ± {result['log_z_ais_stderr']:.3f} s.e., "
                     f"{result['ais_chains']} chains, {result['ais_temperatures']} temperatures, effective sample "
                     f"size {result['ais_ess']:.1f}, MALA acceptance {result['ais_acceptance']:.2f}"
                     + (f"; on the grid {result['log_z_grid']:.3f}" if "log_z_grid" in result else ""))
    for key in ("nll_estimator", "nll_ode_estimator", "note"):
        if key in result:
            lines.append(f"  {result[key]}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from genzoo.evaluate import FID_SAMPLES, evaluate, partial_path, sample_quality

    device = pick_device(args.device)
    run = runs.load_run(args.run, device=device)
    if args.fid:
        positive("--batch-size", args.batch_size)
        n = args.n or FID_SAMPLES
        data = runs.run_data(run.config)
        options = sampler_options(args, run.model, device, n)
        reference = None if args.reference == "auto" else args.reference
        result = sample_quality(run.model, data, n, device, reference, args.batch_size,
                                progress=sys.stderr.isatty(), **options)
        out = output_path(args.run, runs.FID_EVAL)
        storage.write_json(out, result)
        print(format_quality(result))
        print(f"written to {out}")
        return 0
    given = [flag for flag, value in (("--reference", args.reference != "auto"),
                                      ("--batch-size", args.batch_size != FID_BATCH)) if value]
    given += [declared_sampler_options()[k].cli_flag for k in given_sampler_options(args)]
    if given:
        raise ConfigError(f"{given[0]} applies to sample quality only; add --fid.")
    cfg = from_args(EvalConfig, args, base=EvalConfig(**type(run.model).eval_defaults))
    data = runs.run_data(run.config)
    out = output_path(args.run, runs.eval_file(cfg.split))
    # progress is kept beside the result, so an interrupted evaluation continues when the command is run again
    result = evaluate(run.model, data, cfg, device, progress=sys.stderr.isatty(), partial=partial_path(out),
                      log=lambda message: print(message, file=sys.stderr))
    result["eval_config"] = dataclasses.asdict(cfg)
    storage.write_json(out, result)
    print(format_metrics(result))
    print(f"written to {out}")
    return 0


def format_quality(result: dict) -> str:
    options = ", ".join(f"{k}={v}" for k, v in result["sampler"].items() if k != "y")
    return "\n".join([
        f"{result['family']} ({result['kind']}) on {result['dataset']}: {result['n_samples']} samples"
        + (f" ({options})" if options else "") + f", {result['samples_per_s']:.1f} samples/s",
        f"  FID {result['fid']:10.3f}",
        f"  KID {result['kid']:10.4g}  (± {result['kid_stderr']:.2g} s.e., {result['kid_blocks']} blocks of "
        f"{result['kid_block_size']})",
        f"  against the {result['reference']}; features: {result['feature_net']}"]
        + ([f"  class-conditional samples: {result['labels']}"] if "labels" in result else [])
        + small_sample_notes(result))


SMALL_REFERENCE = 1000  # test images below which a FID against them is mostly their own sampling error


def small_sample_notes(result: dict) -> list[str]:
    """What a reader must know of a FID/KID computed from few images."""
    notes = []
    if result.get("n_reference", SMALL_REFERENCE) < SMALL_REFERENCE:
        notes.append(f"  note: the reference is only {result['n_reference']} test images: FID is strongly biased "
                     f"upwards at this size; compare it only with figures against the same images")
    if result["kid_blocks"] == 1:
        notes.append(f"  note: KID from a single block of {result['kid_block_size']} (fewer than 2,000 samples or "
                     f"reference images): no standard error")
    return notes


def cmd_bench(args) -> int:
    from genzoo.bench import bench
    from genzoo.tables import leaderboard_markdown

    positive("--fid-n", args.fid_n)
    if not math.isfinite(args.budget_minutes) or args.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be a positive number; got {args.budget_minutes}.")
    if args.nll_n < 0:
        raise ConfigError(f"--nll-n must be non-negative; got {args.nll_n}.")
    reuse = {}
    for item in args.run:
        family, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--run takes FAMILY=RUN_FOLDER; got '{item}'.")
        reuse[family] = path if zoo.is_zoo(path) else Path(path)
    if args.zoo:
        for name in zoo.names():
            card = zoo.read_card(name)
            if card["dataset"] == args.dataset:
                reuse.setdefault(card["family"], zoo.PREFIX + name)
        if not reuse:
            raise ConfigError(f"the zoo has no model of {args.dataset}.")
    families = args.families if args.families is not None else ([] if args.zoo else list(FAMILIES))
    command = "genzoo " + " ".join(shlex.quote(a) for a in args.argv)
    table = bench(args.out, families + [f for f in reuse if f not in families], args.dataset,
                  args.budget_minutes, args.fid_n, args.nll_n, args.device, reuse, args.leaderboard, command,
                  progress=sys.stderr.isatty())
    print(leaderboard_markdown(table))
    print(f"written to {args.leaderboard or args.out / 'LEADERBOARD.md'} and {args.out / 'leaderboard.json'}")
    return 0


def cmd_report(args) -> int:
    from genzoo.report import write_report

    if args.out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out must name an .html file; got {args.out}.")
    if not args.out.parent.is_dir():
        raise ConfigError(f"--out: the folder {args.out.parent} does not exist.")
    chosen = list(args.runs) + ([zoo.PREFIX + name for name in zoo.names()] if args.zoo else [])
    if not chosen:
        raise ConfigError("give the run folders or zoo:NAMEs to report on, or --zoo for every zoo model.")
    title = "the genzoo zoo" if args.zoo and not args.runs else "genzoo report"
    out = write_report(chosen, args.out, title)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB, {len(chosen)} run(s))")
    return 0


def cmd_features(args) -> int:
    import time

    from genzoo import features
    from genzoo.data.datasets import load_dataset

    positive("--epochs", args.epochs)
    if args.dataset in features.FEATURE_DATASETS:
        raise ConfigError(f"genzoo ships the feature network of {args.dataset}; scripts/train_feature_nets.py "
                          f"retrains it for the package.")
    data = load_dataset(args.dataset, channels=args.image_channels, image_size=args.image_size)  # (folders only)
    if len(data.classes) < 2:
        raise ConfigError(f"{args.dataset} has no class subfolders, so no feature network can be trained on it, and "
                          f"FID/KID are not available for it (a network of another domain would score in a foreign "
                          f"space); put the images in one subfolder per class.")
    start = time.time()
    net, accuracy = features.train_classifier(data, args.epochs, args.seed, max_shift=args.max_shift,
                                              flips=args.flips)
    chance = 1 / len(data.classes)
    if accuracy < 2 * chance:
        raise ConfigError(f"the feature network reached {accuracy:.1%} test accuracy after {args.epochs} epochs, not "
                          f"twice chance ({2 * chance:.1%}); FID/KID in its feature space would mean little, so "
                          f"nothing was written: train longer (--epochs) or on more labelled images.")
    path = features.user_dir() / f"{features.feature_key(args.dataset)}.safetensors"
    features.save_feature_net(net, data, path, {
        "test_accuracy": f"{accuracy:.4f}", "epochs": str(args.epochs), "seed": str(args.seed),
        "train_minutes": f"{(time.time() - start) / 60:.1f}", "dataset": args.dataset,
        "command": "genzoo " + " ".join(shlex.quote(a) for a in sys.argv[1:])})
    print(f"feature network of {args.dataset}: test accuracy {accuracy:.4f} after {args.epochs} epochs; written to "
          f"{path} (genzoo eval RUN --fid now scores runs on it)")
    return 0


def cmd_zoo(args) -> int:
    if args.name is not None:
        print(json.dumps(zoo.read_card(args.name), indent=2))
        return 0
    models = zoo.read_index()
    if not models:
        print("no zoo models in this installation")
        return 0
    print(f"{'name':<22} {'family':<9} {'kind':<13} {'data':<14} {'size':>7} {'hours':>10}  figures")
    for name in models:
        card = zoo.read_card(name)
        figures = "; ".join(" ".join(filter(None, (f["name"], f"{f['value']:g}", f["unit"]))) + f" (n={f['n']:,})"
                            for f in card.get("figures", []))
        print(f"{name:<22} {card['family']:<9} {card['kind']:<13} {card['dataset']:<14} "
              f"{models[name]['bytes'] / 1e6:>5.1f}MB {'%.2f %s' % zoo.training_hours(card):>10}  {figures}")
    print("use as: genzoo sample zoo:NAME, genzoo eval zoo:NAME, genzoo.load_run('zoo:NAME'); "
          "genzoo zoo NAME shows a model card")
    return 0


def cmd_list(args) -> int:
    print("families:")
    for name, family in FAMILIES.items():
        views = family.views_offered or f"'{family.view}'"
        colour = ("grey and colour images" if 3 in family.channels_supported else "grey images") + \
            f" of {family.sizes_supported}"
        print(f"  {name:<14} {family.kind.value:<13} {family.kind.description}; data view {views}; {colour}")
        if family.capabilities():
            print(f"  {'':<14} sample: {' '.join(family.capabilities())}")
        for preset, recipe in family.presets.items():
            print(f"  {'':<14} --preset {preset}: {recipe.about}; {recipe.expect}")
    print("datasets:")
    for name, spec in DATASETS.items():
        found = locate(spec)
        where = found[1] if found else ("not found (looked in " + ", ".join(map(str, search_dirs(name)))
                                         + "); downloaded on first use")
        print(f"  {name:<14} {spec.title}: {where}")
    for name, spec in ARCHIVE_DATASETS.items():
        found = locate_archive(spec)
        print(f"  {name:<14} {spec.title}: " + (str(found.parent) if found else "not found (looked in " + ", ".join(
            map(str, search_dirs(name))) + "); downloaded on first use"))
    print(f"  {'PATH':<14} a folder of PNG/JPEG/WebP images, one subfolder per class (or none): --dataset PATH "
          f"[--image-channels 1|3] [--image-size N]")
    return 0


def cmd_theory(args) -> int:
    from genzoo.checks import run_all

    results = run_all()
    print(f"{'exercise':<11} {'closed form':>14} {'numeric':>14} {'error':>10}  ok    statement")
    for c in results:
        print(f"{c.exercise:<11} {c.closed_form:>14.8g} {c.estimate:>14.8g} {c.error:>10.2g}  "
              f"{'pass' if c.passed else 'FAIL'}  {c.statement}")
    failed = sum(not c.passed for c in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "bench": cmd_bench, "report": cmd_report,
            "features": cmd_features, "zoo": cmd_zoo, "list": cmd_list, "theory": cmd_theory}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    keep_freed_memory()  # every command's forward passes reuse their activations' memory (devices.py)
    try:
        return COMMANDS[args.command](args)
    except GenzooError as e:
        sys.stderr.write(f"genzoo: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("genzoo: interrupted.\n")
        return 130
    except BrokenPipeError:  # the reader went away (`genzoo list | head -1`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def entry() -> None:
    """The `genzoo` command, and `python -m genzoo` (as torchrun launches it)."""
    code = main()
    try:
        launched = distributed.from_env().active
    except GenzooError:
        launched = False
    if launched:
        # A rank of a torchrun launch ends without C++'s static teardown: there torch 2.13 (gloo, CPU) sometimes
        # aborts a rank whose work is done and whose Python exit handlers have run ("terminate called without an
        # active exception", about 1 two-process launch in 15 here), and torchrun then reports a failed run.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
