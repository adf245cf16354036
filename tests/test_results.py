"Tests for lvmkit.results: records round-trip, malformed files fail loudly, the page labels quick runs."
import math
import json
from dataclasses import asdict, replace

import pytest

from lvmkit.results import (QUICK_LABEL, ResultRecord, load_result, load_results, results_markdown,
                            save_result, write_results_page)


def make(**kw) -> ResultRecord:
    base = dict(name="vae-bmnist", model="vae", dataset="binarized_mnist", protocol="static binarized MNIST, 50k/10k/10k",
                split="test", metric="nll_nats", value=86.31, k=5000, test_elbo=-89.9, steps=2000, wall_time_s=4000.0,
                train_examples_per_s=1.5e4, eval_time_s=30.0, device="GPU: NVIDIA H200", mode="full", commit="abc1234",
                torch_version="2.15.0", lvmkit_version="0.1.0", date="2025-01-02T03:04:05+00:00",
                config={"latent_dim": 32, "lr": 1e-3}, notes="", reference={"VAE k=5000 (Burda et al., 2016)": 86.76})
    return ResultRecord(**{**base, **kw})


def test_round_trip(tmp_path):
    records = [make(), make(name="vae-quick", mode="quick", value=120.5, config={"nested": {"a": [1, 2]}}),
               make(name="vae-cifar", dataset="cifar10", metric="bpd", value=4.5, bpd=4.5, commit=None, reference={})]
    for r in records:
        path = save_result(r, tmp_path)
        assert path == tmp_path / f"{r.name}.json"
        assert json.loads(path.read_text()) == asdict(r)
        assert list(json.loads(path.read_text())) == sorted(asdict(r))   # sorted keys: stable diffs
    assert load_results(tmp_path) == sorted(records, key=lambda r: r.name)
    assert not list(tmp_path.glob(".*.tmp"))                              # no temporary files left behind
    save_result(replace(records[0], value=85.0), tmp_path)                # overwriting replaces the record
    assert load_result(tmp_path / "vae-bmnist.json").value == 85.0


def test_from_run_fills_provenance(monkeypatch):
    monkeypatch.setenv("LVMKIT_QUICK", "1")
    r = ResultRecord.from_run(run_device="cpu", name="x", model="vae", dataset="d", protocol="p", split="test",
                              metric="nll_nats", value=1.0)
    assert r.mode == "quick" and r.device.startswith("CPU:") and r.torch_version and r.lvmkit_version and r.date


@pytest.mark.parametrize("change, error", [
    (dict(value="86.3"), TypeError), (dict(value=float("nan")), ValueError), (dict(metric="nll"), ValueError),
    (dict(mode="fast"), ValueError), (dict(k=0), ValueError), (dict(name="a/b"), ValueError),
    (dict(steps=True), TypeError), (dict(date="yesterday"), ValueError), (dict(reference={"x": "high"}), TypeError),
])
def test_invalid_record_is_refused(change, error):
    with pytest.raises(error):
        make(**change)


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(vlaue=1.0), ["vlaue", "unknown"]),
    (lambda d: d.pop("value"), ["value", "missing"]),
    (lambda d: d.update(k="many"), ["k"]),
    (lambda d: d.update(name="other"), ["name", "other"]),
])
def test_malformed_file_names_file_and_field(tmp_path, edit, words):
    data = asdict(make()); edit(data)
    bad = tmp_path / "vae-bmnist.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        load_results(tmp_path)
    assert str(bad) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_bad_json_and_missing_folder(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_results(tmp_path)
    with pytest.raises(FileNotFoundError, match="no results folder"):
        load_results(tmp_path / "absent")
    assert load_results(tmp_path / "absent", missing_ok=True) == []


def test_markdown_rows_and_quick_label():
    full, quick = make(), make(name="vae-quick", mode="quick", value=120.5, device="CPU: test, 2 threads")
    cifar = make(name="pixelcnn-cifar", model="pixelcnn", dataset="cifar10", protocol="CIFAR-10, 50k/10k", metric="bpd",
                 value=3.123, reference={})
    page = results_markdown([quick, cifar, full])
    assert page.startswith("# Results\n") and "never by hand" in page
    assert page.count("\n## ") == 2 and page.index("## binarized_mnist") < page.index("## cifar10")
    rows = [l for l in page.splitlines() if l.startswith("| `vae-")]
    assert len(rows) == 2 and rows[0].startswith("| `vae-bmnist` |") and QUICK_LABEL in rows[1] and QUICK_LABEL not in rows[0]   # full runs first, quick labelled
    assert "86.31" in rows[0] and "5000" in rows[0] and "-89.90" in rows[0] and "`abc1234`" in rows[0]
    assert "120.50" in rows[1] and "CPU: test, 2 threads" in rows[1]
    assert "test bits/dim" in page and "3.123" in page and "test NLL (nats)" in page
    assert "- VAE k=5000 (Burda et al., 2016): 86.76 nats" in page
    assert rows[0].startswith("| `") and "training time" in page   # the run name comes first
    assert "short CI/CPU" in page


def test_markdown_escapes_pipes_and_marks_other_splits():
    page = results_markdown([make(device="a | b", split="valid")])
    assert "a \\| b" in page and "86.31 (valid)" in page


def test_number_of_test_examples_and_protocols_under_the_table():
    "The table shows how many test examples each value averages over, right after the number; protocols are listed below it."
    a = make(test_n=1000, protocol="static MNIST, 1000 evenly spread test examples")
    b = make(name="vae-all", test_n=10_000, value=85.0)
    c = make(name="vae-old", test_n=None, value=87.0)          # a record written before the field existed
    page = results_markdown([a, b, c])
    row = lambda name: next(l for l in page.splitlines() if l.startswith(f"| `{name}` |"))
    assert row("vae-bmnist").split(" | ")[1:4] == ["86.31", "5000", "1,000"]   # value, k, test examples: first after the name
    assert "| 10,000 |" in row("vae-all") and row("vae-old").split(" | ")[3] == "–"
    assert row("vae-bmnist").endswith("| P2 |") and row("vae-all").endswith("| P1 |")
    assert "- **P1**: static binarized MNIST, 50k/10k/10k" in page and "- **P2**: static MNIST, 1000 evenly spread test examples" in page
    with pytest.raises(ValueError, match="test_n"):
        make(test_n=0)


def test_write_results_page(tmp_path):
    out = tmp_path / "results.md"
    assert write_results_page(tmp_path / "records", out) is True
    assert "No results have been recorded yet." in out.read_text()
    assert write_results_page(tmp_path / "records", out) is False
    save_result(make(), tmp_path / "records")
    assert write_results_page(tmp_path / "records", out) is True and "86.31" in out.read_text()
    assert write_results_page(tmp_path / "records", out) is False


def test_page_has_a_bits_per_dim_column_and_keeps_the_unit_a_reference_names(tmp_path):
    "Records in nats show their bits/dim too; a reference whose label names bits/dim is printed in bits/dim."
    from lvmkit.results import ResultRecord, save_result, write_results_page
    r = ResultRecord(name="img", model="m", dataset="cifar10", protocol="p", split="test", metric="nll_nats", value=6000.0, k=10,
                     bpd=6000.0 / (3072 * math.log(2)), reference={"paper (bits/dim)": 2.95})
    save_result(r, tmp_path / "res")
    write_results_page(tmp_path / "res", tmp_path / "page.md")
    page = (tmp_path / "page.md").read_text()
    assert "| bits/dim |" in page and "2.818" in page and "paper (bits/dim): 2.950 bits/dim" in page


def test_records_and_page_are_written_atomically(tmp_path, monkeypatch):
    "save_result and write_results_page go through lvmkit.checkpoint.atomic_write: a failed write keeps the old file, no temporary left."
    import os
    save_result(make(), tmp_path)
    write_results_page(tmp_path, tmp_path / "page" / "results.md")
    old_record, old_page = (tmp_path / "vae-bmnist.json").read_text(), (tmp_path / "page" / "results.md").read_text()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_result(replace(make(), value=80.0), tmp_path)
    with pytest.raises(OSError, match="disk full"):
        write_results_page(tmp_path / "none", tmp_path / "page" / "results.md")
    assert (tmp_path / "vae-bmnist.json").read_text() == old_record and (tmp_path / "page" / "results.md").read_text() == old_page
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["page", "results.md", "vae-bmnist.json"]

def test_git_commit_marks_code_changes_dirty_but_not_written_records(tmp_path):
    "A record's commit says +dirty when code changed, not when an earlier run of the same notebook rewrote a record in book/results."
    import subprocess
    from lvmkit.core import git_commit
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "book" / "results").mkdir(parents=True); (tmp_path / "nbs").mkdir()
    (tmp_path / "book" / "results" / "a.json").write_text("{}\n"); (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q"); git("add", "."); git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == sha
    (tmp_path / "book" / "results" / "a.json").write_text('{"value": 1}\n')            # a run rewrote a record
    assert git_commit(tmp_path) == sha and git_commit(tmp_path / "nbs") == sha          # from a subfolder too (notebooks run in nbs/)
    (tmp_path / "code.py").write_text("x = 2\n")                                          # the code changed
    assert git_commit(tmp_path) == sha + "+dirty" and git_commit(tmp_path / "nbs") == sha + "+dirty"
    assert git_commit(tmp_path.parent / "no-such-folder") is None
