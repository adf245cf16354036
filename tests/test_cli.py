"The lvmkit command line: list, train --quick, eval, and clear errors."
import json
from importlib.metadata import entry_points
import pytest
from lvmkit.experiments import get_experiment
import torch
from lvmkit.cli import main
from lvmkit.core import build_model
from lvmkit.training import save_checkpoint


def test_console_script_is_declared():
    assert any(e.name == "lvmkit" and e.value == "lvmkit.cli:main" for e in entry_points(group="console_scripts"))


def test_list(capsys):
    assert main(["list"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "vae-mlp" in out["experiments"] and out["aliases"]["vae"] == "vae-mlp" and "mlp_vae" in out["models"]


@pytest.mark.parametrize("argv,msg", [
    (["train", "no-such"], "unknown experiment"),
    (["eval", "missing.pt"], "not found"),
    (["train", "vae", "--device", "cuda:7"], "CUDA"),
    (["train", "vae", "--device", "tpu9"], "device"),
    (["train", "vae", "--max-time", "-5"], "--max-time must be a positive number"),      # issue 14: used to train one step and succeed
    (["train", "vae", "--max-time", "nan"], "--max-time must be a positive number"),     # issue 14: used to be ignored
    (["eval", "missing.pt", "--n", "0"], "--n must be a positive number"),               # issue 14: used to evaluate everything
    (["eval", "missing.pt", "--iw", "0"], "--iw must be a positive number"),
    (["eval", "missing.pt", "--batch-size", "-1"], "--batch-size must be a positive number"),
])
def test_errors_are_one_line(argv, msg, capsys):
    if "cuda:7" in argv and torch.cuda.is_available(): pytest.skip("has CUDA")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lvmkit: error:") and msg in err and "Traceback" not in err


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e: main(["eval"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e: main(["train", "vae", "--max-time", "soon"])
    assert e.value.code == 2


def test_eval_rejects_foreign_and_bad_checkpoints(tmp_path, capsys):
    bad = tmp_path / "junk.pt"; bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad)]) == 2
    m = build_model("mlp_vae", z_dim=3, hidden=(8,))
    sd = m.state_dict(); sd.pop("decoder.net.0.weight")
    save_checkpoint(tmp_path / "broken.pt", model=sd, spec=m.spec)
    assert main(["eval", str(tmp_path / "broken.pt"), "--iw", "2", "--n", "10", "--no-progress"]) == 2
    assert "decoder.net.0.weight" in capsys.readouterr().err


def test_train_quick_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--quick", "--out", str(run), "--no-progress", "--results-dir", str(tmp_path / "res")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["name"] == "vae-mlp-quick" and summary["test_nll_iw100"] > 0
    for f in ("best.pt", "last.pt", "metrics.jsonl", "samples.png", "result.json", "experiment.json"): assert (run / f).exists(), f
    rec = json.loads((tmp_path / "res" / "vae-mlp-quick.json").read_text())
    assert rec["mode"] == "quick" and rec["k"] == 100 and rec["metric"] == "nll_nats"
    assert "bf16" not in rec["protocol"]                              # the recipe trains in float32 on the CPU, and its record says nothing else
    assert main(["eval", str(run / "best.pt"), "--iw", "5", "--n", "100", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 100 and r["k"] == 5 and r["dataset"] == "binarized_mnist" and r["elbo"] < -r["nll"] + 1.0
    assert main(["eval", str(run / "best.pt"), "--iw", "5", "--n", "100", "--no-progress"]) == 0      # issue 14: eval is seeded
    assert json.loads(capsys.readouterr().out)["nll"] == r["nll"]
    assert main(["eval", str(run / "best.pt"), "--iw", "5", "--n", "100", "--no-progress", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["nll"] != r["nll"]


def test_train_under_torchrun_two_processes(tmp_path):
    "lvmkit train under torchrun (2 gloo processes on CPU): data-parallel training, rank 0 alone evaluates and writes."
    import os, subprocess, sys, shutil
    exe = shutil.which("lvmkit", path=os.path.dirname(sys.executable))
    if exe is None: pytest.skip("the lvmkit console script is not installed next to this Python")
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LVMKIT_QUICK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           exe, "train", "vae", "--out", str(run), "--no-progress", "--device", "cpu"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert len(json.loads((run / "result.json").read_text())) == 1          # written once, by rank 0
    assert p.stdout.count('"finished": true') == 2                          # both ranks trained to the end


def test_run_experiment_full_mode_on_an_evenly_spread_test_subset(tmp_path):
    "Experiment.data.test_n evaluates n test examples spread over the split in full mode, and the record says so."
    from dataclasses import replace
    from lvmkit.experiments import get_experiment, run_experiment
    exp = get_experiment("vae-mlp")
    exp = replace(exp, name="tiny", model_kwargs=dict(z_dim=3, hidden=(16,)), data=replace(exp.data, test_n=50),
                  evaluation=replace(exp.evaluation, k=(3,)),
                  train=replace(exp.train, steps=20, eval_every=10, log_every=10))
    s = run_experiment(exp, quick_mode=False, run_dir=tmp_path / "run", results_dir=tmp_path / "res", progress=False, device="cpu")
    assert s["finished"] and s["test_n"] == 50
    rec = json.loads((tmp_path / "res" / "tiny.json").read_text())
    assert rec["mode"] == "full" and "50 evenly spread test examples" in rec["protocol"]


def test_image_grid_scales_8bit_pixels_and_keeps_unit_images():
    from lvmkit.experiments import image_grid
    x = torch.rand(4, 1, 5, 5)
    g = image_grid(x, nrow=2)
    assert g.shape == (3, 13, 13) and torch.equal(g[0, 1:6, 1:6], x[0, 0])          # [0, 1] images are drawn as they are
    p = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    assert torch.allclose(image_grid(p, nrow=2)[:, 1:6, 1:6], p[0].float() / 255)  # 8-bit pixels are scaled to [0, 1]
    assert torch.allclose(image_grid(p.float(), nrow=2), image_grid(p, nrow=2))     # as are floats holding 0..255


def test_train_vqvae_runs_both_stages_and_eval_reports_the_bound_with_the_prior(tmp_path, capsys):
    "`lvmkit train vqvae --quick` trains the autoencoder and its Gated PixelCNN prior; `lvmkit eval final.pt` restores both."
    from lvmkit.cli import main
    from lvmkit.training import load_model
    assert main(["train", "vqvae", "--quick", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["finished"] and s["prior_finished"] and s["final_checkpoint"].endswith("final.pt")
    final = load_model(tmp_path / "run" / "final.pt")
    assert final.prior is not None and final.spec["kwargs"]["prior"]["name"] == "gated_pixelcnn_prior"
    stage1 = load_model(tmp_path / "run" / "last.pt")
    assert stage1.prior is None                                                      # stage 1 alone: the uniform prior
    assert main(["eval", str(tmp_path / "run" / "final.pt"), "--iw", "1", "--n", "32", "--no-progress", "--device", "cpu"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["model"]["kwargs"]["prior"]["name"] == "gated_pixelcnn_prior" and e["n"] == 32
    assert abs(e["nll"] - s["prior_test_nll"]) < 1e-3 * abs(e["nll"])               # the recorded stage-2 bound, reproduced from the file
    assert main(["eval", str(tmp_path / "run" / "last.pt"), "--iw", "1", "--n", "32", "--no-progress", "--device", "cpu"]) == 0
    u = json.loads(capsys.readouterr().out)
    assert abs(u["nll"] - s["test_nll_iw1"]) < 1e-3 * abs(u["nll"]) and "prior" not in u["model"]["kwargs"]


def test_eval_uses_the_runs_recorded_evaluation_settings(tmp_path, capsys):
    "Without flags, `lvmkit eval` takes batch size and memory bound from the run's experiment.json; flags override them."
    from lvmkit.cli import main
    from lvmkit.core import atomic_write
    from lvmkit.experiments import get_experiment, run_experiment
    from dataclasses import replace, asdict
    exp = get_experiment("vae-mlp")
    exp = replace(exp, name="tiny", model_kwargs=dict(z_dim=3, hidden=(16,)), data=replace(exp.data, test_n=20),
                  evaluation=replace(exp.evaluation, k=(2,), batch_size=7, max_elements=3 * 7 * 784, compile=True),
                  train=replace(exp.train, steps=10, eval_every=10, log_every=10))
    run_experiment(exp, quick_mode=False, run_dir=tmp_path / "run", progress=False, device="cpu")
    assert main(["eval", str(tmp_path / "run" / "best.pt"), "--iw", "4", "--n", "20", "--no-progress", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["batch_size"], r["max_elements"], r["compile"]) == (7, 3 * 7 * 784, True)
    assert main(["eval", str(tmp_path / "run" / "best.pt"), "--iw", "4", "--n", "20", "--batch-size", "20", "--no-progress", "--no-compile"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert (r2["batch_size"], r2["compile"]) == (20, False)
    assert abs(r2["nll"] - r["nll"]) < 5.0                       # compiled and eager: the same estimate up to IW-4 noise on 20 digits
    assert r["amp"] is False and r2["amp"] is False              # the recipe's setting: float32
    assert main(["eval", str(tmp_path / "run" / "best.pt"), "--iw", "4", "--n", "20", "--no-progress", "--no-compile", "--amp"]) == 0
    r3 = json.loads(capsys.readouterr().out)
    assert r3["amp"] is True and r3["nll"] != r2["nll"] and abs(r3["nll"] - r2["nll"]) < 1.0   # bf16: another estimate, a close one


def test_output_folders_are_checked_before_training(tmp_path, capsys, monkeypatch):
    "Issue 14: --out '' trained into the current folder (deleting a best.pt there); a results folder that is a file failed only at the end."
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"mine")
    assert main(["train", "vae", "--quick", "--out", "", "--no-progress"]) == 2
    assert "empty path" in capsys.readouterr().err
    assert main(["train", "vae", "--quick", "--out", ".", "--no-progress"]) == 2
    assert "current folder" in capsys.readouterr().err
    (tmp_path / "res").write_text("a file")
    assert main(["train", "vae", "--quick", "--out", "run", "--results-dir", "res", "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err and not (tmp_path / "run").exists()     # refused before anything was written
    assert (tmp_path / "best.pt").read_bytes() == b"mine"


def test_resuming_a_folder_of_another_experiment_is_refused(tmp_path, capsys):
    "Issue 14: a full run silently continued a quick run's checkpoint in the same folder."
    run = tmp_path / "run"
    assert main(["train", "vae", "--quick", "--out", str(run), "--no-progress", "--max-time", "0.5"]) == 0
    capsys.readouterr()
    assert main(["train", "vae", "--out", str(run), "--no-progress", "--max-time", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "'vae-mlp-quick'" in err and "--fresh" in err
    assert main(["train", "iaf", "--quick", "--out", str(run), "--no-progress", "--max-time", "0.5"]) == 2     # another model
    assert "model" in capsys.readouterr().err


def test_a_damaged_experiment_json_is_named(tmp_path, capsys):
    "Issue 14: a truncated experiment.json reached the user as a bare JSON decoding error."
    run = tmp_path / "run"
    assert main(["train", "vae", "--quick", "--out", str(run), "--no-progress", "--max-time", "0.5"]) == 0
    capsys.readouterr()
    (run / "experiment.json").write_text('{"name": "vae-ml')
    assert main(["eval", str(run / "last.pt"), "--iw", "2", "--n", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "experiment.json is damaged" in err and "Traceback" not in err


def test_eval_within_a_memory_budget(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "vae", "--quick", "--out", str(run), "--no-progress", "--max-time", "0.5"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--iw", "8", "--n", "20", "--no-progress", "--max-memory", "64MB"]) == 0
    assert json.loads(capsys.readouterr().out)["max_bytes"] == 64 * 2**20
    assert main(["eval", str(run / "last.pt"), "--max-memory", "lots"]) == 2
    assert "--max-memory must be a size" in capsys.readouterr().err


def test_download_flag_fetches_missing_data_and_the_error_says_so(tmp_path, capsys, monkeypatch):
    "lvmkit eval --download (LVMKIT_DOWNLOAD=1 for the command): a missing data file is fetched (here from 127.0.0.1) and verified; without it the error names the flag."
    import gzip, os
    from pathlib import Path
    import lvmkit.data as D
    from test_pretrained import Server                                                          # a folder served on 127.0.0.1
    root = Path(os.environ.get("LVMKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (root / "binarized_mnist").is_dir(): pytest.skip(f"offline data not found at {root}")
    run = tmp_path / "run"
    assert main(["train", "vae", "--quick", "--out", str(run), "--no-progress"]) == 0          # trained on the offline copy
    site = tmp_path / "site"; site.mkdir()
    (site / "binarized_mnist_test.amat").write_bytes(gzip.decompress((root / "binarized_mnist" / "binarized_mnist_test.amat.gz").read_bytes()))
    srv = Server(site)
    try:
        monkeypatch.setattr(D, "BINARIZED_MNIST_URL", srv.url + "/binarized_mnist_{split}.amat")
        monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache")); monkeypatch.delenv("LVMKIT_DOWNLOAD", raising=False)
        empty = tmp_path / "data"
        argv = ["eval", str(run / "best.pt"), "--data", str(empty), "--iw", "2", "--n", "20", "--no-progress"]
        capsys.readouterr()
        assert main(argv) == 2 and "--download" in capsys.readouterr().err                 # not fetched unless asked; the error says how
        assert main(argv + ["--download"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == 20
        assert (empty / "binarized_mnist" / "binarized_mnist_test.amat").is_file()
        assert "LVMKIT_DOWNLOAD" not in os.environ                                          # the process is left as it was
    finally:
        srv.stop()


def test_train_amp_is_its_own_run_and_says_so(tmp_path, capsys):
    "--amp trains under bf16 autocast as an experiment of its own: NAME-bf16, its folder, and records whose protocol says how it was trained."
    assert main(["train", "vae", "--quick", "--amp", "--no-progress", "--out", str(tmp_path / "run"), "--results-dir", str(tmp_path / "res")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["name"] == "vae-mlp-bf16-quick"
    exp = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert exp["train"]["amp"] is True and "lvmkit train --amp" in exp["description"]
    rec = json.loads((tmp_path / "res" / "vae-mlp-bf16-quick.json").read_text())
    assert "trained under bf16 autocast" in rec["protocol"] and "evaluated under" not in rec["protocol"]


def test_train_amp_and_compile_reach_the_prior_stage_of_a_two_stage_recipe(monkeypatch, capsys):
    "--amp, --compile and --channels-last hold for both stages of the VQ-VAE (its PixelCNN prior trains under them too), and for the one stage of the others."
    import lvmkit.cli as cli
    seen = []
    monkeypatch.setattr(cli, "run_experiment", lambda exp, **kw: seen.append(exp) or {"finished": True, "name": exp.name})
    assert main(["train", "vqvae", "--quick", "--amp", "--compile", "--channels-last", "--no-progress"]) == 0
    assert main(["train", "vae", "--quick", "--no-amp", "--no-compile", "--no-progress"]) == 0
    vq, vae = seen
    assert vq.name.endswith("-bf16") and vq.prior is not None
    assert (vq.train.amp, vq.train.compile, vq.prior.train.amp, vq.prior.train.compile) == (True, True, True, True)
    assert vq.train.channels_last and vq.prior.train.channels_last and not vae.train.channels_last   # a layout: the run keeps its name
    assert vq.prior.train.steps == get_experiment("vqvae").prior.train.steps        # nothing else of the prior's training changed
    assert vae.prior is None and (vae.train.amp, vae.train.compile) == (False, False)


def test_train_eval_amp_and_iw_change_only_the_evaluation(tmp_path, capsys):
    "--iw K... evaluates at those K (first: NAME, others: NAME-iwK), also in quick mode; --eval-amp evaluates under bf16, the same run."
    assert main(["train", "vae", "--quick", "--eval-amp", "--iw", "8", "4", "--no-progress", "--out", str(tmp_path / "run"),
                 "--results-dir", str(tmp_path / "res")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["name"] == "vae-mlp-quick"                     # not another experiment: the name is the recipe's
    head, other = (json.loads((tmp_path / "res" / f).read_text()) for f in ("vae-mlp-quick.json", "vae-mlp-quick-iw4.json"))
    assert head["k"] == 8 and other["k"] == 4
    assert "evaluated under bf16 autocast" in head["protocol"] and "trained under" not in head["protocol"]
    exp = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert exp["evaluation"]["amp"] is True and exp["train"]["amp"] is None
    for bad, words in [(["--iw", "0"], "--iw must be a positive number"), (["--iw", "5", "5"], "--iw repeats a K")]:
        assert main(["train", "vae", "--quick", "--no-progress", "--out", str(tmp_path / "bad"), *bad]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()                                               # refused before anything was written
