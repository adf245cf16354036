"Tests for lvmkit.data: checksums, caching, error messages, shapes and values, against the offline data."
import gzip, hashlib, os, time
from pathlib import Path

import numpy as np
import pytest
import torch

from lvmkit import data as D
from lvmkit.data import (BINARIZED_MNIST_SHA256, CIFAR10_CLASSES, DataIntegrityError, binarized_mnist, cache_dir,
                         cifar10, data_root, gaussian_2d, mnist, toy_2d, TOY_2D)

ROOT = Path(os.environ.get("LVMKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(not (ROOT / "binarized_mnist").is_dir(), reason=f"offline data not found at {ROOT}")


def _snapshot(root: Path) -> dict:
    "Every file under `root` with its size and modification time."
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    "A fresh cache folder for the whole session, so the first loads really parse the raw files."
    return tmp_path_factory.mktemp("lvmkit_cache")


@pytest.fixture
def cache(session_cache, monkeypatch):
    "Point LVMKIT_CACHE at the session cache and LVMKIT_DATA at the test data root."
    monkeypatch.setenv("LVMKIT_CACHE", str(session_cache))
    monkeypatch.setenv("LVMKIT_DATA", str(ROOT))
    return session_cache


@pytest.fixture(scope="session")
def loaded(session_cache):
    "Load every dataset once with a fresh cache (parsing the raw files), recording the data root before and after."
    mp = pytest.MonkeyPatch()
    mp.setenv("LVMKIT_CACHE", str(session_cache)); mp.setenv("LVMKIT_DATA", str(ROOT))
    before = _snapshot(ROOT)
    out = {"bmnist": {s: binarized_mnist(s).tensors[0] for s in ("train", "valid", "test")},
           "cifar": {s: cifar10(s).tensors for s in ("train", "test")},
           "mnist": mnist("test")}
    out["root_before"], out["root_after"] = before, _snapshot(ROOT)
    mp.undo()
    return out


# ---- roots -------------------------------------------------------------------------------------

def test_roots(monkeypatch, tmp_path):
    monkeypatch.delenv("LVMKIT_CACHE", raising=False); monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "lvmkit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lvmkit"
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LVMKIT_DATA", raising=False)
    assert data_root() == tmp_path / "c" / "data"
    monkeypatch.setenv("LVMKIT_DATA", str(tmp_path / "d"))
    assert data_root() == tmp_path / "d" and data_root(tmp_path / "e") == tmp_path / "e"


# ---- binarized MNIST ---------------------------------------------------------------------------

@needs_data
def test_binarized_mnist_shapes_and_values(loaded):
    counts = {"train": 50000, "valid": 10000, "test": 10000}
    for split, x in loaded["bmnist"].items():
        assert x.shape == (counts[split], 1, 28, 28) and x.dtype == torch.float32
        assert set(x.unique().tolist()) == {0.0, 1.0}
    assert int(loaded["bmnist"]["test"].sum()) == 1038896  # mean pixel 0.1325
    assert int(loaded["bmnist"]["train"].sum()) == 5118041


@needs_data
def test_binarized_mnist_train_valid(loaded, cache):
    x = binarized_mnist("train+valid").tensors[0]
    assert x.shape == (60000, 1, 28, 28)
    assert torch.equal(x[:50000], loaded["bmnist"]["train"]) and torch.equal(x[50000:], loaded["bmnist"]["valid"])


@needs_data
def test_binarized_mnist_cache_is_fast_and_equal(loaded, cache):
    files = sorted(p.name for p in (cache / "binarized_mnist").glob("*.npy"))
    assert files == sorted(f"binarized_mnist_{s}-{h}.npy" for s, h in BINARIZED_MNIST_SHA256.items())
    t0 = time.perf_counter(); x = binarized_mnist("train").tensors[0]; dt = time.perf_counter() - t0
    assert torch.equal(x, loaded["bmnist"]["train"]) and dt < 1.0, dt


@needs_data
def test_data_root_unchanged(loaded):
    assert loaded["root_before"] == loaded["root_after"]


@needs_data
def test_cache_is_enough_without_root(loaded, cache):
    x = binarized_mnist("test", root="/nonexistent/lvmkit").tensors[0]
    assert torch.equal(x, loaded["bmnist"]["test"])


def _bogus_root(tmp_path: Path, name: str, content: bytes) -> Path:
    (tmp_path / "root" / "binarized_mnist").mkdir(parents=True)
    (tmp_path / "root" / "binarized_mnist" / name).write_bytes(content)
    return tmp_path / "root"


def test_corrupt_file_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    content = (" ".join(["0"] * 784) + "\n").encode() * 3  # well formed, but not the published file
    root = _bogus_root(tmp_path, "binarized_mnist_test.amat", content)
    with pytest.raises(DataIntegrityError) as e:
        binarized_mnist("test", root=root)
    msg = str(e.value)
    assert "binarized_mnist_test.amat" in msg and BINARIZED_MNIST_SHA256["test"] in msg
    assert hashlib.sha256(content).hexdigest() in msg and "delete" in msg
    assert isinstance(e.value, ValueError) and not (tmp_path / "cache" / "binarized_mnist").exists()


def test_bad_format_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    content = gzip.compress(("0,1," * 392 + "\n").encode())
    root = _bogus_root(tmp_path, "binarized_mnist_valid.amat.gz", content)
    with pytest.raises(DataIntegrityError, match="bad format") as e:
        binarized_mnist("valid", root=root)
    assert "binarized_mnist_valid.amat.gz" in str(e.value) and BINARIZED_MNIST_SHA256["valid"] in str(e.value)
    root2 = _bogus_root(tmp_path / "b", "binarized_mnist_valid.amat.gz", b"not gzip")
    with pytest.raises(DataIntegrityError, match="gunzip"):
        binarized_mnist("valid", root=root2)


def test_parse_amat():
    rows = np.random.default_rng(0).integers(0, 2, (5, 784))
    text = "".join(" ".join(map(str, r)) + "\n" for r in rows).encode()
    assert np.array_equal(D._parse_amat(text), rows)
    for bad in [text[:-1], text.replace(b"1", b"2", 1), text.replace(b"\n", b"\r", 1), b""]:
        with pytest.raises(ValueError): D._parse_amat(bad)


def test_missing_file_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as e:
        binarized_mnist("train", root=tmp_path / "empty")
    msg = str(e.value)
    assert str(tmp_path / "empty" / "binarized_mnist" / "binarized_mnist_train.amat") in msg
    assert "binarized_mnist_train.amat.gz" in msg and BINARIZED_MNIST_SHA256["train"] in msg
    assert "LVMKIT_DATA" in msg and "root=" in msg and "download=True" in msg
    assert not (tmp_path / "empty").exists()  # nothing created in the root


def test_missing_other_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="LVMKIT_DATA") as e:
        cifar10("test", root=tmp_path / "empty")
    assert "cifar10_test.npz" in str(e.value) and D.CIFAR10_SHA256["test"]["x"] in str(e.value)
    with pytest.raises(FileNotFoundError, match="LVMKIT_DATA") as e:
        mnist("test", root=tmp_path / "empty")
    assert "t10k-images-idx3-ubyte.gz" in str(e.value)


def test_bad_split():
    for fn, valid in [(binarized_mnist, r"train\+valid"), (mnist, "test"), (cifar10, "test")]:
        with pytest.raises(ValueError, match=valid):
            fn("validation")
    with pytest.raises(ValueError, match="threshold"):
        mnist("test", binarize="static")


# ---- MNIST -------------------------------------------------------------------------------------

@needs_data
def test_mnist(loaded, cache):
    ds = loaded["mnist"]
    assert len(ds) == 10000 and len(mnist("train")) == 60000
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and int(y) == 7
    assert (cache / "mnist" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


@needs_data
def test_mnist_binarization(cache):
    dyn = mnist("test", binarize="dynamic")
    a, b = dyn[0][0], dyn[0][0]
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)
    th = mnist("test", binarize="threshold")
    assert torch.equal(th[0][0], th[0][0]) and set(th[0][0].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(th[0][0], (mnist("test")[0][0] > 0.5).float())


@needs_data
def test_mnist_corrupt_gz(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "root" / "MNIST" / "raw"; raw.mkdir(parents=True)
    for p in (ROOT / "MNIST" / "raw").glob("*.gz"): (raw / p.name).write_bytes(p.read_bytes())
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataIntegrityError, match="t10k-labels-idx1-ubyte.gz"):
        mnist("test", root=tmp_path / "root")


@needs_data
def test_mnist_unpacked_files_are_verified(tmp_path, monkeypatch):
    "Issue 14: a flipped byte in an unpacked idx file changed the data silently; now the cache is rebuilt and the data root refused."
    import gzip
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "root" / "MNIST" / "raw"; raw.mkdir(parents=True)
    for p in (ROOT / "MNIST" / "raw").glob("*.gz"): (raw / p.name).write_bytes(p.read_bytes())
    good = mnist("test", root=tmp_path / "root")
    cached = tmp_path / "cache" / "mnist" / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(cached.read_bytes()); data[20_000] ^= 0xFF; cached.write_bytes(bytes(data))    # a flipped pixel byte in the cache
    again = mnist("test", root=tmp_path / "root")                                                    # detected, unpacked again
    assert torch.equal(again.data, good.data) and cached.read_bytes() != bytes(data)
    for p in raw.glob("*.gz"): (raw / p.name[:-3]).write_bytes(gzip.decompress(p.read_bytes()))     # unpacked files in the data root
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes()[:-1] + b"\x09")
    with pytest.raises(DataIntegrityError, match="t10k-labels-idx1-ubyte: unpacked MNIST file differs"):
        mnist("test", root=tmp_path / "root")


# ---- CIFAR-10 ----------------------------------------------------------------------------------

@needs_data
def test_cifar10(loaded, cache):
    (xtr, ytr), (xte, yte) = loaded["cifar"]["train"], loaded["cifar"]["test"]
    assert xtr.shape == (50000, 3, 32, 32) and xte.shape == (10000, 3, 32, 32)
    assert xtr.dtype == xte.dtype == torch.uint8 and ytr.dtype == yte.dtype == torch.int64
    assert torch.bincount(ytr).tolist() == [5000] * 10 and torch.bincount(yte).tolist() == [1000] * 10
    assert xtr[0, :, 0, :3].T.tolist() == [[59, 62, 63], [43, 46, 45], [50, 48, 43]]
    assert xtr[0, :, 0, -3:].T.tolist() == [[158, 132, 108], [152, 125, 102], [148, 124, 103]]
    assert xte[0, :, 0, :3].T.tolist() == [[158, 112, 49], [159, 111, 47], [165, 116, 51]]
    assert CIFAR10_CLASSES[int(ytr[0])] == "frog" and CIFAR10_CLASSES[int(yte[0])] == "cat"
    t0 = time.perf_counter(); x2, y2 = cifar10("train").tensors; dt = time.perf_counter() - t0
    assert torch.equal(x2, xtr) and torch.equal(y2, ytr) and dt < 2.0, dt


def test_cifar10_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cifar10").mkdir()
    x = np.zeros((2, 32, 32, 3), np.uint8); y = np.zeros(2, np.uint8)
    np.savez_compressed(tmp_path / "cifar10" / "cifar10_test.npz", x=x, y=y)
    with pytest.raises(DataIntegrityError) as e:
        cifar10("test", root=tmp_path)
    assert "cifar10_test.npz" in str(e.value) and D.CIFAR10_SHA256["test"]["x"] in str(e.value)
    assert hashlib.sha256(x.tobytes()).hexdigest() in str(e.value)


# ---- 2-D toys ----------------------------------------------------------------------------------

def test_gaussian_2d():
    for k, sign in [(1, 1), (2, -1)]:
        tr, te = gaussian_2d(k)
        assert tr.shape == (10000, 2) and te.shape == (2500, 2) and tr.dtype == torch.float32
        # the reference formula, written out independently
        eps = np.random.RandomState(0).randn(10000, 2)
        s = [5.0, 1.0] if k == 1 else [1.0, 5.0]
        c = np.sqrt(2) / 2
        ref = np.array([1.0 if k == 1 else -1.0, 2.0]) + np.stack([c * (eps[:, 0] * s[0]) - c * (eps[:, 1] * s[1]),
                                                                   c * (eps[:, 0] * s[0]) + c * (eps[:, 1] * s[1])], 1)
        assert np.allclose(tr.numpy(), ref.astype("float32"), atol=1e-5)
        assert torch.equal(te, tr[:2500])
        cov = np.cov(tr.numpy().T)
        assert abs(cov[0, 0] - 13) < 0.5 and abs(cov[0, 1] - sign * 12) < 0.5
    with pytest.raises(ValueError): gaussian_2d(3)


def test_toy_2d():
    for name in TOY_2D:
        x = toy_2d(name, 1001)
        assert x.shape == (1001, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert torch.equal(x, toy_2d(name, 1001)) and not torch.equal(x, toy_2d(name, 1001, seed=1))
    with pytest.raises(ValueError, match="moons"): toy_2d("swissroll", 10)


def test_cifar10_torchvision_layout(tmp_path, monkeypatch):
    "With torchvision's cifar-10-batches-py in the root, its (N, 32, 32, 3) data is returned as (N, 3, 32, 32)."
    import torchvision.datasets
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    class FakeCIFAR10:
        def __init__(self, root, train, download): self.data, self.targets = x, [3, 1, 4, 1]
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    xt, yt = cifar10("test", root=tmp_path).tensors
    assert xt.shape == (4, 3, 32, 32) and xt.dtype == torch.uint8 and yt.dtype == torch.int64
    assert torch.equal(xt.permute(0, 2, 3, 1), torch.from_numpy(x)) and yt.tolist() == [3, 1, 4, 1]


def test_a_damaged_data_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    "Issue 14: a flipped byte in a parsed data cache changed the data silently."
    import numpy as np
    from lvmkit.data import binarized_mnist
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path))
    x = binarized_mnist("test").tensors[0]
    cache = next((tmp_path / "binarized_mnist").glob("*test*.npy"))
    assert cache.with_name(cache.name + ".sha256").is_file()
    a = np.load(cache); a.flat[12345] ^= 1; np.save(cache, a)                                   # one pixel flipped in the cache
    with pytest.warns(UserWarning, match="does not match its checksum"):
        y = binarized_mnist("test").tensors[0]
    assert torch.equal(x, y)                                                                    # rebuilt from the verified source


def test_a_read_only_or_full_cache_folder_is_not_fatal(tmp_path, monkeypatch):
    "Issue 14: a read-only cache folder (or a full disk) reached the user as an OSError traceback."
    import errno
    import lvmkit.data as data
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path))
    for code, text in [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left on device")]:
        def refuse(path, content, code=code, text=text): raise OSError(code, text)
        monkeypatch.setattr(data, "atomic_write", refuse)
        with pytest.warns(UserWarning, match=f"cannot write the data cache .*{text}"):
            assert data.binarized_mnist("test").tensors[0].shape == (10000, 1, 28, 28)


@needs_data
def test_download_from_a_local_server(tmp_path, monkeypatch):
    "The Colab path: LVMKIT_DOWNLOAD=1 makes a loader fetch a missing file (here from 127.0.0.1), verify it and keep it; a bad one is refused."
    import gzip
    import lvmkit.data as D
    from test_pretrained import Server                                                          # a folder served on 127.0.0.1
    site = tmp_path / "site"; site.mkdir()
    (site / "binarized_mnist_test.amat").write_bytes(gzip.decompress((ROOT / "binarized_mnist" / "binarized_mnist_test.amat.gz").read_bytes()))
    srv = Server(site)
    try:
        monkeypatch.setattr(D, "BINARIZED_MNIST_URL", srv.url + "/binarized_mnist_{split}.amat")
        monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache")); monkeypatch.setenv("LVMKIT_DATA", str(tmp_path / "data"))
        monkeypatch.delenv("LVMKIT_DOWNLOAD", raising=False)
        with pytest.raises(FileNotFoundError):                                   # no download unless asked
            binarized_mnist("test")
        monkeypatch.setenv("LVMKIT_DOWNLOAD", "1")
        x = binarized_mnist("test").tensors[0]
        assert x.shape == (10000, 1, 28, 28) and int(x.sum()) == 1038896 and (tmp_path / "data" / "binarized_mnist" / "binarized_mnist_test.amat").is_file()
        monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache2")); monkeypatch.setenv("LVMKIT_DATA", str(tmp_path / "data2"))
        (site / "binarized_mnist_test.amat").write_bytes(b"0 1\n" * 10)         # the site serves something else
        with pytest.raises(DataIntegrityError, match="downloaded content differs"):
            binarized_mnist("test")
        assert not (tmp_path / "data2" / "binarized_mnist" / "binarized_mnist_test.amat").exists()
    finally:
        srv.stop()
