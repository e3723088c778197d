"""Data-parallel training with torchrun: two gloo processes on this CPU against one process."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from genzoo import runs, storage

# fp32: DDP's equality with one process is an identity to round-off in fp32; under bf16 (what --precision auto picks
# on a CPU with AVX-512-BF16 or AMX) the two orders of summation differ by far more than fp32 round-off
TINY = ["--subset", "256", "--channels", "8", "--layers", "2", "--head-channels", "16", "--eval-n", "16",
        "--seed", "1", "--precision", "fp32"]


def start(*argv, nproc=0):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc \
        else [sys.executable]
    # OMP_NUM_THREADS=1 as torchrun sets it: side-by-side processes, one core each; a process killed by a signal
    # prints where each of its threads was
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([*launcher, "-m", "genzoo", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(*children):
    """Wait for commands started side by side (one process each: together they use both cores)."""
    done = []
    for child in children:
        out, err = child.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    return done


def genzoo(*argv, nproc=0):
    return finish(start(*argv, nproc=nproc))[0]


def ranks_said(stderr: str) -> str:
    """What the ranks themselves printed (with PYTHONFAULTHANDLER, every thread's stack if one died of a signal),
    without torchrun's own report that follows it (whose traceback names no cause)."""
    own, _, _ = stderr.rpartition("Traceback (most recent call last):")
    return (own or stderr)[-4000:]


def ddp_train(*argv, out):
    """A two-process training run into ``out``. A rank killed by a signal (SIGABRT, 'terminate called without an
    active exception', in torch's C++ teardown at exit, about 1 launch in 15 until genzoo.cli.entry skipped it) is
    reported as a warning with what the ranks printed and the launch tried once more from scratch; any other
    failure, or a second one, fails the test."""
    run = genzoo("train", *argv, "--out", out, nproc=2)
    if run.returncode != 0 and "Signal" in run.stderr:
        warnings.warn(f"a DDP rank died of a signal; launched again. The ranks said:\n{ranks_said(run.stderr)}")
        shutil.rmtree(out, ignore_errors=True)
        run = genzoo("train", *argv, "--out", out, nproc=2)
    assert run.returncode == 0, ranks_said(run.stderr)
    return run


def weights(run):
    return storage.load_tensors(run / runs.MODEL)[0]


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def pixelcnn_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ddp = ddp_train("pixelcnn", *TINY, "--batch-size", "32", "--max-steps", "6", out=root / "ddp")
    one, half = finish(start("train", "pixelcnn", *TINY, "--batch-size", "32", "--max-steps", "6", "--out", root / "one"),
                       start("train", "pixelcnn", *TINY, "--batch-size", "16", "--max-steps", "6", "--out", root / "half"))
    assert one.returncode == 0 and half.returncode == 0, one.stderr[-2000:] + half.stderr[-2000:]
    return root, ddp


def test_two_processes_train_to_the_weights_of_one_process_with_the_same_global_batch(pixelcnn_runs):
    root, _ = pixelcnn_runs
    assert max_difference(weights(root / "ddp"), weights(root / "one")) < 1e-5
    # and the averaging matters: one process that sees only rank 0's half of each batch ends elsewhere
    assert max_difference(weights(root / "half"), weights(root / "one")) > 1e-3


def test_only_rank_0_writes_and_reports(pixelcnn_runs):
    root, ddp = pixelcnn_runs
    assert ddp.stdout.count("training pixelcnn") == 1 and "x 2 processes" in ddp.stdout
    assert ddp.stdout.count("pictures and metrics in") == 1
    rows = runs.read_metrics(root / "ddp")
    assert len(rows) == 1 and rows[0]["step"] == 6 and rows[0]["partial"]


def test_a_checkpoint_written_under_ddp_resumes_in_one_process(pixelcnn_runs):
    root, _ = pixelcnn_runs
    for done in finish(*[start("train", "pixelcnn", *TINY, "--batch-size", "32", "--max-steps", "10", "--resume",
                               "--out", root / name) for name in ("ddp", "one")]):
        assert done.returncode == 0, done.stderr[-2000:]
    assert storage.read_json(root / "ddp" / runs.SUMMARY)["steps"] == 10
    assert max_difference(weights(root / "ddp"), weights(root / "one")) < 1e-5


@pytest.mark.parametrize("family,argv", [
    ("gan", ["--dataset", "toy-ring", "--hidden", "16", "--depth", "1", "--loss", "hinge"]),
    ("ebm", ["--dataset", "toy-ring", "--hidden", "16", "--depth", "1", "--buffer-size", "64", "--sgld-steps", "3"]),
])
def test_the_gan_and_the_ebm_train_on_two_processes(tmp_path, family, argv):
    ddp_train(family, *argv, "--subset", "512", "--batch-size", "64", "--max-steps", "4", "--eval-n", "100",
              out=tmp_path / "run")
    assert storage.read_json(tmp_path / "run" / runs.SUMMARY)["steps"] == 4
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())


def test_a_global_batch_that_does_not_divide_among_the_processes_is_refused(tmp_path):
    run = genzoo("train", "pixelcnn", *TINY, "--batch-size", "33", "--max-steps", "2", "--out", tmp_path / "run",
                 nproc=2)
    assert run.returncode != 0
    assert "genzoo: error: --batch-size 33 (the global batch) must be a multiple of the 2 processes." in run.stderr
