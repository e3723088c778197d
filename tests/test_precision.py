"""--precision auto: bf16 where it is native, fp32 elsewhere; the layout follows; training in bf16 learns; every
likelihood is computed in fp32 whatever the training precision."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genzoo.devices import (ISA_FLAGS, bf16_supported, channels_last_for, describe_machine, machine_line,
                            resolve_precision, set_channels_last)
from genzoo.errors import ConfigError
from genzoo.models.vae import VAE
from genzoo.nets.unet import UNet
from genzoo.models import FAMILIES
from genzoo.runs import new_config, read_metrics
from genzoo.trainer import train_run

from conftest import tiny_vae_config

QUIET = dict(log=lambda m: None, progress_bar=False)
CPU = torch.device("cpu")


def test_auto_picks_bf16_exactly_where_it_is_native():
    assert resolve_precision("auto", CPU) == ("bf16" if bf16_supported(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", CPU)


def test_every_family_defaults_to_auto_but_the_vae():
    """The VAE's chapter run keeps its 95 nats in fp32 (bf16 costs it 0.1 nats: BENCHMARKS.md); a preset or the
    command line can still ask for auto."""
    defaults = {name: new_config(name).train.precision for name in FAMILIES}
    assert defaults == {name: "fp32" if name == "vae" else "auto" for name in FAMILIES}
    assert new_config("vae", train={"precision": "auto"}).train.precision == "auto"


def test_the_layout_follows_the_precision():
    assert channels_last_for("fp32", CPU) and not channels_last_for("bf16", CPU)
    assert channels_last_for("bf16", torch.device("cuda"))
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert net.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    set_channels_last(net, False)
    assert not net.channels_last and conv.weight.is_contiguous()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    before = net(x, t)
    set_channels_last(net, True)
    torch.testing.assert_close(net(x, t), before, rtol=1e-5, atol=1e-6)  # the same function either way


def test_bf16_training_stays_finite_learns_and_is_scored_in_fp32(tmp_path, monkeypatch):
    seen = []
    original = VAE.elbo

    def elbo(self, x):
        out = original(self, x)
        if not torch.is_grad_enabled():  # an evaluation (training calls it with gradients, under autocast)
            seen.append((torch.is_autocast_enabled("cpu"), next(self.parameters()).dtype, out.dtype))
        return out

    monkeypatch.setattr(VAE, "elbo", elbo)
    summary = train_run(tiny_vae_config(epochs=3, precision="bf16", final_eval="full"), tmp_path / "run", **QUIET)
    assert summary["precision"] == "bf16"
    losses = [row["val_neg_elbo"] for row in read_metrics(tmp_path / "run")]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 20, losses
    assert seen and all(not autocast and weights == out == torch.float32 for autocast, weights, out in seen)
    assert abs(summary["eval"]["neg_elbo_nats"] - losses[-1]) < 40  # a plausible fp32 figure, not a bf16 one


def test_the_machine_description_reads_the_cpu_as_linux_reports_it():
    m = describe_machine()
    assert m["cores"] == os.cpu_count() and m["torch_threads"] == torch.get_num_threads()
    assert m["torch"] == torch.__version__
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
        assert m["isa"] == [f for f in ISA_FLAGS if f in flags]
        assert m["cpu"] in text
    line = machine_line({"cpu": "AMD EPYC", "isa": ["avx2"], "cores": 2, "torch_threads": 1, "torch": "2.13.0+cpu"})
    assert line == "AMD EPYC (avx2), 2 cores, 1 torch thread, torch 2.13.0+cpu"
    assert machine_line({"cpu": "X", "isa": [], "cores": 16, "torch_threads": 8, "torch": "2"}) == \
        "X, 16 cores, 8 torch threads, torch 2"
    assert machine_line({"cpu": "X", "isa": [], "cores": 16, "torch_threads": 8, "torch": "2", "gpu": "H200"}) == \
        "X, 16 cores, 8 torch threads, torch 2, H200"
    assert ("gpu" in m) == torch.cuda.is_available()


KEPT_MEMORY_PROBE = """
import resource, sys, torch
from genzoo.devices import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(6):  # a forward pass's pattern: large activations allocated, written, freed, again and again
    if i == 2:
        start = faults()
    xs = [torch.ones(1 << 20 + k % 3) for k in range(8)]  # 4-16 MB each
    del xs
print((faults() - start) / 4)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_activations_are_reused_without_page_faults():
    """keep_freed_memory: after the first passes, large tensors come back from malloc's heap instead of fresh
    mappings whose every page faults in (about 17,400 pages of 4 KiB per pass without it).

    Left to itself glibc raises its mmap threshold as blocks are freed and trims the heap when its top is free, so
    whether a process without keep_freed_memory faults depends on the order of its frees: the same probe faulted 512
    or 17,377 times a pass from one run to the next (and on CI). GLIBC_TUNABLES pins the threshold at glibc's
    documented 128 KiB in both probes, a starting point that does not move; keep_freed_memory must overrule it."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}

    def faults_per_pass(setting):
        out = subprocess.run([sys.executable, "-c", KEPT_MEMORY_PROBE, setting], capture_output=True, text=True,
                             timeout=120, check=True, env=env)
        return float(out.stdout.split()[-1])
    pages = 8 * (1 << 21) * 4 / 4096 * 7 / 8  # roughly the 4 KiB pages one pass writes
    assert faults_per_pass("on") < 0.1 * pages
    assert faults_per_pass("off") > 0.5 * pages  # what it saves: without it the pages fault in at every pass
