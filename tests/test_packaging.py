"Issue 15 (pip install lvmkit): the wheel holds the whole package and nothing else, with complete metadata and one version."
import email, shutil, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for f in ("pyproject.toml", "README.md", "LICENSE"): shutil.copy(ROOT / f, src / f)     # build from a copy: the checkout stays clean
    shutil.copytree(ROOT / "lvmkit", src / "lvmkit", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                   check=True, capture_output=True, text=True)
    return next(out.glob("lvmkit-*.whl"))


def test_the_wheel_holds_every_module_and_nothing_of_the_repository(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "lvmkit").rglob("*.py") if "__pycache__" not in p.parts)
    assert modules and not [m for m in modules if m not in names], "modules missing from the wheel"     # lvmkit.models included
    stray = [n for n in names if not (n.startswith("lvmkit/") or n.startswith("lvmkit-"))]
    assert not stray, f"files outside the package in the wheel: {stray[:5]}"
    assert not [n for n in names if n.startswith(("lvmkit/nbs", "lvmkit/tests")) or n.endswith(".ipynb")]


def test_the_wheel_metadata_is_complete_and_the_version_has_one_source(wheel):
    from lvmkit import __version__
    z = zipfile.ZipFile(wheel)
    meta = email.message_from_string(z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode())
    assert meta["Name"] == "lvmkit" and meta["Version"] == __version__ and wheel.name.startswith(f"lvmkit-{__version__}-")
    assert meta["Summary"] and meta["Requires-Python"] and meta.get_all("Classifier") and meta.get_all("Project-URL")
    assert meta["License-Expression"] == "MIT" and any(n.endswith("licenses/LICENSE") for n in z.namelist())
    assert {r.split()[0].split(";")[0].split(">")[0].split("=")[0] for r in meta.get_all("Requires-Dist")} >= {"torch", "torchvision", "numpy"}
    assert "lvmkit = lvmkit.cli:main" in z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()


def test_torch_and_torchvision_have_lower_bounds_that_this_environment_meets(wheel):
    "A lower bound (torch 2.4: fused Adam on the CPU), and the environment the tests run in satisfies every requirement."
    from importlib.metadata import version
    from packaging.requirements import Requirement
    z = zipfile.ZipFile(wheel)
    meta = email.message_from_string(z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode())
    reqs = {r.name: r for r in map(Requirement, meta.get_all("Requires-Dist")) if not r.marker}
    assert any(s.operator == ">=" for s in reqs["torch"].specifier) and any(s.operator == ">=" for s in reqs["torchvision"].specifier)
    assert reqs["torch"].specifier.contains("2.4.0") and not reqs["torch"].specifier.contains("2.3.1")
    for name, r in reqs.items():
        assert r.specifier.contains(version(name).split("+")[0], prereleases=True), f"installed {name} {version(name)} does not meet {r}"


def test_version_flag(capsys):
    from lvmkit import __version__
    from lvmkit.cli import main
    with pytest.raises(SystemExit) as e: main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"lvmkit {__version__}"
