"""Kernel-free hygiene checks for every notebook in nbs/ (nbval runs them; this checks how they are stored)."""
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "nbs").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
FIX = "fix: jupyter execute --inplace NB && nbdev-clean && python .ci/nbcounts.py nbs/*.ipynb"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def headings(nb: dict) -> list[str]:
    "Markdown heading lines of the notebook, skipping fenced code blocks."
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown": continue
        fenced = False
        for line in source(cell).splitlines():
            if re.match(r"\s*(```|~~~)", line): fenced = not fenced
            elif not fenced and re.match(r"#{1,6} ", line): out.append(line.rstrip())
    return out


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in nbs/"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def nb_path(request) -> Path:
    return request.param


def test_title_and_kernel(nb_path):
    nb = load(nb_path)
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and source(first).startswith("# "), \
        f"{nb_path.name}: the first cell must be markdown starting with '# Title' (jupyter-book needs a title)"
    name = nb["metadata"].get("kernelspec", {}).get("name")
    assert name == "python3", f"{nb_path.name}: kernelspec name is {name!r}; use python3 (jupytext --set-kernel python3)"


def test_heading_levels_are_consecutive(nb_path):
    levels = [len(h) - len(h.lstrip("#")) for h in headings(load(nb_path))]
    jumps = [(a, b) for a, b in zip(levels, levels[1:]) if b > a + 1]
    assert not jumps, f"{nb_path.name}: heading level jumps {jumps} (e.g. # then ###) fail the book build"


def test_outputs_are_stored_cleanly(nb_path):
    nb = load(nb_path)
    for i, cell in enumerate(code_cells(nb), 1):
        if cell.get("outputs"):
            assert cell.get("execution_count") is not None, \
                f"{nb_path.name}: code cell {i} has outputs but no execution_count (nbval fails it); {FIX}"
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb_path.name}: code cell {i} stores an error output ({errors[0].get('ename')}); re-run it"


def test_widget_views_have_saved_state(nb_path):
    nb = load(nb_path)
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    views = [o["data"][WIDGET_VIEW]["model_id"] for c in code_cells(nb) for o in c.get("outputs", [])
             if WIDGET_VIEW in o.get("data", {})]
    missing = [m for m in views if m not in state]
    assert not missing, f"{nb_path.name}: widget views {missing} have no saved widget state (they render blank); {FIX}"


def test_default_exp_cell_is_hidden(nb_path):
    nb = load(nb_path)
    cells = [c for c in code_cells(nb) if re.search(r"^#\|\s*default_exp\s+\S+", source(c), re.M)]
    plain = [c for c in code_cells(nb) if re.match(r"#\|\s*export\s*$", source(c).split("\n", 1)[0])]
    if not cells and not plain: return   # every export names its module (e.g. the DMoL page exports into lvmkit.distributions)
    assert len(cells) == 1, f"{nb_path.name}: needs exactly one '#| default_exp module' cell, found {len(cells)}"
    assert "remove-cell" in cells[0].get("metadata", {}).get("tags", []), \
        f"{nb_path.name}: tag the '#| default_exp' cell with remove-cell (in the jupytext script: # %% tags=[\"remove-cell\"])"


CHAPTERS = [p for p in NOTEBOOKS if p.name.startswith("1")]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.name for p in CHAPTERS])
def test_chapter_structure(path):
    nb = load(path)
    found = set(headings(nb))
    for h in ("## Summary", "## Exercises", "## References"):
        assert h in found, f"{path.name}: a chapter needs a '{h}' section"
    first = source(code_cells(nb)[0])
    assert '"google.colab" in sys.modules' in first and "pip install" in first, \
        f"{path.name}: the first code cell must be the Colab install guard (see toolchain.md section 5)"


def toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node: files.append(node["file"])
            for v in node.values(): walk(v)
        elif isinstance(node, list):
            for v in node: walk(v)
    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(Path(f).with_suffix("")) for f in files]


def test_toc_lists_every_notebook_and_only_existing_files():
    listed = toc_files()
    assert len(listed) == len(set(listed)), f"_toc.yml lists a file twice: {listed}"
    nbs = {f"nbs/{p.stem}" for p in NOTEBOOKS}
    assert not nbs - set(listed), f"notebooks missing from _toc.yml: {sorted(nbs - set(listed))}"
    stray = [f for f in listed if not any((REPO / f).with_suffix(s).exists() for s in (".ipynb", ".md"))]
    assert not stray, f"_toc.yml lists files that do not exist: {stray}"


def display_math_problems(text: str) -> list[str]:
    "Display-maths blocks ($$ ... $$) that do not stand in a paragraph of their own (MyST then reads $$ as inline maths)."
    lines, bad, inblock = text.split("\n"), [], False
    for i, line in enumerate(lines):
        s = line.strip()
        if not inblock and s.startswith("$$"):
            if i and lines[i - 1].strip(): bad.append(f"no blank line before: {s[:60]}")
            inblock = not (len(s) > 2 and s.endswith("$$"))
            closes_here = not inblock
        elif inblock and s.endswith("$$"): inblock, closes_here = False, True
        else: closes_here = False
        if closes_here and i + 1 < len(lines) and lines[i + 1].strip(): bad.append(f"no blank line after: {s[-60:]}")
    return bad


def test_display_math_check_catches_mid_paragraph_maths():
    assert display_math_problems("text:\n$$x=1$$\nmore") == ["no blank line before: $$x=1$$", "no blank line after: $$x=1$$"]
    assert display_math_problems("text:\n\n$$\nx=1\n$$\n\nmore") == []


def test_display_math_stands_alone(nb_path):
    bad = [p for c in load(nb_path)["cells"] if c["cell_type"] == "markdown" for p in display_math_problems(source(c))]
    assert not bad, f"{nb_path.name}: put display maths in its own paragraph (blank lines around $$ ... $$): {bad[:3]}"
