"""Typed configuration: one dataclass per component, validated at the edge.

A field's metadata carries its help text and its valid range or choices; the CLI flags are generated from the
fields (``add_dataclass_arguments``), and the same checks run when a ``config.json`` is read back, so a value
out of range is one clear sentence wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from genzoo.data.cifar import ARCHIVE_DATASETS
from genzoo.data.datasets import DATASETS, is_folder_name
from genzoo.data.toy import TOY_DATASETS
from genzoo.devices import DEVICES, PRECISIONS
from genzoo.errors import ConfigError


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           gt: float | None = None, lt: float | None = None, choices: tuple | None = None,
           check: Any = None, flag: bool = True) -> Any:
    """A dataclass field with the metadata the CLI and the validator read.

    ``check(value)`` may return a phrase saying what is wrong ("must be ..."), or None when the value is fine.
    ``flag=False``: a value genzoo records itself (validated when read back), with no command-line flag.
    """
    return field(default=default, metadata=dict(help=help, min=min, max=max, gt=gt, lt=lt, choices=choices,
                                                 check=check, flag=flag))


def parse_bool(text: str) -> bool:
    """argparse type for boolean options: true/false, yes/no, on/off, 1/0."""
    value = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in value:
        import argparse
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def _check_dataset(value: str) -> str | None:
    if value in DATASETS or value in ARCHIVE_DATASETS or value in TOY_DATASETS or is_folder_name(value):
        return None
    return f"must be one of {', '.join((*DATASETS, *ARCHIVE_DATASETS, *TOY_DATASETS))}, or a folder of images"


@dataclass
class TrainConfig:
    """Settings of the one trainer, shared by every family."""

    dataset: str = option("mnist", "data set to train on: mnist, fashion-mnist, cifar10, a folder of images (PATH: one "
                                   "subfolder per class, or none), or toy-ring (2-D points, for gan and ebm)",
                          check=_check_dataset)
    image_channels: int = option(0, "folder data: 1 (grey) or 3 (RGB); 0 = what the images are", choices=(0, 1, 3))
    image_size: int = option(0, "folder data: side of the square the images are scaled and cropped to (0 = 32 for "
                                "colour, 28 for grey)", min=0, max=512)
    data_digest: str = option("", "folder data: SHA-256 of the folder's file list when the run was made",
                              flag=False)
    epochs: int = option(10, "number of passes over the training split", min=1)
    batch_size: int = option(128, "examples per optimizer step", min=1)
    lr: float = option(1e-3, "Adam learning rate", gt=0.0)
    lr_schedule: str = option("constant", "learning-rate schedule over the run's epochs", choices=("constant", "cosine"))
    warmup_steps: int = option(0, "linear learning-rate warm-up over this many steps", min=0)
    weight_decay: float = option(0.0, "Adam weight decay", min=0.0)
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0 = off)", min=0.0)
    ema_decay: float = option(0.0, "decay of the exponential moving average of weights (0 = off)", min=0.0, lt=1.0)
    ema_warmup: bool = option(False, "raise the EMA decay with the step, min(decay, (1 + n) / (10 + n)), so that a "
                                     "short run's average does not lag")
    seed: int = option(0, "random seed (weights, data order, noise)", min=0)
    device: str = option("auto", "device to train on (auto picks cuda, then mps, then cpu)",
                         choices=DEVICES)
    precision: str = option("auto", "arithmetic of the training forward pass: fp32, bf16 autocast, or auto: bf16 "
                                    "where it is native (CPUs with AMX or AVX-512-BF16, recent GPUs), fp32 elsewhere; "
                                    "evaluation and checkpoints stay fp32", choices=PRECISIONS)
    compile: bool = option(False, "compile the networks with torch.compile (inductor): on a CPU in bf16 PixelCNN "
                                  "trains ~1.2x and RealNVP ~1.1x faster, the U-Net and the VAE no faster; a minute "
                                  "or more of compiling first (less when inductor's cache holds it) and at each "
                                  "resume; needs a C++ compiler on CPU, triton on CUDA; the weights and checkpoints "
                                  "are the same either way")
    max_steps: int = option(0, "stop after this many optimizer steps in all (0 = no limit)", min=0)
    time_limit: float = option(0.0, "stop after this many minutes of training in all, resumes included (0 = no limit)",
                               min=0.0)
    subset: int = option(0, "use only the first N examples of each split (0 = all; for smoke runs)", min=0)
    init_from: str = option("", "fine-tune: start from the weights of this run folder or zoo:NAME (the same family "
                                "and network settings); the optimizer, the EMA and the model's buffers (an EBM's "
                                "chains, a VAE's fitted mixture) start afresh")
    init_digest: str = option("", "fine-tuning: SHA-256 of the weights the run started from", flag=False)
    final_eval: str = option("auto", "the evaluation that ends training: full (the --eval-* settings), quick (a few "
                                     "hundred examples and short pictures), skip (pictures only; score later with "
                                     "`genzoo eval`), or auto: full after at least one whole epoch, quick before",
                             choices=("auto", "full", "quick", "skip"))


@dataclass
class EvalConfig:
    """How a run is scored (after training, and by `genzoo eval`)."""

    split: str = option("test", "split to score", choices=("train", "val", "test"))
    iwae_k: int = option(5000, "importance samples per example for the IWAE log-likelihood estimate", min=1)
    n: int = option(0, "score only the first N examples of the split (0 = all)", min=0)
    ais_chains: int = option(0, "unnormalised models: estimate log Z by annealed importance sampling with this many "
                                "chains, and so the NLL (0 = off)", min=0)
    ais_temperatures: int = option(1000, "AIS: intermediate distributions between the uniform box and the model",
                                   min=1)
    ais_step: float = option(0.01, "AIS: MALA step size at the model's temperature (data units)", gt=0.0)
    bound_t: int = option(0, "bound families with T diffusion steps (ddpm): estimate the bound's KL sum from this "
                             "many stratified steps per image, unbiased, its noise inside the standard error (0 = "
                             "all T: T network evaluations per image)", min=0)
    ode_steps: int = option(0, "flows by ODE: 0 = integrate the likelihood's ODE with adaptive steps (Dormand-Prince "
                               "5(4) to --ode-tol); N = N uniform RK4 steps (4 evaluations each: quicker, biased on "
                               "images, whose fields are stiff near the data)", min=0)
    ode_tol: float = option(1e-5, "flows by ODE: relative and absolute tolerance of the adaptive solver", gt=0.0)
    ode_nll: bool = option(True, "bound families with a probability-flow ODE (ddpm): also estimate the NLL through "
                                 "it, beside the bound")
    probes: int = option(1, "flows by ODE: Hutchinson probes per evaluation of the divergence (0 = exact: one "
                            "backward pass per dimension, for small inputs)", min=0)
    dequant_draws: int = option(1, "realnvp: dequantisation draws per image, combined by importance weighting as "
                                   "log mean_k p(x + u_k) / q(u_k | x): more draws, a tighter bound (Ho et al. 2019)",
                                min=1)

    def ode_options(self) -> dict:
        """The keyword options of an ODE likelihood (the flow's log_prob, the DDPM's ode_log_prob)."""
        return {"steps": self.ode_steps, "probes": self.probes, "tol": self.ode_tol}


def validate(cfg: Any, prefix: str = "--") -> Any:
    """Check every field of a config dataclass against its metadata; raise ConfigError on the first problem.
    ``prefix`` names the fields in messages: "--" for flags, "train: " for a config file's section."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = prefix + f.name.replace("_", "-") if prefix.startswith("--") else prefix + f.name
        kind = hints[f.name]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            what = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}.get(kind, kind.__name__)
            raise ConfigError(f"{name} must be {what}; got {value!r}.")
        m = f.metadata
        if m.get("choices") is not None and value not in m["choices"]:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, m['choices']))}; got {value!r}.")
        if m.get("min") is not None and value < m["min"]:
            raise ConfigError(f"{name} must be at least {m['min']}; got {value}.")
        if m.get("max") is not None and value > m["max"]:
            raise ConfigError(f"{name} must be at most {m['max']}; got {value}.")
        if m.get("gt") is not None and value <= m["gt"]:
            raise ConfigError(f"{name} must be greater than {m['gt']}; got {value}.")
        if m.get("lt") is not None and value >= m["lt"]:
            raise ConfigError(f"{name} must be less than {m['lt']}; got {value}.")
        if m.get("check") is not None and (problem := m["check"](value)):
            raise ConfigError(f"{name} {problem}; got {value!r}.")
    return cfg


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build and validate a config dataclass from parsed JSON; unknown keys are errors, missing ones take their
    defaults (settings added after the run was made keep what the run had then, e.g. num_classes = 10)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown setting(s): {', '.join(unknown)}.")
    hints = get_type_hints(cls)
    values = {k: (float(v) if hints[k] is float and isinstance(v, int) and not isinstance(v, bool) else v)
              for k, v in data.items()}
    return validate(cls(**values), prefix=f"{where}: ")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def add_dataclass_arguments(parser, cls: type, prefix: str = "", defaults: Any | None = None) -> None:
    """Add one --{prefix}{field} flag per field; defaults are None so that given flags can be told apart.

    ``defaults``, an instance of ``cls``, replaces the dataclass defaults shown in the help.
    """
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True):
            continue
        kind = hints[f.name]
        flag = "--" + (prefix + f.name).replace("_", "-")
        default = getattr(defaults, f.name) if defaults is not None else f.default
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        parser.add_argument(flag, dest=prefix.replace("-", "_") + f.name, type=parse_bool if kind is bool else kind,
                            default=None,
                            metavar="BOOL" if kind is bool else None if f.metadata.get("choices") else f.name.upper(),
                            choices=f.metadata.get("choices"), help=help_text)


def given_flags(cls: type, args: Any, prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` that were given explicitly on the command line."""
    dest = prefix.replace("-", "_")
    return {f.name: getattr(args, dest + f.name) for f in dataclasses.fields(cls)
            if getattr(args, dest + f.name, None) is not None}


def from_args(cls: type, args: Any, base: Any | None = None, prefix: str = "") -> Any:
    """A config from parsed flags: flags given on the command line override ``base`` (or the defaults)."""
    cfg = base if base is not None else cls()
    return validate(dataclasses.replace(cfg, **given_flags(cls, args, prefix)), prefix="--" + prefix)
