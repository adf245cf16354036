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


def test_a_helper_edited_in_an_earlier_cell_makes_the_outputs_drawn_with_it_stale(tmp_path):
    "The stamp covers the functions a cell calls that earlier cells define, transitively, and names the one that changed."
    cells = [_code("def g(x):\n    return x + 1\n", None), _code("def f(x):\n    return 2 * g(x)\n", None),
             _code("print(f(1))", "4\n"), _code("print(len('f'))", "1\n")]
    p = _nb(tmp_path / "c.ipynb", cells)
    stamps.stamp(p)
    nb = json.loads(p.read_text())
    assert set(nb["cells"][2]["metadata"]["lvmkit"]["uses"]) == {"f", "g"} and "uses" not in nb["cells"][3]["metadata"]["lvmkit"]
    assert stamps.stale(p) == []
    nb["cells"][0]["source"] = ["def g(x):\n    return x + 2\n"]                     # the helper of the helper, edited
    p.write_text(json.dumps(nb))
    (line,) = stamps.stale(p)
    assert "cell 2" in line and "code it calls changed" in line and "(g)" in line
    stamps.stamp(p); assert stamps.stale(p) == []                                     # re-executed (stamped): current again


def test_lvmkit_drawing_functions_a_cell_names_are_in_its_stamp(tmp_path):
    "show_images draws (and calls image_grid): a change to either makes the figure stale; a function that computes a number does not count."
    cells = [_code("from lvmkit.experiments import show_images\nfrom lvmkit.objectives import bits_per_dim\n", None),
             _code("show_images(x, 8)", "<Figure>"), _code("print(bits_per_dim(1.0, 784))", "0.00184\n")]
    p = _nb(tmp_path / "d.ipynb", cells)
    stamps.stamp(p)
    nb = json.loads(p.read_text())
    assert set(nb["cells"][1]["metadata"]["lvmkit"]["uses"]) == {"lvmkit.experiments.show_images", "lvmkit.experiments.image_grid"}
    assert "uses" not in nb["cells"][2]["metadata"]["lvmkit"]
    nb["cells"][1]["metadata"]["lvmkit"]["uses"]["lvmkit.experiments.image_grid"] = "0" * 12   # as if stamped before image_grid changed
    p.write_text(json.dumps(nb))
    (line,) = stamps.stale(p)
    assert "cell 1" in line and "lvmkit.experiments.image_grid" in line


def test_magics_and_shell_lines_do_not_break_the_stamp(tmp_path):
    p = _nb(tmp_path / "e.ipynb", [_code("def f():\n    return 1\n", None), _code("%matplotlib inline\n!echo hi\nprint(f())", "1\n")])
    stamps.stamp(p)
    assert set(json.loads(p.read_text())["cells"][1]["metadata"]["lvmkit"]["uses"]) == {"f"}


def test_a_record_the_cell_reads_is_in_its_stamp_and_the_cell_runs_alone(tmp_path):
    """A cell naming a record under book/results/ holds its digest: the record changing (an earlier chapter run again) makes the cell
    stale, with the command that runs that cell alone; `.ci/execute.py NB --cell ID` does, and stamps only it."""
    (tmp_path / "book" / "results").mkdir(parents=True); (tmp_path / "nbs").mkdir()
    rec = tmp_path / "book" / "results" / "a.json"
    rec.write_text('{"value": 1}')
    reader = _code('import json\nprint(json.load(open("../book/results/a.json"))["value"])', "1\n")
    reader["id"] = "reader"
    other = _code("print(2)", "3\n"); other["id"] = "other"                    # a stale cell that --cell must leave alone
    p = _nb(tmp_path / "nbs" / "r.ipynb", [reader, other])
    stamps.stamp(p, {"reader"})
    nb = json.loads(p.read_text())
    assert nb["cells"][0]["metadata"]["lvmkit"]["uses"] == {"../book/results/a.json": stamps._short('{"value": 1}')}
    assert "lvmkit" not in nb["cells"][1]["metadata"]                            # not in `only`: not stamped
    assert [l for l in stamps.stale(p) if "cell 0" in l] == []
    rec.write_text('{"value": 5}')
    line = next(l for l in stamps.stale(p) if "cell 0" in l)
    assert "a record it reads changed" in line and "../book/results/a.json" in line and f"python .ci/execute.py {p} --cell reader" in line
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "execute.py"), str(p), "--cell", "reader"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    nb = json.loads(p.read_text())
    out = lambda i: "".join(nb["cells"][i]["outputs"][0]["text"])
    assert out(0) == "5\n" and out(1) == "3\n"                                 # only that cell ran
    assert [l for l in stamps.stale(p) if "cell 0" in l] == [] and any("cell 1" in l for l in stamps.stale(p))
    rec.unlink()
    assert any("cell 0" in l and "a record it reads changed" in l for l in stamps.stale(p))   # a missing record is a change too
    r = subprocess.run([sys.executable, str(ROOT / ".ci" / "execute.py"), str(p), "--cell", "nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "no code cell with id nope" in r.stderr
