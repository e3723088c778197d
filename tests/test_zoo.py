"""The zoo: packing a run, opening zoo:NAME with its files verified, half-precision storage, fetching by URL, and
every model that ships loading and sampling."""

import functools
import json

import pytest
import torch

from conftest import LocalServer, assert_one_clear_error, tiny_vae_config
from genzoo import runs, storage, zoo
from genzoo.errors import ConfigError, RunError
from genzoo.trainer import draw_pictures, train_run

CARD = {"family": "vae", "kind": "bound", "dataset": "mnist", "cpu_hours": 0.001, "command": "genzoo train vae --tiny",
        "steps": 3, "epochs": 1, "genzoo_version": "0.1.0", "commit": "0123456789abcdef", "date": "2026-11-26",
        "machine": {"cpu": "Test CPU", "isa": ["avx2"], "cores": 2, "torch_threads": 1, "torch": "2"},
        "figures": [{"name": "-ELBO", "value": 200.0, "stderr": 1.5, "unit": "nats", "n": 64, "reference": "test"}]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "vae"
    train_run(tiny_vae_config(epochs=1), folder, log=lambda *a: None, progress_bar=False)
    return folder


@pytest.fixture
def root(tmp_path, finished_run, monkeypatch):
    """A zoo of one model, tiny-vae, in a folder of its own; the user's cache in another."""
    monkeypatch.setattr(zoo, "ROOT", tmp_path / "zoo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    zoo.pack(finished_run, "tiny-vae", CARD)
    return tmp_path / "zoo"


def test_a_packed_model_is_the_run_in_half_precision(root, finished_run):
    entry = zoo.read_index()["tiny-vae"]
    assert {"config.json", "model.safetensors", "card.json", "summary.json", "samples.png"} <= set(entry["files"])
    assert not any(f.endswith(".safetensors") and f != "model.safetensors" for f in entry["files"])  # no checkpoint
    stored, meta = storage.load_tensors(root / "tiny-vae" / "model.safetensors")
    assert meta["storage_dtype"] == "float16" and all(t.dtype == torch.float16 for t in stored.values())
    original, fromzoo = runs.load_run(finished_run), runs.load_run("zoo:tiny-vae")
    for (name, a), (_, b) in zip(original.model.state_dict().items(), fromzoo.model.state_dict().items()):
        assert b.dtype == a.dtype == torch.float32, name  # loading restores the model's precision
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0)  # exactly the half-rounded weights
    x = torch.randint(0, 2, (16, 1, 28, 28)).float()
    torch.manual_seed(0)
    a = original.model.elbo(x)
    torch.manual_seed(0)
    b = fromzoo.model.elbo(x)
    torch.testing.assert_close(b, a, rtol=2e-3, atol=0.05)  # half storage moves the bound by little


def test_8_bit_storage_moves_each_weight_by_at_most_half_a_step_of_its_output_units_scale():
    torch.manual_seed(0)
    own = {"net.0.weight": torch.randn(64, 3, 5, 5) * torch.logspace(-4, 0, 64).reshape(64, 1, 1, 1),
           "net.0.bias": torch.randn(64), "small.weight": torch.randn(4, 4), "prior_scale_tril": torch.randn(20, 50, 50),
           "steps": torch.arange(3)}
    stored, meta = zoo.stored_weights(own, zoo.INT8)
    assert meta == {"storage_dtype": "int8"}
    assert stored["net.0.weight"].dtype == torch.int8 and stored["net.0.weight#scale"].shape == (64,)
    assert stored["net.0.bias"].dtype == stored["small.weight"].dtype == stored["prior_scale_tril"].dtype == torch.float16
    assert stored["steps"].dtype == torch.int64
    restored = zoo.restore_precision(stored, meta, own)
    assert set(restored) == set(own) and all(restored[k].dtype == own[k].dtype for k in own)
    step = own["net.0.weight"].abs().amax(dim=(1, 2, 3)) / 127  # each output unit's own scale, 1e-4 to 1 apart
    error = (restored["net.0.weight"] - own["net.0.weight"]).abs().amax(dim=(1, 2, 3))
    assert (error <= step * (0.5 + 1e-5)).all() and (error > step / 4).any()  # half a step, and float rounding
    torch.testing.assert_close(restored["net.0.bias"], own["net.0.bias"].half().float(), rtol=0, atol=0)
    torch.testing.assert_close(restored["steps"], own["steps"], rtol=0, atol=0)


def test_a_model_packed_in_8_bits_loads_smaller_and_close_to_the_run(root, finished_run):
    zoo.pack(finished_run, "tiny-vae-8bit", CARD, stored_as=zoo.INT8)
    index = zoo.read_index()
    assert index["tiny-vae-8bit"]["bytes"] < index["tiny-vae"]["bytes"]
    original, fromzoo = runs.load_run(finished_run), runs.load_run("zoo:tiny-vae-8bit")
    assert all(t.dtype == torch.float32 for t in fromzoo.model.state_dict().values())
    x = torch.randint(0, 2, (16, 1, 28, 28)).float()
    torch.manual_seed(0)
    a = original.model.elbo(x)
    torch.manual_seed(0)
    b = fromzoo.model.elbo(x)
    torch.testing.assert_close(b, a, rtol=1e-2, atol=0.5)  # 8 bits move the bound by little, and measurably
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="unknown zoo storage 'int4'"):
        zoo.pack(finished_run, "tiny-vae-4bit", CARD, stored_as="int4")
    assert not (root / "tiny-vae-4bit").exists()


def test_a_damaged_or_substituted_file_is_refused_in_one_sentence(root, run_cli):
    weights = root / "tiny-vae" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match="fails its SHA-256 check"):
        runs.load_run("zoo:tiny-vae")
    code, _, err = run_cli("sample", "zoo:tiny-vae", "--n", "4")
    assert_one_clear_error(code, err, "zoo:tiny-vae", "model.safetensors", "SHA-256")


def test_redrawn_pictures_are_refused_until_reindexed_and_the_entry_keeps_its_url(root):
    """A zoo model's pictures drawn again from its weights (scripts/zoo_add.py --redraw) change files the index
    vouches for: the model is refused until the index is rewritten from the folder."""
    folder = root / "tiny-vae"
    before = zoo.read_index()["tiny-vae"]
    index = storage.read_json(root / zoo.INDEX)
    index["models"]["tiny-vae"]["url"] = "https://example.org/zoo/tiny-vae"
    storage.write_json(root / zoo.INDEX, index)
    run = runs.load_run("zoo:tiny-vae")
    drawn = draw_pictures(run.model, runs.run_data(run.config), folder, torch.device("cpu"), quick=True)
    assert set(drawn) == {"samples.png", "recon.png", "interp.png"}
    (folder / "samples.png").write_bytes((folder / "samples.png").read_bytes() + b"\0")  # surely different
    with pytest.raises(RunError, match="fails its SHA-256 check"):
        runs.load_run("zoo:tiny-vae")
    after = zoo.reindex("tiny-vae")
    assert runs.load_run("zoo:tiny-vae").model is not None
    assert after["url"] == "https://example.org/zoo/tiny-vae" and set(after["files"]) == set(before["files"])
    assert after["files"]["samples.png"] != before["files"]["samples.png"]
    assert after["files"]["model.safetensors"] == before["files"]["model.safetensors"]
    assert after["bytes"] == sum(p.stat().st_size for p in folder.iterdir())


def test_an_unknown_name_lists_the_zoo(root, run_cli):
    with pytest.raises(ConfigError, match=r"no zoo model 'no-such'; the zoo has: zoo:tiny-vae\."):
        runs.load_run("zoo:no-such")
    code, _, err = run_cli("eval", "zoo:no-such")
    assert_one_clear_error(code, err, "zoo:tiny-vae")


def test_zoo_models_work_from_the_cli_and_write_into_the_working_folder(root, run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in (root / "tiny-vae").iterdir()}
    code, out, _ = run_cli("sample", "zoo:tiny-vae", "--n", "4", "--seed", "3")
    assert code == 0 and (tmp_path / "tiny-vae-samples-seed3.png").is_file()
    code, out, _ = run_cli("eval", "zoo:tiny-vae", "--n", "16", "--iwae-k", "2")
    assert code == 0 and (tmp_path / "tiny-vae-eval-test.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in (root / "tiny-vae").iterdir()} == before  # the zoo is never written
    code, out, _ = run_cli("zoo")
    assert code == 0 and "tiny-vae" in out and "-ELBO 200 nats (n=64)" in out and "0.00 CPU" in out
    code, out, _ = run_cli("zoo", "tiny-vae")
    assert code == 0 and '"cpu_hours": 0.001' in out
    code, out, _ = run_cli("report", "zoo:tiny-vae", "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and "<h2>zoo:tiny-vae</h2>" in page and str(root) not in page  # named as users name it
    assert ("<code>genzoo train vae --tiny</code>: 0.00 CPU-hours, 3 steps, 1 epoch, on Test CPU (avx2), 2 cores, "
            "1 torch thread, torch 2; genzoo 0.1.0 at commit 0123456789, 2026-11-26.</p>") in page
    assert "<td>-ELBO</td><td class=num>200 ± 1.5</td><td>nats</td><td class=num>64</td>" in page
    code, out, _ = run_cli("report", "--zoo", "--out", tmp_path / "zoo.html")
    assert code == 0 and "1 run(s)" in out
    page = (tmp_path / "zoo.html").read_text()
    assert "<h1>the genzoo zoo</h1>" in page and "<h2>zoo:tiny-vae</h2>" in page and "works offline" in page
    code, _, err = run_cli("report", "--out", tmp_path / "none.html")
    assert_one_clear_error(code, err, "--zoo")


def test_a_model_listed_with_a_url_is_fetched_verified_into_the_cache(root, tmp_path):
    served = tmp_path / "served"
    (root / "tiny-vae").rename(served)  # the package no longer holds it: only the URL does
    state = {"tamper": False}

    def respond(path):
        f = served / path.rsplit("/", 1)[-1]
        if not f.is_file():
            return None
        body = f.read_bytes()
        return body[:-1] + bytes([body[-1] ^ 1]) if state["tamper"] else body
    server = LocalServer(respond)
    try:
        index = storage.read_json(root / zoo.INDEX)
        index["models"]["tiny-vae"]["url"] = server.url + "/models/tiny-vae"
        storage.write_json(root / zoo.INDEX, index)
        state["tamper"] = True
        with pytest.raises(RunError, match="fails its SHA-256 check"):
            zoo.resolve("zoo:tiny-vae")
        cached = tmp_path / "cache" / "genzoo" / "zoo" / "tiny-vae"
        assert not any(cached.iterdir())  # nothing half-written, nothing unverified kept
        state["tamper"] = False
        folder = zoo.resolve("zoo:tiny-vae")
        files = index["models"]["tiny-vae"]["files"]
        assert folder == cached and sorted(p.name for p in folder.iterdir()) == sorted(files)
        n = len(server.requests)
        runs.load_run("zoo:tiny-vae")
        assert len(server.requests) == n  # a complete, verified copy is not fetched again
    finally:
        server.close()


@functools.cache
def shipped():
    return zoo.names()


@pytest.mark.parametrize("name", shipped() or [pytest.param(None, marks=pytest.mark.skip("no zoo models yet"))])
def test_every_shipped_model_loads_and_samples(name):
    run = runs.load_run(f"zoo:{name}")
    card = zoo.read_card(name)
    assert card["family"] == run.config.family and card["dataset"] == run.config.train.dataset
    x = run.model.sample(2, torch.Generator().manual_seed(0))
    assert x.shape[0] == 2 and torch.isfinite(x).all() and 0 <= x.min() and x.max() <= 1


# #15: at most 30 MB. The largest entries store their large weights in 8 bits (zoo.INT8) to stay under it.
ZOO_CEILING_MB = 30


def test_the_shipped_zoo_stays_small():
    total = sum(e["bytes"] for e in zoo.read_index().values())
    assert total <= ZOO_CEILING_MB * 1e6, f"the zoo holds {total / 1e6:.1f} MB; the ceiling is {ZOO_CEILING_MB} MB"


def test_bench_reads_the_zoo_without_writing_into_it(root, finished_run, tmp_path, run_cli):
    from genzoo.evaluate import sample_quality
    from genzoo.runs import run_data

    run = runs.load_run(finished_run)
    shipped = sample_quality(run.model, run_data(run.config), 40)
    shipped["sampler"] = {"temperature": 0.9}  # as a card may choose: the shipped protocol is reused all the same
    zoo.pack(finished_run, "tiny-vae", CARD, results={"eval-fid.json": shipped})
    before = {p: p.stat().st_mtime_ns for p in (root / "tiny-vae").iterdir()}
    code, out, err = run_cli("bench", "--zoo", "--fid-n", 40, "--out", tmp_path / "lb")
    assert code == 0, err
    table = json.loads((tmp_path / "lb" / "leaderboard.json").read_text())
    (only,) = table["rows"]
    assert only["run"] == "zoo:tiny-vae" and only["fid"] == shipped["fid"]  # the shipped score, reused
    assert only["fid_sampler"] == {"temperature": 0.9}
    markdown = (tmp_path / "lb" / "LEADERBOARD.md").read_text()
    assert "binary view, sampled with temperature=0.9 |" in markdown
    assert "| vae (`zoo:tiny-vae`) | bound |" in markdown and "Every model is the zoo's" in markdown
    assert "within 10 minutes" not in markdown and "Reused runs" not in markdown
    assert {p: p.stat().st_mtime_ns for p in (root / "tiny-vae").iterdir()} == before
    code, _, err = run_cli("bench", "--zoo", "--dataset", "fashion-mnist", "--out", tmp_path / "lb2")
    assert_one_clear_error(code, err, "the zoo has no model of fashion-mnist")


def load_zoo_add():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "zoo_add.py"
    spec = importlib.util.spec_from_file_location("zoo_add", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zoo_add_scores_the_packed_copy_and_an_interrupted_scoring_leaves_the_shipped_model(root, finished_run,
                                                                                            monkeypatch):
    zoo_add = load_zoo_add()
    args = ["zoo_add.py", str(finished_run), "tiny-vae", "--command", "genzoo train vae --again", "--eval-n", "32",
            "--iwae-k", "2", "--fid-n", "0", "--threads", "1"]
    before = storage.read_json(root / zoo.INDEX)
    files = {p.name: p.read_bytes() for p in (root / "tiny-vae").iterdir()}

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    evaluate = zoo_add.evaluate
    monkeypatch.setattr(zoo_add, "evaluate", interrupted)
    monkeypatch.setattr("sys.argv", args)
    with pytest.raises(KeyboardInterrupt):
        zoo_add.main()
    assert storage.read_json(root / zoo.INDEX) == before  # the shipped entry, file for file
    assert {p.name: p.read_bytes() for p in (root / "tiny-vae").iterdir()} == files
    assert runs.load_run("zoo:tiny-vae").model is not None

    monkeypatch.setattr(zoo_add, "evaluate", evaluate)
    assert zoo_add.main() == 0
    card = json.loads((root / "tiny-vae" / "card.json").read_text())
    assert card["command"] == "genzoo train vae --again"
    scored = json.loads((root / "tiny-vae" / runs.eval_file("test")).read_text())
    assert scored["n_examples"] == 32 and [f["value"] for f in card["figures"] if f["name"] == "-ELBO"] == [
        round(scored["neg_elbo_nats"], 3)]
    assert runs.load_run("zoo:tiny-vae").model is not None  # the index vouches for the new files


def test_a_repack_in_8_bits_measures_the_stored_copy_again_and_keeps_the_figures_it_did_not(root, monkeypatch):
    zoo_add = load_zoo_add()
    card = json.loads((root / "tiny-vae" / "card.json").read_text())
    card["figures"] = [{"name": "-ELBO", "value": 1.0, "unit": "nats", "n": 5, "reference": "mnist test"},
                       {"name": "NLL (ODE)", "value": 2.0, "unit": "nats", "n": 5, "reference": "mnist test"}]
    (root / "tiny-vae" / "card.json").write_text(json.dumps(card))
    zoo.reindex("tiny-vae")
    half = runs.load_run("zoo:tiny-vae").model.state_dict()
    monkeypatch.setattr("sys.argv", ["zoo_add.py", "--repack", "zoo:tiny-vae", "--storage", "int8", "--eval-n", "32",
                                     "--iwae-k", "2", "--fid-n", "0", "--threads", "1"])
    assert zoo_add.main() == 0
    stored, meta = storage.load_tensors(root / "tiny-vae" / "model.safetensors")
    assert meta["storage_dtype"] == "int8" and any(t.dtype == torch.int8 for t in stored.values())
    card = json.loads((root / "tiny-vae" / "card.json").read_text())
    scored = json.loads((root / "tiny-vae" / runs.eval_file("test")).read_text())
    figures = {f["name"]: f for f in card["figures"]}
    assert figures["-ELBO"]["value"] == round(scored["neg_elbo_nats"], 3) and figures["-ELBO"]["n"] == 32
    assert figures["NLL (ODE)"]["value"] == 2.0  # not measured again: kept
    assert "stored as int8" in card["rescored"][-1]["what"] and "--repack" in card["rescored"][-1]["command"]
    repacked = runs.load_run("zoo:tiny-vae").model.state_dict()  # the index vouches for the new files
    for name, weight in half.items():
        scale = stored.get(name + "#scale")
        if scale is not None:
            bound = scale.reshape(-1, *[1] * (weight.dim() - 1)) * (0.5 + 1e-5)  # half a step, and float rounding
            assert ((repacked[name] - weight).abs() <= bound).all(), name


def test_the_ebm_ships_a_few_chains_of_its_replay_buffer(tmp_path, monkeypatch):
    """An EBM's buffer (8,192 chains in the zoo recipe, 13 MB in half precision) is training state: the zoo keeps
    the first RELEASED_CHAINS of them, the shipped config says so, and the model loads and samples from them."""
    from genzoo.config import EvalConfig, TrainConfig
    from genzoo.models.ebm import EBM, EBMConfig
    from genzoo.runs import RunConfig

    monkeypatch.setattr(EBM, "RELEASED_CHAINS", 5)
    monkeypatch.setattr(zoo, "ROOT", tmp_path / "zoo")
    cfg = RunConfig(family="ebm", model=EBMConfig(channels=2, hidden=4, buffer_size=12, sgld_steps=1, sample_steps=2),
                    train=TrainConfig(epochs=1, batch_size=32, subset=64, max_steps=2, precision="fp32",
                                      final_eval="skip"), eval=EvalConfig(n=32))
    train_run(cfg, tmp_path / "ebm", log=lambda *a: None, progress_bar=False)
    zoo.pack(tmp_path / "ebm", "tiny-ebm", {**CARD, "family": "ebm", "kind": "unnormalised"}, release=EBM.for_release)
    trained, shipped = runs.load_run(tmp_path / "ebm"), runs.load_run("zoo:tiny-ebm")
    assert shipped.config.model.buffer_size == 5 and trained.config.model.buffer_size == 12
    torch.testing.assert_close(shipped.model.replay, trained.model.replay[:5].half().float(), rtol=0, atol=0)
    for name, weight in trained.model.net.state_dict().items():  # the energy net itself is all there
        torch.testing.assert_close(shipped.model.net.state_dict()[name], weight.half().float(), rtol=0, atol=0)
    assert shipped.model.sample(3, torch.Generator().manual_seed(0), from_buffer=True).shape == (3, 1, 28, 28)


def test_a_card_names_the_hours_of_the_device_that_trained_the_model():
    assert zoo.training_hours(CARD) == (0.001, "CPU")  # cards written before the device was recorded: a CPU
    assert zoo.training_hours({**CARD, "device": "cpu"}) == (0.001, "CPU")
    assert zoo.training_hours({**CARD, "cpu_hours": 0.07, "device": "cuda"}) == (0.07, "GPU")


def test_the_leaderboard_marks_the_minutes_and_rates_of_a_model_trained_on_a_gpu():
    from genzoo.tables import leaderboard_markdown

    def entry(family, device):
        return {"family": family, "kind": "exact", "view": "binary", "run": f"zoo:{family}-mnist",
                "nll": {"value": 80.0, "unit": "nats", "bound": False, "n_examples": 10}, "fid": 5.0, "kid": 1.0,
                "kid_stderr": 0.1, "fid_samples": 10, "fid_reference_view": "binary", "train_minutes": 4.1,
                "epochs": 12, "samples_per_s": 285.3, "device": device}

    rows = [entry("pixelcnn", "cuda"), entry("realnvp", "cpu"), entry("vae", "cpu")]
    rows[2].pop("device")  # a row of a run recorded before the device was: a CPU's
    lines = leaderboard_markdown({"rows": rows, "dataset": "mnist", "command": "genzoo bench --zoo", "date": "d",
                                  "machine": "m"}).splitlines()
    by_family = {f: next(line for line in lines if line.startswith(f"| {f} ")) for f in ("pixelcnn", "realnvp", "vae")}
    assert by_family["pixelcnn"].endswith("| 12 | 4.1 (GPU) | 285.3 (GPU) |")
    assert by_family["realnvp"].endswith("| 12 | 4.1 | 285.3 |") and by_family["vae"].endswith("| 12 | 4.1 | 285.3 |")


def test_a_fine_tuned_model_replacing_its_source_keeps_the_sources_record_and_cost(root, tmp_path, monkeypatch):
    """A model fine-tuned from zoo:NAME (--init-from) and packed as NAME replaces its own source: the card keeps
    the source's card (read before packing) and counts the CPU hours of both trainings."""
    zoo_add = load_zoo_add()
    tuned = tmp_path / "tuned"
    train_run(tiny_vae_config(epochs=1, init_from="zoo:tiny-vae"), tuned, log=lambda *a: None)
    own = storage.read_json(tuned / runs.SUMMARY)["train_wall_time_s"] / 3600
    monkeypatch.setattr("sys.argv", ["zoo_add.py", str(tuned), "tiny-vae", "--command", "genzoo train vae --init-from "
                                     "zoo:tiny-vae", "--eval-n", "16", "--iwae-k", "2", "--fid-n", "0"])
    assert zoo_add.main() == 0
    card = zoo.read_card("tiny-vae")
    source = card["fine_tuned_from"]
    assert source["from"] == "zoo:tiny-vae" and source["command"] == CARD["command"]
    assert source["cpu_hours"] == CARD["cpu_hours"] and "figures" not in source
    assert card["cpu_hours"] == round(round(own, 3) + CARD["cpu_hours"], 3)
    from genzoo.report import _card

    assert (f"Fine-tuned from zoo:tiny-vae: {CARD['cpu_hours']:.2f} of those hours, {CARD['steps']:,} steps, by "
            f"{CARD['command']}.") in _card(card)
    from genzoo.tables import row

    fid = {"fid": 1.0, "kid": 1.0, "kid_stderr": 0.1, "n_samples": 1, "reference": "r", "reference_view": "float",
           "samples_per_s": 1.0}
    board = row("vae", root / "tiny-vae", storage.read_json(root / "tiny-vae" / runs.SUMMARY), fid)
    assert board["train_minutes"] == pytest.approx(own * 60 + CARD["cpu_hours"] * 60)
    assert board["epochs"] == 1 + CARD["epochs"]
