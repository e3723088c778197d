"""Downloads that never leave a half-written or unverified file where a good one is expected."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from genzoo.errors import DataError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_problem(path: Path, expected: str) -> str | None:
    """None when the file's SHA-256 is ``expected``, else a phrase saying it is not."""
    digest = sha256_file(path)
    if digest != expected:
        return f"fails its SHA-256 check (got {digest[:16]}…, expected {expected[:16]}…)"
    return None


def fetch_verified(url: str, target: Path, problem: Callable[[Path], str | None], timeout: float,
                   error: type[Exception] = DataError) -> None:
    """Download ``url`` to ``target``: to a temporary name in target's folder, checked by ``problem(tmp)`` (None
    when the file is good, else what is wrong with it) and only then renamed, so a cut-off transfer or a wrong file
    never lands where a good one is expected. Failures are ``error`` with one sentence naming the URL."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    expected_len = response.headers.get("Content-Length")
                    received = 0
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        received += len(chunk)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise error(f"{url}: download failed ({reason}).") from None
            if expected_len is not None and received != int(expected_len):
                raise error(f"{url}: transfer cut off ({received} of {expected_len} bytes).")
            out.flush()
            os.fsync(out.fileno())
        wrong = problem(tmp)
        if wrong is not None:
            raise error(f"{url}: {wrong}.")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
