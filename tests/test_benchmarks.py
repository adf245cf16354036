"The benchmark scripts' own logic (not their measurements, which are not part of CI): argument checks and the Performance page."
import importlib.util, json, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_amp_eval_parses_cases_and_names_a_malformed_one():
    amp = _load("amp_eval")
    assert amp.parse_case("lvae-mnist-cpu:200") == ("lvae-mnist-cpu", 200)
    for bad in ("vae-mlp", "vae-mlp:", ":10", "vae-mlp:0", "vae-mlp:ten"):
        with pytest.raises(Exception, match="expected RUN:N"):
            amp.parse_case(bad)


def test_amp_eval_finds_the_recipe_of_a_bf16_run():
    amp = _load("amp_eval")
    assert amp.recipe_of("lvae-mnist-cpu-bf16") == "lvae-mnist-cpu"
    assert amp.recipe_of("vae-mlp-fp32") == "vae-mlp"
    assert amp.recipe_of("vae-mlp") == "vae-mlp"
    assert amp.recipe_of("bf16-vae") == "bf16-vae"      # only a trailing suffix is the precision's


def test_amp_eval_refuses_a_missing_checkpoint_before_measuring(tmp_path, monkeypatch, capsys):
    amp = _load("amp_eval")
    monkeypatch.setattr(amp, "measure", lambda *a: pytest.fail("measured although the checkpoint is missing"))
    monkeypatch.setattr(sys, "argv", ["amp_eval.py", "--runs", str(tmp_path), "--cases", "vae-mlp:10"])
    with pytest.raises(SystemExit):
        amp.main()
    assert f"no checkpoint {tmp_path / 'vae-mlp' / 'last.pt'}" in capsys.readouterr().err


def test_performance_page_says_once_per_section_where_each_record_was_measured(tmp_path):
    bench = _load("bench")
    base = dict(date="2026-12-01T05:00:00+00:00", hardware="2-core CPU", threads=2, torch="2.14.1", python="3.11.7")
    amp = tmp_path / "amp-x.json"
    amp.write_text(json.dumps(dict(base, commit="aaaaaaa", command="python benchmarks/amp_eval.py --runs runs --cases vae-mlp:10",
                                   cases=[dict(run="vae-mlp", n=10, k=1000, fp32_s_per_1000=100., bf16_s_per_1000=50., speedup=2.,
                                               nll_fp32=88., nll_diff=.001, nll_diff_se=.002, elbo_diff=0., elbo_diff_se=.01)])))
    side = lambda name, eps, **kw: dict(dict(side=name, params=1e5, examples_per_s=eps, ms_per_step=1000 * 128 / eps, warmup_s=30.0), **kw)
    case = lambda name, sides: dict(case=name, seed=f"seed/{name}@c7b298e", what=f"what {name}", recipe=f"recipe-{name}", sides=sides)
    old = tmp_path / "seeds-old.json"                               # older: two cases, one of which is measured again below
    old.write_text(json.dumps(dict(base, date="2026-11-30T05:00:00+00:00", commit="0000000", command="python benchmarks/seeds.py --cases a b",
                                   cases=[case("a", [side("seed", 100.0), side("lvmkit", 110.0)]), case("b", [side("seed", 10.0), side("lvmkit", 20.0)])])))
    seeds = tmp_path / "seeds-x.json"
    seeds.write_text(json.dumps(dict(base, commit="bbbbbbb", command="python benchmarks/seeds.py --cases a",
                                     cases=[case("a", [side("seed", 100.0), side("lvmkit compiled bf16", 150.0)])])))
    text = bench.page([], [seeds, old], [amp])
    assert "| lvmkit `recipe-a`, compiled, bf16 autocast | 0.10M | 150.0 (compile 30 s, not counted) | 853 | 1.50x |" in text
    assert "| lvmkit `recipe-a`, eager | 0.10M | 110.0" not in text                # superseded by the newer record
    assert "**what a (record S1)**" in text and "**what b (record S2)**" in text and "| lvmkit `recipe-b`, eager | 0.10M | 20.0 |" in text
    machine = [line for line in text.splitlines() if "**Machine:**" in line]
    assert len(machine) == 3, machine
    assert "commit `aaaaaaa`" in machine[0] and "--runs runs --cases vae-mlp:10" in machine[0]
    assert "lvmkit commit `bbbbbbb`" in machine[1] and "lvmkit commit `0000000`" in machine[2]
    assert "| `vae-mlp` | 10 | 1,000 | 100 s | 50 s | 2.00x |" in text


def test_repeated_sides_keep_the_median_run_and_the_page_shows_the_range(tmp_path):
    seeds_mod, bench = _load("seeds"), _load("bench")
    runs = [dict(side="seed", examples_per_s=v, ms_per_step=1000 * 128 / v) for v in (90.0, 120.0, 100.0)]
    m = seeds_mod.median_run(runs)
    assert m["examples_per_s"] == 100.0 and m["examples_per_s_runs"] == [90.0, 120.0, 100.0]
    assert seeds_mod.median_run(runs[:2])["examples_per_s"] == 90.0                  # even count: the lower middle one
    assert "examples_per_s_runs" not in seeds_mod.median_run(runs[:1])               # one measurement: as before
    assert seeds_mod.median_run([dict(side="seed", error="boom")])["error"] == "boom"
    assert seeds_mod.median_run([dict(side="seed", error="boom"), runs[0]])["examples_per_s"] == 90.0
    base = dict(date="2026-12-01T05:00:00+00:00", hardware="2-core CPU", threads=2, torch="2.14.1", python="3.11.7", commit="ddddddd",
                command="python benchmarks/seeds.py --cases a --repeats 3")
    lv = [dict(side="lvmkit", params=1e5, examples_per_s=v, ms_per_step=1000 * 128 / v, warmup_s=0.1) for v in (150.0, 180.0, 140.0)]
    f = tmp_path / "seeds-r.json"
    f.write_text(json.dumps(dict(base, cases=[dict(case="a", seed="seed/a@c7b298e", what="what a", recipe="recipe-a",
                                                   sides=[dict(m, params=1e5, warmup_s=0.1), seeds_mod.median_run(lv)])])))
    text = bench.page([], [f], [])
    assert "| lvmkit `recipe-a`, eager | 0.10M | 150.0 (median of 3: 140–180) | 853 | 1.50x |" in text


def _rec(k, value, **kw):
    "A results record as lvmkit writes it (amp_train reads them with lvmkit.results.load_result, which checks every field)."
    return dict(dict(name="vae-seed-meanfield" if k == 128 else f"vae-seed-meanfield-iw{k}", model="vae", dataset="binarized_mnist",
                     protocol="static binarized MNIST", split="test", metric="nll_nats", k=k, value=value, test_n=10000, test_elbo=-100.0,
                     steps=65000, train_examples_per_s=20000.0, wall_time_s=416.0, eval_time_s=50.0, commit="ccccccc", device="2-core CPU",
                     date="2026-12-01T06:00:00"), **kw)


def test_amp_train_compares_each_k_both_runs_have_and_the_page_shows_it(tmp_path):
    amp_train, bench = _load("amp_train"), _load("bench")
    fp32 = {128: _rec(128, 96.89), 1000: _rec(1000, 95.99)}
    bf16 = {128: _rec(128, 96.95, test_elbo=-100.2, train_examples_per_s=30000.0, commit="ddddddd", eval_time_s=20.0,
                      protocol="static binarized MNIST; trained under bf16 autocast; evaluated under bf16 autocast"), 100: _rec(100, 97.0)}
    c = amp_train.compare(fp32, bf16)
    assert list(c["nll"]) == [128] and c["nll"][128] == dict(fp32=96.89, bf16=96.95, test_n=10000)
    assert c["train_examples_per_s"] == dict(fp32=20000.0, bf16=30000.0) and c["fp32_record"]["commit"] == "ccccccc"
    assert c["eval_time_s"] == {128: dict(fp32=50.0, bf16=20.0)} and c["eval_amp"] is True
    with pytest.raises(ValueError, match="no K in common"):
        amp_train.compare({1000: fp32[1000]}, {128: bf16[128]})
    (tmp_path / "vae-seed-meanfield.json").write_text(json.dumps(fp32[128]))
    (tmp_path / "vae-seed-meanfield-iw1000.json").write_text(json.dumps(fp32[1000]))
    assert sorted(amp_train.records(tmp_path, "vae-seed-meanfield")) == [128, 1000]
    (tmp_path / "vae-seed-meanfield-iw1000.json").write_text(json.dumps(dict(fp32[1000], name="other")))
    with pytest.raises(ValueError, match="vae-seed-meanfield-iw1000.json: field 'name' is 'other'"):  # checked as lvmkit checks records
        amp_train.records(tmp_path, "vae-seed-meanfield")
    p = tmp_path / "amp-train-x.json"
    p.write_text(json.dumps(dict(c, recipe="vae-seed-meanfield", date="2026-12-01T07:00:00+00:00", commit="ddddddd", hardware="2-core CPU",
                                 threads=2, torch="2.14.1", command="python benchmarks/amp_train.py vae-seed-meanfield")))
    text = bench.page([], [], [], [p])                                      # the book's record has no calibration: speed unknown
    assert "| `vae-seed-meanfield` | 128 | 10,000 | 96.89 | 96.95 | +0.06 | 100.00 | 100.20 | 20,000 | 30,000 | – |" in text
    assert "whether the machine ran at the same speed is unknown" in text
    cal = lambda ms: dict(calibration=dict(ms=ms, threads=2))
    p.write_text(json.dumps(dict(c, fp32_record=dict(c["fp32_record"], machine=cal(100.0)), machine=cal(110.0), recipe="vae-seed-meanfield",
                                 date="2026-12-01T07:00:00+00:00", commit="ddddddd", hardware="2-core CPU", threads=2, torch="2.14.1",
                                 command="python benchmarks/amp_train.py vae-seed-meanfield")))
    text = bench.page([], [], [], [p])                                      # calibrated, within 15%: the speed-up is shown
    assert "| `vae-seed-meanfield` | 128 | 10,000 | 96.89 | 96.95 | +0.06 | 100.00 | 100.20 | 20,000 | 30,000 | 1.50x |" in text
    assert "CPU calibration 110 ms per fixed step at 2 threads" in text
    p.write_text(json.dumps(dict(json.loads(p.read_text()), machine=cal(200.0))))
    text = bench.page([], [], [], [p])                                      # calibrated 2x apart: not compared
    assert "| 20,000 | 30,000 | – |" in text and "their calibrations differ by more than 15%" in text
    assert "python benchmarks/amp_train.py vae-seed-meanfield" in text
    assert "Evaluation at K=128: 50 s (float32) and 20 s (the bf16 run evaluated under bf16 autocast)." in text
    other = amp_train.compare(fp32, {128: dict(bf16[128], device="Intel Xeon, 2 threads")})   # another machine: no speed-up, and it says why
    p.write_text(json.dumps(dict(other, recipe="vae-seed-meanfield", date="2026-12-01T07:00:00+00:00", commit="ddddddd", hardware="x",
                                 threads=2, torch="2.14.1", command="python benchmarks/amp_train.py vae-seed-meanfield", note="Shared the CPU.")))
    text = bench.page([], [], [], [p])
    assert "| 20,000 | 30,000 | – |" in text and "1.50x" not in text
    assert "(float32 on 2-core CPU, bf16 on Intel Xeon, 2 threads: their speeds are not comparable)" in text and "Shared the CPU." in text


def test_a_float32_run_evaluated_under_bf16_has_its_own_table(tmp_path, monkeypatch, capsys):
    amp_train, bench = _load("amp_train"), _load("bench")
    fp32 = {1000: _rec(1000, 81.87, eval_time_s=5708.0, device="AMD EPYC, 2 threads")}
    run = {1000: _rec(1000, 81.80, test_elbo=-100.1, eval_time_s=3300.0, device="AMD EPYC, 2 threads", commit="eeeeeee",
                      protocol="static binarized MNIST; evaluated under bf16 autocast")}
    c = amp_train.compare(fp32, run)
    c["fp32_record"]["machine"] = c_machine = dict(calibration=dict(ms=80.0, threads=2))    # as if both sides were calibrated
    assert c["eval_amp"] is True and c["eval_time_s"] == {1000: dict(fp32=5708.0, bf16=3300.0)}
    common = dict(recipe="lvae-mnist-cpu", date="2026-12-02T07:00:00+00:00", commit="eeeeeee", hardware="AMD EPYC, 2 threads", threads=2,
                  torch="2.14.1")
    p = tmp_path / "amp-train-lvae-mnist-cpu-fp32-x.json"
    p.write_text(json.dumps(dict(c, **common, machine=c_machine, trained="float32", command="python benchmarks/amp_train.py lvae-mnist-cpu --fp32 --iw 1000 --eval-amp")))
    text = bench.page([], [], [], [p])
    whole = text.split("## The whole test set, evaluated under bf16 autocast")[1].split("## Side by side")[0]
    assert "| `lvae-mnist-cpu` | 1,000 | 10,000 | 81.87 | 81.80 | -0.07 | 100.00 | 100.10 | 95.1 min | 55.0 min | 1.73x |" in whole
    assert "--fp32 --iw 1000 --eval-amp" in whole and "15,000" not in whole and "65,000 steps each." in whole
    training = text.split("## Training under bf16 autocast")[1].split("## The whole test set")[0]
    assert "No bf16 training run has been recorded yet." in training        # a float32 run is not a bf16 training run
    old = tmp_path / "amp-train-lvae-mnist-cpu-y.json"                      # a bf16 run of the same recipe still has its own row
    old.write_text(json.dumps(dict(c, **common, command="python benchmarks/amp_train.py lvae-mnist-cpu")))
    text = bench.page([], [], [], [old, p])
    assert "No bf16 training run" not in text and "No such evaluation" not in text
    monkeypatch.setattr("sys.argv", ["amp_train.py", "lvae-mnist-cpu", "--fp32"])
    with pytest.raises(SystemExit):
        amp_train.main()
    assert "--fp32 without --eval-amp would repeat the float32 record" in capsys.readouterr().err


def test_machine_identity_calibration_and_same_speed():
    machine = _load("machine")
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
            "cpu MHz\t\t: 2596.150\ncache size\t: 1024 KB\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n")
    ident = machine.cpu_identity(info)
    assert ident == dict(model_name="AMD EPYC", vendor="AuthenticAMD", family="25", model="17", stepping="1", mhz="2596.150",
                         cache="1024 KB", flags=["avx2", "avx512f", "avx512_bf16"])       # the first processor only
    c = machine.calibrate(repeats=2, warmup=1)
    assert c["ms"] > 0 and c["median_ms"] >= c["ms"] and c["threads"] >= 1
    cal = lambda ms, threads=2: dict(calibration=dict(ms=ms, threads=threads))
    assert machine.same_speed(cal(100), cal(114)) is True and machine.same_speed(cal(100), cal(120)) is False
    assert machine.same_speed(cal(100), cal(100, threads=1)) is False             # another thread count is another machine
    assert machine.same_speed(None, cal(100)) is None and machine.same_speed({}, cal(100)) is None   # a record without one: unknown
    assert machine.summary(dict(cpu=ident, calibration=dict(ms=78.2, threads=2))) == (
        "CPU calibration 78 ms per fixed step at 2 threads (lower is faster); family 25, model 17, stepping 1, 2,596 MHz; avx2, avx512f, avx512_bf16")
    assert machine.summary(None) == ""
    avx2 = lambda ms: dict(cal(ms), cpu=dict(flags=["avx2"]))
    assert machine.same_speed(avx2(100), dict(cal(100), cpu=ident)) is False          # the same float32 speed, other kernels (bf16): not the same machine
    assert machine.same_speed(avx2(100), avx2(105)) is True and machine.same_speed(avx2(100), cal(100)) is True   # flags unknown on one side: the calibration decides
    r = machine.matmul_rate("float32", n=64, repeats=2, warmup=1)
    assert r["gflop_per_s"] > 0 and r["dtype"] == "float32" and r["n"] == 64


def test_same_label_section_lists_a_recipe_measured_twice_and_keeps_checks_out_of_the_main_table(tmp_path):
    bench = _load("bench")
    case = lambda train, ev: dict(name="lvae-mnist-cpu", chapter="4", params=742689, train_eager_examples_per_s=train, train_compiled_examples_per_s=train,
                                  train_compiled_first3_s=1.0, eval_eager_s_per_1000=ev, eval_compiled_s_per_1000=ev, eval_compile_s=1.0,
                                  eval_k=1000, peak_memory_mb=1024.0)
    rec = lambda date, commit, train, ev, **kw: dict(date=date, hardware="CPU: AMD EPYC, 2 threads", torch="2.14.1", commit=commit,
                                                      command="python benchmarks/bench.py --cases lvae-mnist-cpu", cases=[case(train, ev)], **kw)
    old, new, check = tmp_path / "2026-11-30-aaaaaaa.json", tmp_path / "2026-12-02-bbbbbbb.json", tmp_path / "machine-check-2026-12-02-aaaaaaa.json"
    old.write_text(json.dumps(rec("2026-11-30T15:39:00+00:00", "aaaaaaa", 362.0, 504.0)))
    new.write_text(json.dumps(rec("2026-12-02T05:49:00+00:00", "bbbbbbb", 172.0, 1014.0, machine=dict(calibration=dict(ms=78.0, threads=2)))))
    check.write_text(json.dumps(rec("2026-12-02T05:54:00+00:00", "aaaaaaa", 153.0, 888.0, note="measured again")))
    text = bench.page([old, new], [], [], [], [check])
    main, same = text.split("## Evaluation under bf16")[0], text.split("## Same label, different speed")[1].split("## Side by side")[0]
    assert "machine-check" not in main and "| 172 |" in main                 # the newest bench record is the main table's row
    assert "Under the label **CPU: AMD EPYC, 2 threads**:" in same
    assert "| `lvae-mnist-cpu` | 2026-12-02 05:54 | `aaaaaaa` | 153 | 888 s | – | `machine-check-2026-12-02-aaaaaaa.json` |" in same
    assert "| `lvae-mnist-cpu` | 2026-12-02 05:49 | `bbbbbbb` | 172 | 1,014 s | 78 ms | `2026-12-02-bbbbbbb.json` |" in same
    assert "| fastest / slowest | 2.37x | 2.01x | | |" in same and "- `machine-check-2026-12-02-aaaaaaa.json`: measured again" in same
    assert "No recipe has been measured twice" in bench.page([new], [], [], [], [])


def test_a_two_stage_recipe_compares_its_prior_stage_too(tmp_path, capsys):
    "The VQ-VAE: stage 1 (NAME) and the whole model with its prior (NAME-gated), each beside its float32 record, bits/dim included."
    amp_train, bench = _load("amp_train"), _load("bench")
    vq = lambda name, value, bpd, **kw: _rec(1, value, **{**dict(name=name, bpd=bpd, model="vqvae", dataset="cifar10", protocol="CIFAR-10"), **kw})
    results, run = tmp_path / "results", tmp_path / "run"
    results.mkdir(); run.mkdir()
    for folder, tag, v1, v2, extra in [(results, "", 11164.9, 11063.5, {}),
                                       (run, "-bf16", 11170.0, 11060.0, dict(commit="ddddddd", protocol="CIFAR-10; trained under bf16 autocast"))]:
        (folder / f"vqvae-cifar10-cpu{tag}.json").write_text(json.dumps(vq(f"vqvae-cifar10-cpu{tag}", v1, v1 / 3072 / 0.6931471805599453, **extra)))
        (folder / f"vqvae-cifar10-cpu{tag}-gated.json").write_text(json.dumps(vq(f"vqvae-cifar10-cpu{tag}-gated", v2, v2 / 3072 / 0.6931471805599453,
                                                                                   steps=6000, wall_time_s=1400.0, **extra)))
    c = amp_train.compare(amp_train.records(results, "vqvae-cifar10-cpu"), amp_train.records(run, "vqvae-cifar10-cpu-bf16"))
    assert list(c["nll"]) == [1] and abs(c["bpd"][1]["bf16"] - c["bpd"][1]["fp32"] - 5.1 / 3072 / 0.6931471805599453) < 1e-9
    p = amp_train.compare_prior_stage(results, run, "vqvae-cifar10-cpu", "bf16", "gated")
    assert p["name"] == "gated" and p["nll"][1] == dict(fp32=11063.5, bf16=11060.0, test_n=10000) and p["steps"] == dict(fp32=6000, bf16=6000)
    assert amp_train.compare_prior_stage(results, run, "vqvae-cifar10-cpu", "bf16", "pixelcnn") is None   # no float32 record: not compared, said
    assert "no float32 record" in capsys.readouterr().out
    (results / "vqvae-cifar10-cpu-pixelcnn.json").write_text((results / "vqvae-cifar10-cpu-gated.json").read_text().replace("-gated", "-pixelcnn"))
    with pytest.raises(ValueError, match="no record vqvae-cifar10-cpu-bf16-pixelcnn.json of the prior stage"):
        amp_train.compare_prior_stage(results, run, "vqvae-cifar10-cpu", "bf16", "pixelcnn")
    out = tmp_path / "amp-train-vqvae.json"
    out.write_text(json.dumps(dict(c, prior_stage=p, recipe="vqvae-cifar10-cpu", date="2026-12-02T20:00:00+00:00", commit="ddddddd",
                                   hardware="2-core CPU", threads=2, torch="2.14.1", command="python benchmarks/amp_train.py vqvae-cifar10-cpu")))
    text = bench.page([], [], [], [out])
    assert "| `vqvae-cifar10-cpu` | 1 | 10,000 | 11164.90 | 11170.00 | +5.10 |" in text
    assert "| `vqvae-cifar10-cpu` + `gated` prior | 1 | 10,000 | 11063.50 | 11060.00 | -3.50 |" in text
    assert "With the `gated` prior (stage 2) the whole training took 1400 s and 1400 s (6,000 and 6,000 steps of both stages" in text
    assert "In bits/dim: 5.2433 (float32) and 5.2457 (bf16), +0.0024." in text and "In bits/dim with the `gated` prior: 5.1957" in text
    # --reference: a float32 run of this machine (records NAME-fp32*) instead of the book's record, with its calibration
    for f in results.glob("*.json"): f.rename(f.with_name(f.name.replace("vqvae-cifar10-cpu", "vqvae-cifar10-cpu-fp32")))
    for f in results.glob("*.json"): f.write_text(f.read_text().replace('"name": "vqvae-cifar10-cpu', '"name": "vqvae-cifar10-cpu-fp32'))
    assert amp_train.compare_prior_stage(results, run, "vqvae-cifar10-cpu", "bf16", "gated") is None           # the recipe's name: not there
    p = amp_train.compare_prior_stage(results, run, "vqvae-cifar10-cpu", "bf16", "gated", "vqvae-cifar10-cpu-fp32")
    assert p["nll"][1]["fp32"] == 11063.5
    cal = dict(calibration=dict(ms=90.0, threads=2))
    out.write_text(json.dumps(dict(c, prior_stage=p, fp32_record=dict(c["fp32_record"], run="vqvae-cifar10-cpu-fp32", machine=cal), machine=cal,
                                   recipe="vqvae-cifar10-cpu", date="2026-12-02T20:00:00+00:00", commit="ddddddd", hardware="2-core CPU",
                                   threads=2, torch="2.14.1", command="python benchmarks/amp_train.py vqvae-cifar10-cpu --reference vqvae-cifar10-cpu-fp32")))
    text = bench.page([], [], [], [out])
    assert "the float32 side is the run `vqvae-cifar10-cpu-fp32` (commit `ccccccc`, 2026-12-01T06:00), not the book's record" in text
    assert "| `vqvae-cifar10-cpu` + `gated` prior | 1 | 10,000 | 11063.50 | 11060.00 | -3.50 | 100.00 | 100.00 | 20,000 | 20,000 | 1.00x |" in text


def test_flops_counts_a_known_product_and_splits_the_evaluation_work():
    "The counter counts 2 x m x n x k for a product; a recipe's evaluation work splits into a per-sample part and a per-chunk part."
    import torch
    flops = _load("flops")
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert flops.flops(lambda: a @ b) == 2 * 8 * 16 * 4
    assert flops.chunk_size(1000, 25, 156800, 784) == 8 and flops.chunk_size(1, 500, 2**25, 3072) == 1
    c = flops.count("vae-mlp")
    assert c["eval_samples_per_chunk"] == flops.chunk_size(1000, 500, 2**25, 784) and c["eval_chunks"] == -(-1000 // c["eval_samples_per_chunk"])
    # vae-mlp: encoder 784-?-... and decoder: per sample the decoder runs once; its first layer alone is 2 x latent x hidden
    assert c["eval_flop_per_sample"] > 0 and c["eval_flop_per_chunk_fixed"] >= 0
    assert c["eval_flop_per_image"] == pytest.approx(c["eval_chunks"] * (c["eval_flop_per_chunk_fixed"] + c["eval_samples_per_chunk"] * c["eval_flop_per_sample"]))
    assert c["train_flop_per_example"] > 2 * c["eval_flop_per_sample"]                 # training: forward and backward of encoder and decoder
    assert c["test_n"] == 10_000


def test_the_page_sets_a_measured_evaluation_beside_its_floor(tmp_path):
    bench = _load("bench")
    mach = dict(cpu=dict(flags=["avx2"]), calibration=dict(ms=76.0, threads=2),
                matmul={"float32": dict(gflop_per_s=100.0), "bfloat16": dict(gflop_per_s=1.0)})
    base = dict(hardware="CPU: AMD EPYC, 2 threads", threads=2, torch="2.x", machine=mach)
    count = dict(name="lvae-mnist-cpu", chapter="4", train_flop_per_example=2.5e8, eval_flop_per_sample=8.5e7, eval_flop_per_chunk_fixed=1e6,
                 eval_k=1000, eval_samples_per_chunk=8, eval_chunks=125, eval_flop_per_image=125 * (1e6 + 8 * 8.5e7), test_n=10_000)
    fl = tmp_path / "flops-x.json"
    fl.write_text(json.dumps(dict(base, date="2026-12-07T16:00:00+00:00", commit="ccccccc", command="python benchmarks/flops.py", cases=[count])))
    case = dict(name="lvae-mnist-cpu", chapter="4", params=1, train_eager_examples_per_s=1.0, train_compiled_examples_per_s=1.0, train_compiled_first3_s=1.0,
                eval_eager_s_per_1000=2000.0, eval_compiled_s_per_1000=1000.0, eval_compile_s=1.0, eval_k=1000, peak_memory_mb=1.0)
    same, other = tmp_path / "2026-12-07-a.json", tmp_path / "2026-12-06-b.json"
    same.write_text(json.dumps(dict(base, date="2026-12-07T15:00:00+00:00", commit="aaaaaaa", command="c", cases=[case])))
    other.write_text(json.dumps(dict(base, date="2026-12-06T15:00:00+00:00", commit="bbbbbbb", command="c", cases=[dict(case, eval_compiled_s_per_1000=10.0)],
                                     machine=dict(mach, cpu=dict(flags=["avx2", "avx512f", "avx512_bf16"])))))
    text = bench.page([other, same], flops=[fl])
    section = text.split("## What the arithmetic allows")[1].split("## ")[0]
    total = 125 * (1e6 + 8 * 8.5e7) * 10_000                                           # 8.5e14: 8,500 s at 100 GFLOP/s
    assert f"{total / 1e12:,.1f} TFLOP (10,000 images)" in section
    assert f"{total / 100e9 / 3600:,.1f} h" in section and "| slower than float32 |" in section    # the float32 floor; bf16 slower here: no floor
    fast16 = dict(mach, matmul={"float32": dict(gflop_per_s=100.0), "bfloat16": dict(gflop_per_s=200.0, n=2048)})
    fl.write_text(json.dumps(dict(base, machine=fast16, date="2026-12-07T16:00:00+00:00", commit="ccccccc", command="python benchmarks/flops.py", cases=[count])))
    fast = bench.page([], flops=[fl]).split("## What the arithmetic allows")[1]
    assert f"{total / 200e9 / 3600:,.1f} h" in fast and "bf16 200 GFLOP/s (n = 2,048)" in fast          # a bf16 machine: its floor
    fl.write_text(json.dumps(dict(base, date="2026-12-07T16:00:00+00:00", commit="ccccccc", command="python benchmarks/flops.py", cases=[count])))
    assert "2.8 h (aaaaaaa)" in section and f"{10_000 / (total / 100e9):.1f}x" in section   # the same-speed record's 1000 s per 1000 images; not the other machine's
    assert "bbbbbbb" not in section and "float32 100 GFLOP/s, bf16 1 GFLOP/s" in section
    assert "No count has been recorded yet." in bench.page([], flops=[]).split("## What the arithmetic allows")[1]


def test_a_case_measured_on_another_kind_of_processor_keeps_its_newest_there_and_shows_its_work(tmp_path):
    bench = _load("bench")
    base = dict(hardware="CPU: AMD EPYC, 2 threads", threads=2, torch="2.14.1", python="3.11.7", command="python benchmarks/seeds.py --cases a")
    side = lambda name, eps, **kw: dict(dict(side=name, params=1e5, examples_per_s=eps, ms_per_step=1000 * 64 / eps, warmup_s=30.0), **kw)
    case = lambda sides: dict(case="a", seed="seed/a@c7b298e", what="what a", recipe="recipe-a", sides=sides)
    mach = lambda flags: dict(calibration=dict(ms=76.0, threads=2), cpu=dict(flags=flags), matmul={"float32": dict(gflop_per_s=180.0)})
    def write(name, date, commit, flags, sides, **kw):
        (tmp_path / name).write_text(json.dumps(dict(base, date=date, commit=commit, cases=[case(sides)],
                                                     **({"machine": mach(flags)} if flags is not None else {}), **kw)))
        return tmp_path / name
    unknown = write("seeds-0.json", "2026-11-30T05:00:00+00:00", "0000000", None, [side("seed", 10.0), side("lvmkit", 11.0)])
    bf16 = write("seeds-1.json", "2026-12-02T05:00:00+00:00", "1111111", ["avx2", "avx512f", "avx512_bf16"],
                 [side("seed", 10.0), side("lvmkit", 12.0), side("lvmkit compiled bf16", 26.0)])
    avx2 = write("seeds-2.json", "2026-12-07T05:00:00+00:00", "2222222", ["avx2"],
                 [side("seed", 10.0, gflop_per_step=448.0), side("lvmkit", 13.0, gflop_per_step=328.0), side("lvmkit compiled", 17.0),
                  side("lvmkit channels-last", 14.0), side("lvmkit compiled channels-last", 18.0)], note="A note.")
    text = bench.page([], [unknown, bf16, avx2]).split("## Side by side with the seeds' own code")[1]
    assert text.index("**what a (record S1)**") < text.index("**what a (record S2)**") and "(record S3)" not in text   # the older unknown machine: superseded
    assert "lvmkit commit `2222222`" in text and "lvmkit commit `1111111`" in text and "0000000" not in text
    assert "avx2, avx512f, avx512_bf16" in text and "A note." in text and "matrix products: float32 180 GFLOP/s" in text
    s1 = text.split("(record S1)**")[1].split("**what a")[0]
    assert "| GFLOP per step | GFLOP/s |" in s1
    assert "| seed/a@c7b298e | 0.10M | 10.0 | 6,400 | 448.0 | 70 | 1.00x |" in s1           # 448 GFLOP in 6.4 s
    assert "| lvmkit `recipe-a`, compiled | 0.10M | 17.0 (compile 30 s, not counted) | 3,765 | 328.0 | 87 | 1.70x |" in s1   # the eager side's work
    assert "| lvmkit `recipe-a`, eager, channels-last | 0.10M | 14.0 | 4,571 | 328.0 | 72 | 1.40x |" in s1
    assert "| lvmkit `recipe-a`, compiled, channels-last | 0.10M | 18.0 (compile 30 s, not counted) |" in s1
    s2 = text.split("(record S2)**")[1]
    assert "GFLOP per step" not in s2 and "| lvmkit `recipe-a`, compiled, bf16 autocast | 0.10M | 26.0 (compile 30 s, not counted) | 2,462 | 2.60x |" in s2


def test_every_script_writes_its_record_through_one_helper(tmp_path):
    "machine.record gives the date, hardware, versions, commit, threads, command and machine; cases only where given; write_record names the file."
    machine = _load("machine")
    rec = machine.record("python benchmarks/x.py", device="cpu", recipe="vae-mlp", note="n")
    assert {"date", "hardware", "torch", "python", "commit", "threads", "command", "machine", "recipe", "note"} <= set(rec) and "cases" not in rec
    assert rec["hardware"].startswith("CPU:") and "calibration" in rec["machine"] and "matmul" not in rec["machine"]
    out = machine.write_record(dict(rec, cases=[1]), "amp-train-vae-mlp-", tmp_path / "r.json")
    assert json.loads(out.read_text())["cases"] == [1]
    default = machine.write_record(rec, "test-prefix-", None)
    try: assert default.name == f"test-prefix-{rec['date'][:10]}-{rec['commit']}.json" and default.parent.name == "results"
    finally: default.unlink()
    for script in ("bench", "seeds", "flops", "amp_eval", "amp_train"):                 # none builds a record of its own any more
        text = (ROOT / "benchmarks" / f"{script}.py").read_text()
        assert "write_record(" in text and "datetime.now" not in text, script


def test_the_channels_last_sides_train_lvmkit_in_nhwc(monkeypatch):
    "seeds.py's -cl sides run lvmkit's step with the model's 4-d weights in NHWC, as TrainConfig(channels_last=True) does."
    seeds = _load("seeds")
    assert {"eager-cl", "compiled-cl"} <= set(seeds.SIDES)
    import torch
    seen = {}
    real_step = torch.optim.Adam.step
    def spy(self, *a, **k):                                               # the layout of the trained weights and of the batch
        four = [p for g in self.param_groups for p in g["params"] if p.dim() == 4]
        seen["nhwc"], seen["nchw"] = [p.is_contiguous(memory_format=torch.channels_last) for p in four], [p.is_contiguous() for p in four]
        return real_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    monkeypatch.setattr(seeds, "_batch", lambda n, dataset: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8))
    monkeypatch.setattr(seeds, "_gflop", lambda step, i: 0.0)
    monkeypatch.setitem(seeds.CASES, "tiny", seeds.Case("a small VQ-VAE", "vqvae-cifar10", ("henrhoi_src",)))
    r = seeds.run_lvmkit("tiny", False, 2, 1, 0, channels_last=True)
    assert r["side"] == "lvmkit channels-last" and "gflop_per_step" not in r
    assert seen["nhwc"] and all(seen["nhwc"]) and not all(seen["nchw"])   # (a 1x1 kernel's weight is contiguous in both layouts)
    seeds.run_lvmkit("tiny", False, 2, 1, 0)
    assert all(seen["nchw"]) and not all(seen["nhwc"])


def test_a_case_builds_the_seeds_architecture_and_counts_the_weights_masks_leave_free(monkeypatch):
    "A case's model_kwargs and prior_kwargs reach lvmkit's model; masked weights count only the entries their mask keeps, on both sides."
    seeds = _load("seeds")
    import torch
    from torch import nn
    from lvmkit.models.vqvae import GatedLayer
    class Masked(nn.Conv2d):                                              # henrhoi's MaskedConv2d: a full kernel times a 0/1 mask buffer
        def __init__(self):
            super().__init__(2, 3, 3)
            self.register_buffer("mask", torch.ones(3, 2, 3, 3)); self.mask[:, :, 2] = 0; self.mask[:, :, 1, 1:] = 0
    m = Masked()
    assert seeds._count_unmasked(m) == 3 * 2 * 4 + 3                     # 4 of 9 taps, and the biases
    g = GatedLayer(4, 3, first=True)                                      # lvmkit's: cropped kernels; the first layer masks a row and a column too
    full = sum(p.numel() for p in g.parameters())
    assert seeds._count_unmasked(g) == full - 8 * 4 * 3 - 8 * 4 * 1
    assert seeds._count_unmasked(GatedLayer(4, 3, first=False)) == full
    class SeedMaskedLinear(nn.Module):                                    # altosaar's: the mask multiplies its `linear`, not the context's weight
        def __init__(self):
            super().__init__()
            self.linear, self.cond_linear = nn.Linear(5, 5), nn.Linear(5, 5, bias=False)   # the same shape: the name decides
            self.register_buffer("mask", torch.tril(torch.ones(5, 5), -1))
    assert seeds._count_unmasked(SeedMaskedLinear()) == 10 + 5 + 25
    from lvmkit.flows import MADE
    made = MADE(4, (8,), 2, context_features=4)
    assert seeds._count_unmasked(made) == sum(p.numel() for p in made.parameters()) - sum(int((l.mask == 0).sum()) for l in (made.layers[0], made.out))
    class Orphan(nn.Module):
        def __init__(self):
            super().__init__(); self.register_buffer("vmask", torch.ones(1, 1, 2, 3))
    with pytest.raises(ValueError, match="Orphan.vmask"):
        seeds._count_unmasked(Orphan())
    assert seeds.CASES["vqvae-seed"].model_kwargs == dict(layout="seed", n_mix=1)
    assert seeds.CASES["iaf-seed"].model_kwargs == dict(context_to_output=False)
    built = []
    import lvmkit.core
    real = lvmkit.core.build_model
    def spy(name, **kw):
        built.append((name, kw)); return real(name, **kw)
    monkeypatch.setattr(lvmkit.core, "build_model", spy)
    monkeypatch.setattr(seeds, "_batch", lambda n, dataset: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8))
    monkeypatch.setattr(seeds, "_gflop", lambda step, i: 0.0)
    monkeypatch.setitem(seeds.CASES, "tiny", seeds.Case("a small VQ-VAE", "vqvae-cifar10-cpu", ("henrhoi_src",), model_kwargs=dict(n_mix=1)))
    seeds.run_lvmkit("tiny", False, 2, 1, 0)
    assert built[-1][0] == "vqvae" and built[-1][1]["n_mix"] == 1 and built[-1][1]["dim"] == 64   # the override on top of the recipe's
    monkeypatch.setitem(seeds.CASES, "tiny", seeds.Case("its prior", "vqvae-cifar10-cpu", ("henrhoi_src",), prior=True, prior_kwargs=dict(layers=2)))
    r = seeds.run_lvmkit("tiny", False, 2, 1, 0)
    assert built[-1][0] == "gated_pixelcnn_prior" and built[-1][1]["layers"] == 2 and built[-1][1]["channels"] == 64
    assert r["params_unmasked"] < r["params"]                             # its first gated layer masks a row and a column
    assert seeds._with(dict(layout="seed", n_mix=1)) == " with layout='seed', n_mix=1" and seeds._with(None) == ""


def test_the_page_gives_the_unmasked_count_where_a_side_has_one(tmp_path):
    bench = _load("bench")
    side = lambda name, params, **kw: dict(side=name, params=params, examples_per_s=3.0, ms_per_step=21_333.0, warmup_s=30.0, **kw)
    rec = dict(hardware="CPU", threads=2, torch="2.14.1", python="3.11.7", command="python benchmarks/seeds.py", date="2026-12-07T23:00:00+00:00",
               commit="3333333", cases=[dict(case="p", seed="henrhoi/vae-pytorch@0b38e17", what="a prior", recipe="r (prior stage with layers=13)",
                                             sides=[side("seed", 102_110_592, params_unmasked=60_020_096),
                                                    side("lvmkit", 59_031_168, examples_per_s_runs=[2.96, 3.0, 3.04])])])
    (tmp_path / "seeds-x.json").write_text(json.dumps(rec))
    text = bench.page([], [tmp_path / "seeds-x.json"])
    assert "| henrhoi/vae-pytorch@0b38e17 | 102.11M (60.02M unmasked) | 3.0 |" in text
    assert "| lvmkit `r (prior stage with layers=13)`, eager | 59.03M | 3.0 (median of 3: 3.0–3.0) |" in text   # a small rate's range: one decimal
