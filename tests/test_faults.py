"""Training that survives faults: SIGKILL at random moments, a write that fails (a file-size limit standing in
for a full disk). Each test drives the real command line in a child process."""

import hashlib
import random
import resource
import subprocess
import sys
import time

import pytest

from genzoo import runs, storage

TINY = ["train", "vae", "--subset", "512", "--batch-size", "64", "--latent-dim", "4", "--hidden", "32",
        "--depth", "1", "--eval-iwae-k", "8", "--eval-n", "64", "--seed", "3"]


def genzoo(*argv, limit_bytes=None, **kw):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "genzoo", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit if limit_bytes else None, **kw)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_9_at_random_moments_never_loses_the_checkpoint_and_the_run_finishes_as_if_uninterrupted(tmp_path):
    start = time.monotonic()
    reference = genzoo(*TINY, "--epochs", "6", "--out", tmp_path / "ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.monotonic() - start  # start-up, 6 epochs and the final evaluation, on this machine now
    rng = random.Random(0)
    run = tmp_path / "run"
    kills, finished = 0, False
    while kills < 4:
        argv = [*TINY, "--epochs", "6", "--out", run] + (["--resume"] if (run / runs.CONFIG).is_file() else [])
        child = genzoo(*argv)
        time.sleep(rng.uniform(0.3, 0.9) * duration)
        if child.poll() is not None:  # it finished before the kill
            assert child.returncode == 0, child.stderr.read()
            finished = True
            break
        child.kill()
        child.wait()
        kills += 1
        if (run / runs.CHECKPOINT).is_file():  # whatever the moment, the current checkpoint is complete
            tensors, meta = storage.load_tensors(run / runs.CHECKPOINT)
            assert "progress" in meta and tensors
    # the last process was killed: resume once more, even when summary.json exists (a resume of a finished run,
    # killed while it redrew the pictures, leaves the summary of the process before it and a .tmp of its own)
    if not finished:
        final = genzoo(*TINY, "--epochs", "6", "--out", run, *(["--resume"] if (run / runs.CONFIG).is_file() else []))
        assert final.wait(timeout=300) == 0, final.stderr.read()
    assert digest(run / runs.MODEL) == digest(tmp_path / "ref" / runs.MODEL)  # bit for bit
    assert not list(run.glob(".*.tmp"))  # leftovers of killed writes are cleared on resume


def test_a_failed_write_is_one_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    first = genzoo(*TINY, "--epochs", "1", "--out", run)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = digest(run / runs.CHECKPOINT)
    size = (run / runs.CHECKPOINT).stat().st_size
    full = genzoo(*TINY, "--epochs", "2", "--out", run, "--resume", limit_bytes=size // 2)  # a 'full disk'
    _, err = full.communicate(timeout=300)
    assert full.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("genzoo: error: could not write") and "File too large" in lines[0]
    assert "the previous file is intact" in lines[0]
    assert digest(run / runs.CHECKPOINT) == before and not list(run.glob(".*.tmp"))
    again = genzoo(*TINY, "--epochs", "2", "--out", run, "--resume")  # space again: the run goes on
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert storage.read_json(run / runs.SUMMARY)["epochs_completed"] == 2


@pytest.mark.parametrize("limit", [2000])
def test_a_write_that_fails_before_any_checkpoint_leaves_nothing_half_written(tmp_path, limit):
    full = genzoo(*TINY, "--epochs", "1", "--out", tmp_path / "run", limit_bytes=limit)
    _, err = full.communicate(timeout=300)
    assert full.returncode == 2 and "could not write" in err and "Traceback" not in err
    assert not (tmp_path / "run" / runs.CHECKPOINT).exists() and not list((tmp_path / "run").glob(".*.tmp"))
