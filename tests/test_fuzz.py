"""Property-based tests (hypothesis): arbitrary bytes and arbitrary JSON given to the IDX reader, the config
loader and the run loader end in a genzoo error with a message, never in a crash, a hang or a huge allocation."""

import gzip
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genzoo import runs, storage
from genzoo.data.idx import IDX_DTYPES, encode_idx, parse_idx, read_bytes
from genzoo.errors import DataError, GenzooError, RunError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_an_idx_array_or_a_data_error(data):
    try:
        out = parse_idx(data)
    except DataError as e:
        assert str(e).startswith("<bytes>: ")
    else:
        assert isinstance(out, np.ndarray)


@FUZZ
@given(code=st.sampled_from(sorted(IDX_DTYPES)), shape=st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=8),
       payload=st.binary(max_size=64))
def test_headers_claiming_any_shape_are_refused_before_allocating(code, shape, payload):
    data = struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + payload
    try:
        out = parse_idx(data)
    except DataError as e:
        assert "IDX" in str(e) or "bytes" in str(e)
    else:  # only when the payload is exactly what the header says
        assert out.shape == tuple(shape) and out.nbytes == len(payload)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_gzip_bytes_are_refused_in_one_sentence(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.gz"
        path.write_bytes(data)
        try:
            read_bytes(path)
        except DataError as e:
            assert str(path) in str(e)


def test_a_decompression_bomb_is_refused_without_inflating_it(monkeypatch, tmp_path):
    from genzoo.data import idx

    monkeypatch.setattr(idx, "MAX_PAYLOAD_BYTES", 1 << 20)
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((128, 128, 128), np.uint8))))  # 2 MiB of zeros: 2 kB packed
    try:
        read_bytes(path)
    except DataError as e:
        assert "more than genzoo accepts" in str(e)
    else:
        raise AssertionError("the bomb was inflated")


def _write_run(folder: Path, config_text: str | bytes) -> None:
    folder.mkdir(exist_ok=True)
    (folder / runs.CONFIG).write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())


@FUZZ
@given(json_values)
def test_arbitrary_json_as_a_config_is_a_config_or_a_run_error(value):
    with tempfile.TemporaryDirectory() as d:
        _write_run(Path(d), json.dumps(value))
        try:
            runs.read_config(Path(d))
        except RunError as e:
            assert "config.json" in str(e)


@FUZZ
@given(family=st.sampled_from(["vae", "ddpm", "pixelcnn", "realnvp", "gan", "ebm", "../x", ""]),
       model=st.dictionaries(st.sampled_from(["latent_dim", "hidden", "channels", "head", "loss", "scales", "x"]),
                             json_values, max_size=3),
       train=st.dictionaries(st.sampled_from(["dataset", "epochs", "lr", "batch_size", "device", "seed"]),
                             json_values, max_size=3))
def test_configs_with_fuzzed_fields_load_or_name_what_is_wrong(family, model, train):
    with tempfile.TemporaryDirectory() as d:
        _write_run(Path(d), json.dumps({"family": family, "model": model, "train": train, "eval": {}}))
        try:
            cfg = runs.read_config(Path(d))
        except RunError as e:
            assert "config.json is damaged" in str(e)
        else:  # what loads is valid: a data set name never becomes a path outside genzoo's own
            assert cfg.train.dataset in ("mnist", "fashion-mnist", "toy-ring")


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_weights_are_a_run_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / runs.MODEL
        path.write_bytes(data)
        try:
            storage.load_tensors(path)
        except GenzooError as e:
            assert "safetensors" in str(e)


@FUZZ
@given(header=json_values, length_delta=st.integers(-8, 8))
def test_safetensors_files_with_arbitrary_headers_are_a_run_error(header, length_delta):
    text = json.dumps(header).encode()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / runs.MODEL
        path.write_bytes(struct.pack("<Q", max(len(text) + length_delta, 0)) + text + b"\0" * 8)
        try:
            storage.load_tensors(path)
        except GenzooError as e:
            assert "safetensors" in str(e)
