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
