"lvmkit.pretrained against a local HTTP server on 127.0.0.1: export, download, checksum failure, truncation, warm and cold caches, the CLI."
import functools, http.server, json, threading, warnings, socket
from pathlib import Path
import pytest
import torch
from lvmkit.checkpoint import load_checkpoint, save_checkpoint
from lvmkit.cli import main
from lvmkit.core import build_model
from lvmkit.pretrained import export_pretrained, fetch, load, records, sha256sum


def make_run(folder: Path, ema: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("mlp_vae", z_dim=2, hidden=(8,))
    folder.mkdir(parents=True)
    ema_state = {f"module.{k}": v + 1.0 for k, v in m.state_dict().items()} if ema else None   # EMA weights that differ from the raw ones
    save_checkpoint(folder / "last.pt", spec=m.spec, model=m.state_dict(), ema=ema_state, step=3)
    (folder / "result.json").write_text(json.dumps([dict(name=folder.name, metric="nll_nats", value=500.0, k=10, test_n=4, mode="quick")]))
    (folder / "experiment.json").write_text(json.dumps({"data": {"dataset": "binarized_mnist"}, "evaluation": {"batch_size": 2, "max_elements": 2**20}}))
    return m


class Server:
    "A release folder served over HTTP on 127.0.0.1."
    def __init__(self, folder: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
    def stop(self):
        self.srv.shutdown(); self.srv.server_close()


@pytest.fixture
def release(tmp_path):
    model = make_run(tmp_path / "runs" / "tiny")
    entry = export_pretrained(tmp_path / "runs" / "tiny", tmp_path / "release")
    srv = Server(tmp_path / "release")
    yield dict(model=model, entry=entry, url=srv.url, srv=srv, dir=tmp_path / "release", cache=tmp_path / "cache")
    srv.stop()


def test_export_keeps_the_ema_weights_records_and_recipe(tmp_path, release):
    ck = load_checkpoint(release["dir"] / "tiny.pt")
    assert ck["weights"] == "ema" and ck["records"][0]["value"] == 500.0 and ck["experiment"]["evaluation"]["batch_size"] == 2
    raw = release["model"].state_dict()
    assert all(torch.equal(ck["model"][k], raw[k] + 1.0) for k in raw)                        # the EMA weights, not the raw ones
    man = json.loads((release["dir"] / "manifest.json").read_text())["weights"]["tiny"]
    assert man["sha256"] == sha256sum(release["dir"] / "tiny.pt") and man["bytes"] == (release["dir"] / "tiny.pt").stat().st_size
    with pytest.raises(ValueError, match="result.json"):                                          # only evaluated runs
        (tmp_path / "runs" / "tiny" / "result.json").unlink(); export_pretrained(tmp_path / "runs" / "tiny", tmp_path / "r2")


def test_download_verify_cache_and_rebuild(release):
    m = load("tiny", base_url=release["url"], cache=release["cache"])
    raw = release["model"].state_dict()
    assert not m.training and all(torch.equal(m.state_dict()[k], raw[k] + 1.0) for k in raw)
    assert records("tiny", release["url"], release["cache"])[0]["test_n"] == 4
    cached = release["cache"] / "tiny.pt"
    mtime = cached.stat().st_mtime_ns
    fetch("tiny", base_url=release["url"], cache=release["cache"])
    assert cached.stat().st_mtime_ns == mtime                                                     # a verified cached copy is not downloaded again
    assert not [p for p in release["cache"].iterdir() if ".part-" in p.name]                      # no temporary files left


def test_a_damaged_download_is_refused_and_deleted(release):
    f = release["dir"] / "tiny.pt"
    data = bytearray(f.read_bytes()); data[len(data) // 2] ^= 0xFF; f.write_bytes(bytes(data))  # same size, one byte changed
    with pytest.raises(ValueError, match=r"SHA-256 .* truncated or damaged download") as e:
        fetch("tiny", base_url=release["url"], cache=release["cache"])
    assert release["url"] + "/tiny.pt" in str(e.value) and not (release["cache"] / "tiny.pt").exists()


def test_a_truncated_download_is_refused(release):
    f = release["dir"] / "tiny.pt"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"gave 1000 bytes"):
        fetch("tiny", base_url=release["url"], cache=release["cache"])
    assert not (release["cache"] / "tiny.pt").exists()


def test_a_damaged_cached_copy_is_downloaded_again(release):
    fetch("tiny", base_url=release["url"], cache=release["cache"])
    c = release["cache"] / "tiny.pt"
    c.write_bytes(c.read_bytes()[:-10])
    assert sha256sum(fetch("tiny", base_url=release["url"], cache=release["cache"])) == release["entry"]["sha256"]


def test_unknown_name(release):
    with pytest.raises(KeyError, match="no pretrained weights called 'nope'.*available: \\['tiny'\\]"):
        fetch("nope", base_url=release["url"], cache=release["cache"])


def test_offline_with_a_warm_cache(release):
    fetch("tiny", base_url=release["url"], cache=release["cache"])
    release["srv"].stop(); release["srv"] = Server(release["dir"])                              # the old address is gone
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = load("tiny", base_url=release["url"], cache=release["cache"])
    assert m is not None and any("using the manifest cached" in str(x.message) for x in w)


def test_offline_with_a_cold_cache(tmp_path):
    # A port bound but never listening: connections to it are refused, and no other server can take it meanwhile (stopping a server
    # and serving again could hand the same port back, and the "offline" location would answer).
    dead = socket.socket(); dead.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    try:
        with pytest.raises(ConnectionError) as e:
            fetch("tiny", base_url=url, cache=tmp_path / "cold")
    finally: dead.close()
    msg = str(e.value)
    assert url + "/manifest.json" in msg and str(tmp_path / "cold") in msg and "yourself and place them in" in msg


def test_cli_eval_and_export(release, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LVMKIT_PRETRAINED_URL", release["url"])
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "lvmkit-cache"))
    assert main(["eval", "pretrained:tiny", "--iw", "2", "--n", "4", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 4 and out["batch_size"] == 2 and out["dataset"] == "binarized_mnist"          # the recipe's settings, from the file
    assert (tmp_path / "lvmkit-cache" / "pretrained" / "tiny.pt").is_file()
    assert main(["eval", "pretrained:nope", "--iw", "2"]) == 2 and "no pretrained weights called 'nope'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "runs" / "tiny"), "--out", str(tmp_path / "rel2"), "--name", "t2"]) == 0
    assert json.loads(capsys.readouterr().out)["file"] == "t2.pt" and (tmp_path / "rel2" / "manifest.json").is_file()


def _tiny_experiment():
    from dataclasses import replace
    import lvmkit.recipes  # noqa: F401  (registers vae-mlp)
    from lvmkit.experiments import get_experiment
    exp = get_experiment("vae-mlp")
    return replace(exp, name="tiny-exp", model_kwargs=dict(z_dim=3, hidden=(16,)), data=replace(exp.data, test_n=40),
                   evaluation=replace(exp.evaluation, k=(8,), batch_size=20, compile=False),
                   train=replace(exp.train, steps=20, eval_every=10, log_every=5))

def test_a_chapter_run_from_released_weights_does_not_train(tmp_path, monkeypatch, capsys):
    "run_experiment(pretrained=True) / lvmkit train --pretrained: the released weights and log laid out as the run folder, evaluated and recorded."
    import lvmkit.experiments as E
    from lvmkit.checkpoint import load_model
    exp = _tiny_experiment()
    trained = E.run_experiment(exp, quick_mode=False, run_dir=tmp_path / "trained", progress=False, device="cpu")
    export_pretrained(tmp_path / "trained", tmp_path / "release", name="tiny-exp")   # the checkpoint its record names: best.pt
    srv = Server(tmp_path / "release")
    monkeypatch.setenv("LVMKIT_PRETRAINED_URL", srv.url); monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    def no_training(*a, **k): raise AssertionError("pretrained mode trained")
    monkeypatch.setattr(E, "fit", no_training)
    try:
        s = E.run_experiment(exp, quick_mode=False, run_dir=tmp_path / "pre", results_dir=tmp_path / "res", progress=False, device="cpu", pretrained=True)
        monkeypatch.setenv("LVMKIT_PRETRAINED", "1")                                     # the chapters' switch, and the CLI's flag
        monkeypatch.setitem(E.EXPERIMENTS, "tiny-exp", exp)
        from lvmkit.cli import main
        assert main(["train", "tiny-exp", "--out", str(tmp_path / "cli"), "--no-progress", "--device", "cpu", "--pretrained"]) == 0
        assert json.loads(capsys.readouterr().out)["pretrained"]["name"] == "tiny-exp"
    finally: srv.stop()
    assert s["finished"] and s["steps"] == trained["steps"] == 20 and s["pretrained"]["sha256"] == sha256sum(tmp_path / "release" / "tiny-exp.pt")
    assert (tmp_path / "pre" / "metrics.jsonl").read_text() == (tmp_path / "trained" / "metrics.jsonl").read_text()   # the training curves
    a, b = load_model(tmp_path / "trained" / "best.pt"), load_model(tmp_path / "pre" / "best.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    rec = json.loads((tmp_path / "res" / "tiny-exp.json").read_text())
    assert rec["test_n"] == 40 and rec["steps"] == 20 and abs(rec["value"] - trained["test_nll_iw8"]) < 0.05 * abs(rec["value"])   # evaluated here
    with pytest.raises(ValueError, match="downloaded pretrained weights"):                 # never resumed as a training run
        E.run_experiment(exp, quick_mode=False, run_dir=tmp_path / "pre", progress=False, device="cpu", pretrained=False)
    from lvmkit.pretrained import install_run
    with pytest.raises(ValueError, match="holds a training run"):                           # never written over a training run
        install_run("tiny-exp", tmp_path / "trained")


def test_export_release_script_exports_what_the_book_prints_and_names_what_is_missing(tmp_path):
    "RELEASING.md step 4: .ci/export_release.py exports every printed full-mode run it finds and exits 1 naming the others."
    import subprocess, sys
    import lvmkit.recipes  # noqa: F401
    from lvmkit.experiments import get_experiment, run_experiment
    run_experiment(get_experiment("vae-mlp"), quick_mode=True, run_dir=tmp_path / "runs" / "vae-mlp", progress=False, device="cpu")
    (tmp_path / "res").mkdir()
    for name in ("vae-mlp", "vae-mlp-iw128", "iaf-mlp", "vae-latent2"):
        (tmp_path / "res" / f"{name}.json").write_text(json.dumps(dict(name=name, mode="full" if name != "vae-latent2" else "quick")))
    root = Path(__file__).parent.parent
    p = subprocess.run([sys.executable, str(root / ".ci" / "export_release.py"), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                        "--out", str(tmp_path / "release")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "exported 1" in p.stdout and "iaf-mlp: no run folder" in p.stderr and "vae-latent2" not in p.stderr   # quick records are not released
    man = json.loads((tmp_path / "release" / "manifest.json").read_text())["weights"]
    assert list(man) == ["vae-mlp"] and man["vae-mlp"]["checkpoint"] == "best.pt"


def test_a_two_stage_model_from_released_weights_keeps_both_logs(tmp_path, monkeypatch):
    "A VQ-VAE and its prior from their two released files: nothing trained, each stage's log and pretrained.json where training leaves them."
    from dataclasses import replace
    import lvmkit.experiments as E
    import lvmkit.recipes as R
    from lvmkit.experiments import Quick
    base = R.VQVAE_CIFAR10_CPU
    stage = replace(base.prior, model_kwargs=dict(embed=4, channels=8, kernel=3, layers=2, hidden=8), quick_train=dict(steps=6, batch_size=8, log_every=2))
    exp = replace(base, name="tiny-vq", model_kwargs=dict(base.model_kwargs, channels=16, dim=8, n_codes=16, n_mix=2), prior=stage,
                  quick=Quick(train=dict(steps=6, batch_size=8, log_every=2, eval_every=3), test_n=8, k=(2,), prior_n=32),
                  evaluation=replace(base.evaluation, batch_size=8, compile=False))
    trained = E.run_experiment(exp, quick_mode=True, run_dir=tmp_path / "runs" / "tiny-vq", progress=False, device="cpu")
    assert trained["finished"] and trained["prior_finished"]
    res = tmp_path / "runs" / "tiny-vq" / "result.json"                                              # named as a full run names its records
    res.write_text(json.dumps([dict(r, name=r["name"].replace("tiny-vq-quick", "tiny-vq")) for r in json.loads(res.read_text())]))
    for name in ("tiny-vq", f"tiny-vq-{stage.name}"): export_pretrained(tmp_path / "runs" / "tiny-vq", tmp_path / "release", name=name)
    assert load_checkpoint(tmp_path / "release" / f"tiny-vq-{stage.name}.pt")["run_checkpoint"] == "final.pt"    # the whole model
    srv = Server(tmp_path / "release")
    monkeypatch.setenv("LVMKIT_PRETRAINED_URL", srv.url); monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    def no_training(*a, **k): raise AssertionError("pretrained mode trained")
    monkeypatch.setattr(E, "fit", no_training); monkeypatch.setattr(E, "fit_prior", no_training)
    try: s = E.run_experiment(exp, quick_mode=True, run_dir=tmp_path / "pre", progress=False, device="cpu", pretrained=True)
    finally: srv.stop()
    run, pre = tmp_path / "runs" / "tiny-vq", tmp_path / "pre"
    assert s["finished"] and s["prior_finished"] and s["steps"] == trained["steps"] and s["prior_steps"] == trained["prior_steps"] == 6
    assert s["pretrained"]["name"] == "tiny-vq" and s["prior_pretrained"]["name"] == f"tiny-vq-{stage.name}"
    assert s["prior_pretrained"]["checkpoint"] == "../final.pt"                                    # from the prior's folder: the whole model
    assert json.loads((pre / "pretrained.json").read_text())["name"] == "tiny-vq"                  # stage 1's, not replaced by stage 2's
    prior_log = f"prior-{stage.name}/metrics.jsonl"
    assert (pre / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()              # the VQ-VAE's curves
    assert (pre / prior_log).read_text() == (run / prior_log).read_text() != (run / "metrics.jsonl").read_text()   # the prior's curves
    assert abs(s["prior_test_nll"] - trained["prior_test_nll"]) < 0.05 * abs(trained["prior_test_nll"])           # the same whole model


def test_a_release_file_cannot_write_outside_the_run_folder(tmp_path, release):
    "The checkpoint and log names a file carries are paths inside the run folder, or the file is refused before anything is written."
    from lvmkit.pretrained import install_run
    for key in ("run_checkpoint", "run_log"):
        ck = load_checkpoint(release["dir"] / "tiny.pt")
        save_checkpoint(release["dir"] / "bad.pt", **{**ck, key: "../escaped.pt"})
        (release["dir"] / "manifest.json").write_text(json.dumps({"weights": {"bad": {"file": "bad.pt", "sha256": sha256sum(release["dir"] / "bad.pt"),
                                                                                  "bytes": (release["dir"] / "bad.pt").stat().st_size}}}))
        with pytest.raises(ValueError, match="outside the run folder"):
            install_run("bad", tmp_path / "run", base_url=release["url"], cache=tmp_path / f"cache-{key}")
        assert not (tmp_path / "escaped.pt").exists()
