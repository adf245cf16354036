"Stale stored outputs: .ci/output_stamps.py flags a cell edited after its outputs were stored, and the repository's notebooks pass."
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("output_stamps", ROOT / ".ci" / "output_stamps.py")
stamps = importlib.util.module_from_spec(spec); spec.loader.exec_module(stamps)


def _nb(path: Path, cells: list[dict]) -> Path:
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def _code(src: str, out: str | None) -> dict:
    outs = [{"name": "stdout", "output_type": "stream", "text": [out]}] if out is not None else []
    return {"cell_type": "code", "execution_count": None, "id": "x", "metadata": {}, "outputs": outs, "source": [src]}


def test_stamp_then_edit_is_stale(tmp_path):
    p = _nb(tmp_path / "a.ipynb", [_code("print(1)", "1\n"), _code("x = 2", None), {"cell_type": "markdown", "id": "m", "metadata": {}, "source": ["hi"]}])
    assert len(stamps.stale(p)) == 1 and "no stamp" in stamps.stale(p)[0]          # outputs without a stamp
    assert stamps.stamp(p) == 1 and stamps.stale(p) == []                            # only cells with outputs are stamped
    nb = json.loads(p.read_text())
    assert "lvmkit" not in nb["cells"][1]["metadata"]
    nb["cells"][0]["source"] = ["print(2)"]                                          # edited, not re-executed
    p.write_text(json.dumps(nb))
    (line,) = stamps.stale(p)
    assert "cell 0" in line and "source changed after the outputs were stored" in line and "print(2)" in line
    assert stamps.main(["check", str(p)]) == 1
    nb["cells"][0]["outputs"] = []                                                    # cleared outputs are never stale
    p.write_text(json.dumps(nb))
    assert stamps.main(["check", str(p)]) == 0


def test_stamps_survive_nbdev_clean(tmp_path):
    "nbdev-clean keeps the stamp (pyproject's allowed_cell_metadata_keys): CI cleans the notebooks before checking them."
    pytest.importorskip("nbdev")
    from nbdev.clean import clean_nb
    p = _nb(tmp_path / "b.ipynb", [_code("print(1)", "1\n")])
    stamps.stamp(p)
    nb = json.loads(p.read_text())
    import tomllib
    keys = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]["allowed_cell_metadata_keys"]
    clean_nb(nb, allowed_cell_metadata_keys=keys)
    assert nb["cells"][0]["metadata"]["lvmkit"]["source"] == stamps.digest(nb["cells"][0])


def test_repository_notebooks_have_no_stale_outputs():
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "output_stamps.py"), "check", *map(str, sorted((ROOT / "nbs").glob("*.ipynb")))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
