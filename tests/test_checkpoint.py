"Tests of lvmkit.checkpoint: the one atomic writer, checkpoint files, random state, resumability, and the layering."
import json, os, random, stat, subprocess, sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import lvmkit.checkpoint as ckpt_mod
import lvmkit.training as training
from lvmkit.checkpoint import (atomic_write, check_resumable, load_checkpoint, rng_state, save_checkpoint, set_rng_state)

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_text_bytes_and_writer(tmp_path):
    assert atomic_write(tmp_path / "a.txt", "héllo\n").read_bytes() == "héllo\n".encode("utf-8")       # text is UTF-8
    assert atomic_write(tmp_path / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    p = atomic_write(tmp_path / "deep" / "c.pt", lambda f: torch.save({"w": torch.ones(2)}, f))        # parent folders are made
    assert p == tmp_path / "deep" / "c.pt" and torch.equal(torch.load(p)["w"], torch.ones(2))
    atomic_write(tmp_path / "a.txt", "")                                                                 # replaces, also by nothing
    assert (tmp_path / "a.txt").read_text() == ""
    assert sorted(q.name for q in tmp_path.rglob("*")) == ["a.txt", "b.bin", "c.pt", "deep"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = atomic_write(tmp_path / "config.json", json.dumps({"lr": 0.001}))
    def half_then_fail(f):
        f.write(b'{"lr": 0.'); f.flush(); raise error
    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"lr": 0.001}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_atomic_write_failure_in_fsync_or_rename(tmp_path, monkeypatch):
    target = atomic_write(tmp_path / "r.json", "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_refuses_other_content_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="str, bytes or a function"):
        atomic_write(tmp_path / "x.json", {"not": "serialised"})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    "Not the 0600 of a mkstemp file: the result is readable as any file the process creates."
    umask = os.umask(0); os.umask(umask)
    mode = stat.S_IMODE(atomic_write(tmp_path / "r.json", "{}").stat().st_mode)
    assert mode == 0o666 & ~umask


def test_save_checkpoint_failure_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pt", model={"w": torch.ones(1)}, step=1)
    def broken(obj, f, *a, **k): f.write(b"partial"); raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last.pt", model={"w": torch.zeros(1)}, step=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_round_trip_survives_weights_only_load(tmp_path):
    random.seed(1); np.random.seed(1); torch.manual_seed(1)
    save_checkpoint(tmp_path / "c.pt", model={}, rng=rng_state())
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])                      # loaded with weights_only=True
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_check_resumable_allows_only_resumable_fields():
    @dataclass(frozen=True)
    class Cfg:
        lr: float = 1e-3; steps: int = 10; patience: int | None = None
    check_resumable(Cfg(steps=20, patience=3), {"config": asdict(Cfg())})
    with pytest.raises(ValueError, match=r"lr=0.001 \(checkpoint\) vs 0.1 \(now\)"):
        check_resumable(Cfg(lr=0.1), {"config": asdict(Cfg())}, "x/last.pt")


def test_training_re_exports_the_checkpoint_names():
    for name in ["save_checkpoint", "load_checkpoint", "check_compatible", "ema_weights", "load_model", "rng_state", "set_rng_state",
                 "check_resumable", "RESUMABLE_FIELDS"]:
        assert getattr(training, name) is getattr(ckpt_mod, name) and name in training.__all__, name


def test_checkpoint_does_not_import_the_training_loop():
    code = "import sys, lvmkit.checkpoint; assert 'lvmkit.training' not in sys.modules, 'lvmkit.checkpoint imports lvmkit.training'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_flipped_byte_in_a_checkpoint_is_caught(tmp_path):
    "Issue 14: a flipped byte in a checkpoint gave a changed number with exit status 0."
    import torch
    from lvmkit.checkpoint import load_checkpoint, save_checkpoint
    p = save_checkpoint(tmp_path / "c.pt", model={"w": torch.randn(200, 50)})
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.load(p, weights_only=True)["model"]["w"])
    data = bytearray(p.read_bytes()); data[len(data) // 2] ^= 0x10; p.write_bytes(bytes(data))   # inside the weights
    with pytest.raises(ValueError, match="damaged"): load_checkpoint(p)


def test_a_checkpoint_with_nan_weights_is_refused_by_load_model(tmp_path):
    "Issue 14: a corrupt checkpoint with NaN weights was evaluated (NaN numbers, exit status 0)."
    from lvmkit.core import build_model
    from lvmkit.checkpoint import load_model
    m = build_model("mlp_vae", z_dim=3, hidden=(8,))
    sd = m.state_dict(); sd["decoder.net.0.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model=sd, spec=m.spec)
    with pytest.raises(ValueError, match="NaN or infinite weights in decoder.net.0.weight"): load_model(tmp_path / "nan.pt")
