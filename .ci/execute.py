"""Execute notebooks in place, as the book stores them, and stamp their outputs (.ci/output_stamps.py).

    LVMKIT_DATA=../shared/data python .ci/execute.py nbs/13_lvae.ipynb [...]   # full mode unless LVMKIT_QUICK=1
    python .ci/execute.py nbs/12_vlae.ipynb --cell ID [--cell ID2]              # only these cells, each alone in a fresh kernel

Runs from the notebooks' folder (nbs/), like Jupyter and nbval, with no cell timeout. Then clean the notebooks and check the
modules: nbdev-clean && python .ci/nbcounts.py nbs/*.ipynb && nbdev-export, and python .ci/nbval_outputs.py mark on the notebook.
`--cell` is for the cells that read nothing but the book's records (the earlier chapters' rows of a chapter's tables): they
import what they use and run without the cells above them; only they are stamped. A cell that needs the cells above fails (its
error is printed) and the notebook is left as it was.
"""
from __future__ import annotations
import argparse, copy, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parent))
from output_stamps import stamp  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("notebooks", nargs="+", type=Path)
ap.add_argument("--cell", action="append", metavar="ID", help="execute only the code cell with this id (repeatable; one notebook)")
a = ap.parse_args()
if a.cell and len(a.notebooks) != 1: ap.error("--cell needs exactly one notebook")

for src in a.notebooks:
    nb = nbformat.read(src, as_version=4)
    t = time.time()
    if a.cell:
        cells = {c.get("id"): c for c in nb.cells if c.cell_type == "code"}
        if (unknown := [i for i in a.cell if i not in cells]): sys.exit(f"{src}: no code cell with id {', '.join(unknown)}")
        for i in a.cell:
            one = copy.deepcopy(nb); one.cells = [copy.deepcopy(cells[i])]
            NotebookClient(one, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}).execute()
            cells[i].outputs = one.cells[0].outputs
    else:
        NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}).execute()
    nbformat.write(nb, src)           # written only after a complete run: a failed cell leaves the stored notebook as it was
    print(f"executed {src}{' cells ' + ', '.join(a.cell) if a.cell else ''} in {time.time() - t:.0f} s; "
          f"{stamp(src, set(a.cell) if a.cell else None)} cells stamped")
