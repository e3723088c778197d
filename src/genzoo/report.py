"""`genzoo report`: one self-contained HTML page for one or more runs.

Per run: a zoo model's card (the command that trained it, its CPU time, machine and figures), the configuration,
the metrics (the trainer's final evaluation and any `genzoo eval` results), the curves, the sample grid and every
other picture the family drew (reconstructions and interpolations, a denoising trajectory, completions, the replay
buffer, ...). Across runs: the leaderboard table. Images are embedded as data URIs, so the page can be mailed or
archived as one file. A small script marks the page with how many images decoded (``data-images-loaded`` on
<body>) once it has loaded; tests read it back from a browser's DOM.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

from genzoo import runs, storage, zoo
from genzoo.devices import machine_line
from genzoo.tables import best_test_eval, format_nll, nll_entry
from genzoo.errors import RunError

PICTURES = {  # file stem -> caption, in the order they are shown
    "samples": "Samples",
    "recon": "Reconstructions: each test image beside its reconstruction",
    "interp": "Interpolations through the latent space: between the codes of two test images (VAE), their "
              "ODE-inverted noises (DDPM, flow), or two random codes (GAN)",
    "trajectory": "Denoising trajectory, x_T to x_0",
    "completions": "Completions of the bottom half",
    "temperatures": "Samples at lower prior temperatures",
    "buffer": "Replay buffer of the Langevin chains",
    "curves": "Training curves",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { image-rendering: pixelated; max-width: 520px; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 85%; }
section.run { border-top: 2px solid #888; margin-top: 2em; }
"""

MARK_LOADED = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
"""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _optional_json(path: Path) -> dict | None:
    return storage.read_json(path) if path.is_file() else None


def run_record(run: str | Path) -> dict:
    """What the report shows of one run folder or zoo:NAME; a folder without a finished summary is a RunError."""
    run_dir = zoo.resolve(run)
    config = runs.read_config(run_dir)  # names the folder if it is not a run
    summary = _optional_json(run_dir / runs.SUMMARY)
    if summary is None:
        raise RunError(f"{run_dir} has no {runs.SUMMARY} yet: finish or resume its training first.")
    evals = {p.stem: storage.read_json(p) for p in sorted(run_dir.glob("eval-*.json"))}
    pictures = [(run_dir / f"{stem}.png", caption) for stem, caption in PICTURES.items()
                if (run_dir / f"{stem}.png").is_file()]
    pictures += [(p, p.stem) for p in sorted(run_dir.glob("*.png")) if p.stem not in PICTURES]
    card = storage.read_json(run_dir / zoo.CARD) if zoo.is_zoo(run) else None
    return {"dir": run_dir, "name": str(run), "card": card, "config": config.to_json(), "summary": summary,
            "evals": evals, "pictures": pictures}


def leaderboard_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        s, fid = r["summary"], r["evals"].get("eval-fid")
        ev = best_test_eval(s, r["evals"].get("eval-test"))
        rows.append({"run": r["name"], "family": s["family"], "kind": s["kind"], "view": s["view"],
                     "dataset": s["dataset"], "nll": format_nll(nll_entry(s, ev)),
                     "fid": f"{fid['fid']:.2f}" if fid else "—",
                     "kid": f"{fid['kid']:.3g} ± {fid['kid_stderr']:.2g}" if fid else "—",
                     "fid_samples": str(fid["n_samples"]) if fid else "—",
                     "fid_reference": f"{fid['reference_view']} view" if fid else "—",
                     "train_minutes": f"{s['train_wall_time_s'] / 60:.1f}", "epochs": str(s["epochs_completed"])})
    return rows


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{html.escape(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics(record: dict) -> str:
    flat = []
    for name, result in [("final evaluation", record["summary"].get("eval", {}))] + list(record["evals"].items()):
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat.append([name, key, f"{value:.6g}"])
    return _table(["from", "metric", "value"], flat, numeric={2})


def _card(card: dict) -> str:
    """A zoo model's card (as scripts/zoo_add.py writes it): how it was made, and its figures as measured on the
    shipped weights."""
    epochs = card["epochs"]
    hours, unit = zoo.training_hours(card)
    facts = (f"{hours:.2f} {unit}-hours, {card['steps']:,} steps, {epochs} epoch{'s' * (epochs != 1)}, on "
             f"{machine_line(card['machine'])}; genzoo {card['genzoo_version']} at commit {card['commit'][:10]}, "
             f"{card['date']}.")
    source = card.get("fine_tuned_from")
    if source:  # the hours above count both trainings (scripts/zoo_add.py)
        facts += (f" Fine-tuned from {source['from']}: {source['cpu_hours']:.2f} of those hours, {source['steps']:,} "
                  f"steps" + (f", by {source['command']}" if source.get("command") else "") + ".")
    rows = [[f["name"], f"{f['value']:g}" + (f" ± {f['stderr']:g}" if "stderr" in f else ""), f["unit"],
             f"{f['n']:,}", f.get("reference", "")] for f in card["figures"]]
    return (f"<p>Trained by <code>{html.escape(card['command'])}</code>: {html.escape(facts)}</p>"
            + _table(["figure", "value", "unit", "n", "against"], rows, numeric={1, 3}))


def render(records: list[dict], title: str = "genzoo report") -> str:
    board = leaderboard_rows(records)
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style><script>{MARK_LOADED}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(records)} run(s), written {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}. Test NLL in "
             "the units of each family's data view ('≤' marks an upper bound, '—' no likelihood); FID and KID in "
             "genzoo's feature space." + (" Every zoo:NAME below ships inside genzoo and works offline: "
                                          "<code>genzoo sample zoo:NAME</code> draws from it, <code>genzoo zoo NAME"
                                          "</code> shows its card." if any(r["card"] for r in records) else "")
             + "</p>",
             "<h2>Leaderboard</h2>",
             '<div id="leaderboard">' + _table(
                 ["run", "family", "density kind", "view", "data", "test NLL", "FID", "KID", "FID samples",
                  "FID reference", "epochs", "train min"],
                 [[b["run"], b["family"], b["kind"], b["view"], b["dataset"], b["nll"], b["fid"], b["kid"],
                   b["fid_samples"], b["fid_reference"], b["epochs"], b["train_minutes"]] for b in board],
                 numeric={5, 6, 7, 8, 10, 11})
             + "</div>"]
    for i, r in enumerate(records):
        s = r["summary"]
        parts += [f'<section class="run" id="run-{i}"><h2>{html.escape(r["name"])}</h2>',
                  f"<p>{html.escape(s['family'])} ({html.escape(s['kind'])}) on {html.escape(s['dataset'])}, "
                  f"{s['parameters']:,} parameters, {s['epochs_completed']} epochs, {s['steps']} steps, "
                  f"{s['train_wall_time_s'] / 60:.1f} min on {html.escape(s['device'])}"
                  f"{'' if s['finished'] else ' (stopped before its last epoch)'}.</p>",
                  *(["<h3>Model card</h3>", _card(r["card"])] if r["card"] else []),
                  "<h3>Pictures</h3>", "".join(_img(p, c) for p, c in r["pictures"]) or "<p>none</p>",
                  "<h3>Metrics</h3>", _metrics(r),
                  "<h3>Configuration</h3>", f"<pre>{html.escape(json.dumps(r['config'], indent=2))}</pre>",
                  "</section>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dirs: list[str | Path], out: Path, title: str = "genzoo report") -> Path:
    """The page for run folders and zoo:NAMEs, written atomically to ``out``."""
    records = [run_record(d) for d in run_dirs]  # every folder is read before anything is written
    out = Path(out)
    text = render(records, title)
    storage.atomic_write(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out
