"""Tables of results: a run's test NLL in its family's units, a leaderboard row, the markdown leaderboard.

Pure functions of the JSON a run folder holds (summary.json, eval-*.json); ``bench`` and ``report`` both use them.
"""

from __future__ import annotations

from pathlib import Path

from genzoo import runs, storage, zoo
from genzoo.data.views import reports_bits_per_dim
from genzoo.models.base import DensityKind


def best_test_eval(summary: dict, eval_test: dict | None) -> dict:
    """The test evaluation on the most examples: the trainer's final one, or RUN/eval-test.json of `genzoo eval`
    (preferred on a tie: it is run with the family's full settings, e.g. IWAE with k = 5000)."""
    candidates = [(summary.get("eval", {}), 0)] + ([(eval_test, 1)] if eval_test else [])
    return max(candidates, key=lambda c: (c[0].get("n_examples", 0), c[1]))[0]


def nll_entry(summary: dict, ev: dict) -> dict:
    """The test NLL of the evaluation ``ev`` of a run in its family's units, or None for implicit and
    unnormalised models."""
    kind = DensityKind(summary["kind"])
    if kind in (DensityKind.IMPLICIT, DensityKind.UNNORMALISED):
        return {"value": None, "unit": None, "bound": None, "n_examples": None}
    key = "nll" if "nll_nats" in ev else "neg_elbo"
    bound = kind is DensityKind.BOUND or "bound" in ev.get("nll_estimator", "")
    if reports_bits_per_dim(summary["view"]):
        value, unit = ev[f"{key}_bits_per_dim"], "bits/dim"
    else:
        value, unit = ev[f"{key}_nats"], "nats"
    return {"value": value, "unit": unit, "bound": bound, "n_examples": ev["n_examples"],
            "estimator": ev.get("nll_estimator", "negative ELBO" if key == "neg_elbo" else "exact")}


def row(family: str, run_dir: Path, summary: dict, fid: dict) -> dict:
    """A leaderboard row of a run folder (or a zoo model's: a fine-tuned one's minutes and epochs count its
    source's too, from its card)."""
    path = run_dir / runs.eval_file("test")
    eval_test = storage.read_json(path) if path.is_file() else None
    card = run_dir / zoo.CARD
    source = (storage.read_json(card).get("fine_tuned_from") if card.is_file() else None) or {}
    return {"family": family, "kind": summary["kind"], "view": summary["view"], "run": str(run_dir),
            "nll": nll_entry(summary, best_test_eval(summary, eval_test)), "fid": fid["fid"], "kid": fid["kid"],
            "kid_stderr": fid["kid_stderr"], "fid_samples": fid["n_samples"], "fid_reference": fid["reference"],
            "fid_reference_view": fid["reference_view"],
            "train_minutes": summary["train_wall_time_s"] / 60 + source.get("cpu_hours", 0) * 60,
            "epochs": summary["epochs_completed"] + source.get("epochs", 0),
            "samples_per_s": fid["samples_per_s"], "parameters": summary["parameters"],
            "fid_sampler": fid.get("sampler") or {}, "device": summary.get("device", "cpu")}


def format_nll(nll: dict) -> str:
    if nll["value"] is None:
        return "—"
    return f"{'≤ ' if nll['bound'] else ''}{nll['value']:.3f} {nll['unit']} ({nll['n_examples']} images)"


def sampler_note(sampler: dict | None) -> str:
    """", sampled with k=v, ..." for a FID drawn with options other than the family's defaults."""
    return f", sampled with {', '.join(f'{k}={v}' for k, v in sampler.items())}" if sampler else ""


def leaderboard_markdown(table: dict) -> str:
    rows = table["rows"]
    from_zoo = bool(rows) and all(zoo.is_zoo(r.get("run")) for r in rows)
    origin = ("Every model is the zoo's: `genzoo zoo NAME` shows its card (the training command, genzoo commit, "
              "machine and date); its shipped scores are reused and 'train min' is the minutes its training "
              "took, a fine-tuned model's with its source's ('(GPU)': trained and sampled on a GPU, the others on "
              "CPUs). " if from_zoo else
              f"Each family trained with its preset within {table['budget_minutes']:g} minutes, unless its "
              "finished run was reused (listed below). ")
    lines = [f"# genzoo leaderboard: {table['dataset']}", "",
             f"Written by `{table['command']}` on {table['date']} ({table['machine']}). " + origin +
             "Test NLL in the units of the family's data view: nats per image on the fixed binarisation for "
             "the Bernoulli families, bits per dimension on the 8-bit data otherwise; '≤' marks an upper bound "
             "(an ELBO, an IWAE or a dequantisation bound); '—' where the density kind offers no likelihood. "
             "FID and KID in genzoo's feature space (a small classifier's penultimate layer, not Inception: "
             "comparable only with genzoo's own figures; KID is in the same units, hence large), against the "
             "reference named per row.", "",
             "| family | density kind | view | test NLL (test images) | FID | KID (± s.e.) | FID samples | reference "
             "| epochs | train min | samples/s |",
             "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        name = f"{r['family']} (`{r['run']}`)" if from_zoo else r["family"]
        gpu = " (GPU)" if r.get("device", "cpu").startswith("cuda") else ""  # minutes and rates of another kind
        lines.append(f"| {name} | {r['kind']} | {r['view']} | {format_nll(r['nll'])} | {r['fid']:.2f} | "
                     f"{r['kid']:.3g} (± {r['kid_stderr']:.2g}) | {r['fid_samples']} | "
                     f"{r['fid_reference_view']} view{sampler_note(r.get('fid_sampler'))} | "
                     f"{r['epochs']} | {r['train_minutes']:.1f}{gpu} | {r['samples_per_s']:.1f}{gpu} |")
    for f in table.get("floor", []):
        ref = f["reference_view"]
        lines.append(f"| *training images* | data | {ref} | — | {f['fid']:.2f} | {f['kid']:.3g} "
                     f"(± {f['kid_stderr']:.2g}) | {f['n_samples']} | {ref} view | — | — | — |")
    reused = [r for r in rows if r.get("reused")]
    if reused and not from_zoo:
        lines += ["", "Reused runs (trained elsewhere, e.g. by the benchmarks of BENCHMARKS.md): "
                  + ", ".join(f"{r['family']} = `{r['run']}`" for r in reused) + "."]
    if table.get("floor"):
        lines += ["", "The *training images* rows score real images of the data set the same way: the floor a perfect "
                      "model would reach with as many samples (FID is biased upwards by few samples; KID is unbiased)."]
    return "\n".join(lines) + "\n"
