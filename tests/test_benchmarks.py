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
    seeds = tmp_path / "seeds-x.json"
    seeds.write_text(json.dumps(dict(base, commit="bbbbbbb", command="python benchmarks/seeds.py", cases=[])))
    text = bench.page([], [seeds], [amp])
    machine = [line for line in text.splitlines() if line.startswith("**Machine:**")]
    assert len(machine) == 2, machine
    assert "commit `aaaaaaa`" in machine[0] and "--runs runs --cases vae-mlp:10" in machine[0]
    assert "lvmkit commit `bbbbbbb`" in machine[1]
    assert "| `vae-mlp` | 10 | 1,000 | 100 s | 50 s | 2.00x |" in text
