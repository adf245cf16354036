"Each chapter's first cell, run as on Colab (a `google.colab` module present, `%pip` recorded instead of run): it pins the release and sets the quick, downloading mode."
import json, os, sys, types
from pathlib import Path
import pytest
from IPython.core.interactiveshell import InteractiveShell
import lvmkit

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "nbs").glob("1[0-9]_*.ipynb"))


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_first_cell_on_colab(path, monkeypatch):
    cell = json.loads(path.read_text())["cells"][1]
    src = "".join(cell["source"])
    for var in ("LVMKIT_QUICK", "LVMKIT_DOWNLOAD"): monkeypatch.setenv(var, "x"); monkeypatch.delenv(var)   # recorded: restored after the test
    shell = InteractiveShell.instance()
    calls = []
    shell.register_magic_function(lambda line: calls.append(line), magic_kind="line", magic_name="pip")
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert shell.run_cell(src).success
    assert calls == [f'install -q "lvmkit @ git+{lvmkit.REPOSITORY}@v{lvmkit.__version__}"']   # the release the chapter was written for
    assert os.environ["LVMKIT_QUICK"] == "1" and os.environ["LVMKIT_DOWNLOAD"] == "1"
    assert "quick mode" in "".join(json.loads(path.read_text())["cells"][2]["source"])         # and the page says so at the top


def test_first_cell_elsewhere_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for var in ("LVMKIT_QUICK", "LVMKIT_DOWNLOAD"): monkeypatch.setenv(var, "x"); monkeypatch.delenv(var)   # recorded: restored after the test
    shell = InteractiveShell.instance()
    calls = []
    shell.register_magic_function(lambda line: calls.append(line), magic_kind="line", magic_name="pip")
    assert shell.run_cell("".join(json.loads(CHAPTERS[0].read_text())["cells"][1]["source"])).success
    assert calls == [] and "LVMKIT_QUICK" not in os.environ and "LVMKIT_DOWNLOAD" not in os.environ


def test_colab_install_line_installs_the_pinned_release(tmp_path, monkeypatch):
    """The first cell's `%pip install` line, run for real by pip: the repository URL is served from a local bare clone of this
    checkout tagged as the release (git's url.insteadOf, so the line itself is unchanged), and pip installs into a folder with
    --no-deps --no-build-isolation (torch is already here; no network). The installed lvmkit imports and is the pinned version."""
    import shlex, shutil, subprocess
    if shutil.which("git") is None or not (ROOT / ".git").exists(): pytest.skip("needs git and a git checkout")
    bare = tmp_path / "lvmkit.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(bare)], check=True)
    subprocess.run(["git", "--git-dir", str(bare), "tag", "-f", f"v{lvmkit.__version__}", "HEAD"], check=True, capture_output=True)  # RELEASING.md's tag
    (tmp_path / "gitconfig").write_text(f'[url "file://{bare}"]\n\tinsteadOf = {lvmkit.REPOSITORY}\n')
    env = dict(os.environ, GIT_CONFIG_GLOBAL=str(tmp_path / "gitconfig"), GIT_CONFIG_NOSYSTEM="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    target, runs = tmp_path / "site", []
    def pip(line):
        r = subprocess.run([sys.executable, "-m", "pip", *shlex.split(line), "--no-deps", "--no-build-isolation", "--target", str(target)],
                           env=env, capture_output=True, text=True)
        runs.append(r)
    for var in ("LVMKIT_QUICK", "LVMKIT_DOWNLOAD"): monkeypatch.setenv(var, "x"); monkeypatch.delenv(var)
    shell = InteractiveShell.instance()
    shell.register_magic_function(pip, magic_kind="line", magic_name="pip")
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert shell.run_cell("".join(json.loads(CHAPTERS[0].read_text())["cells"][1]["source"])).success
    assert len(runs) == 1 and runs[0].returncode == 0, runs[0].stderr[-3000:]
    r = subprocess.run([sys.executable, "-c", "import lvmkit, lvmkit.models.lvae, lvmkit.recipes; print(lvmkit.__file__, lvmkit.__version__)"],
                       env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    path, version = r.stdout.split()
    assert Path(path).is_relative_to(target) and version == lvmkit.__version__
