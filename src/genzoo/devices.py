"""Which device a command runs on. Used by the trainer and by every command that loads a model."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import shutil

import torch

from genzoo.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; an explicit device that is not available is an error."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device '{name}'; choose one of: {', '.join(DEVICES)}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but this torch build sees no CUDA device.")
    if name == "mps" and not has_mps():
        raise ConfigError("--device mps was asked for, but this machine has no MPS device.")
    return torch.device(name)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_BLOCK = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit machines


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MB for reuse instead of handing them back to the system.

    A forward pass on a CPU allocates its activations afresh; with malloc's defaults many large ones are new
    mappings (or heap trimmed and grown again) whose pages fault in and are zeroed again -- 16,000 page faults and
    about 15 % of the time of a 100-image U-Net forward pass in bf16 (BENCHMARKS.md, 'Sampling time'); glibc's
    self-adjusting threshold saves some of it in some processes, by the order of their frees, not reliably.
    PyTorch's CPU tuning guide gets the same by preloading jemalloc or tcmalloc; this needs neither. Returns whether
    it applied (glibc only)."""
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or no libc.so.6: leave the allocator as it is
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEPT_BLOCK)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


PRECISIONS = ("auto", "fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 arithmetic is native here: a CUDA device that supports it, or a CPU whose oneDNN has bf16
    kernels (AVX-512-BF16 or AMX); elsewhere bf16 autocast is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 where it is native (``bf16_supported``), fp32 otherwise; fp32 and bf16 are taken as given."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision '{name}'; choose one of: {', '.join(PRECISIONS)}.")
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return name


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The networks' forward passes in bf16 (autocast: matmuls and convolutions) when ``precision`` is bf16, as
    resolved by ``resolve_precision``; arithmetic on tensors outside them stays in their own dtype."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def channels_last_for(precision: str, device: torch.device) -> bool:
    """The memory layout of convolutions: channels-last, except under bf16 on a CPU, where contiguous NCHW tensors
    train faster (BENCHMARKS.md: 'Precision and layout')."""
    return not (precision == "bf16" and device.type == "cpu")


def set_channels_last(model: torch.nn.Module, channels_last: bool) -> None:
    """Give every network in ``model`` that chooses its layout (a ``channels_last`` attribute: the U-Net, the
    PixelCNN) the layout asked for, weights included."""
    for module in model.modules():
        if isinstance(getattr(module, "channels_last", None), bool) and module.channels_last != channels_last:
            module.channels_last = channels_last
            module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def compiler_missing(device: torch.device) -> str | None:
    """What ``torch.compile``'s default backend (inductor) lacks on ``device`` here, or None when it has it: a C++
    compiler for CPU code, triton for CUDA kernels."""
    if device.type == "cpu":
        named = os.environ.get("CXX")
        if not (named and shutil.which(named)) and not any(shutil.which(c) for c in ("g++", "clang++")):
            return "a C++ compiler (g++ or clang++ on the PATH, or $CXX)"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "triton (pip install triton)"
    return None


def compile_networks(model: torch.nn.Module) -> list[str]:
    """Compile the networks in ``model`` (the outermost modules of genzoo.nets: the U-Net, the encoder and decoder,
    the generator and discriminator ...) with ``torch.compile`` in place: calls go through the compiled code, and
    the state dict keeps its names, so checkpoints do not depend on it. Returns the compiled modules' names."""
    done: list[str] = []
    for name, module in model.named_modules():
        if type(module).__module__.startswith("genzoo.nets") and not any(name.startswith(d + ".") for d in done):
            module.compile()
            done.append(name)
    return done


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the CPU features that decide fp32 and bf16 speed


def describe_machine() -> dict:
    """The CPU, its vector extensions of ``ISA_FLAGS``, cores, torch threads and versions: what every figure of
    speed or of a CPU-hour budget is recorded with (benchmarks, model cards, the leaderboard)."""
    cpu, isa = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        isa = [flag for flag in ISA_FLAGS if flag in flags]
    except (OSError, StopIteration):
        pass
    machine = {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():  # a figure measured beside a GPU names it (whether or not the GPU did the work)
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def machine_line(machine: dict | None = None) -> str:
    """One line for a table: 'AMD EPYC (avx2), 2 cores, 1 torch thread, torch 2.13.0+cpu'."""
    m = machine or describe_machine()
    threads = m["torch_threads"]
    isa = f" ({', '.join(m['isa'])})" if m["isa"] else ""
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return (f"{m['cpu']}{isa}, {m['cores']} cores, {threads} torch thread{'s' if threads != 1 else ''}, "
            f"torch {m['torch']}{gpu}")
