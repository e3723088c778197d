import contextlib
import http.server
import io
import threading

import pytest
import torch

from genzoo.config import EvalConfig, TrainConfig
from genzoo.models.vae import VAEConfig
from genzoo.runs import RunConfig


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def tiny_vae_config(**train) -> RunConfig:
    """A small VAE on the first 512 examples of each MNIST split: 8 steps per epoch at batch size 64."""
    t = dict(epochs=2, batch_size=64, subset=512, lr=2e-3, seed=3, precision="fp32")  # the same on every CPU
    t.update(train)
    return RunConfig(family="vae", model=VAEConfig(latent_dim=4, hidden=32, depth=1),
                     train=TrainConfig(**t), eval=EvalConfig(iwae_k=8, n=64))


@pytest.fixture
def run_cli():
    """Run the CLI in-process: returns (exit status, stdout, stderr)."""
    from genzoo.cli import main

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse
                code = e.code
        return code, out.getvalue(), err.getvalue()

    return run


def assert_one_clear_error(code, err, *fragments):
    """Exit status 2, a single line on stderr, no traceback, and the fragments in the message."""
    assert code == 2, f"exit status {code}, stderr: {err!r}"
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err
    assert lines[0].startswith("genzoo: error: ")
    for frag in fragments:
        assert frag in lines[0], f"{frag!r} not in {lines[0]!r}"


class LocalServer:
    """An HTTP server on 127.0.0.1 for download tests: ``respond(path)`` gives the body of a GET, None for 404, or
    (body, n) to announce the whole body but send only its first n bytes (a transfer cut off). ``requests`` lists
    the paths asked for; ``url`` is the server's root; ``close()`` stops it."""

    def __init__(self, respond):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                body = respond(self.path)
                if body is None:
                    self.send_error(404)
                    return
                body, sent = body if isinstance(body, tuple) else (body, len(body))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:sent])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
