"""Execute notebooks in place, as the book stores them, and stamp their outputs (.ci/output_stamps.py).

    LVMKIT_DATA=../shared/data python .ci/execute.py nbs/13_lvae.ipynb [...]   # full mode unless LVMKIT_QUICK=1

Runs from the notebooks' folder (nbs/), like Jupyter and nbval, with no cell timeout. Then clean the notebooks and check the
modules: nbdev-clean && python .ci/nbcounts.py nbs/*.ipynb && nbdev-export, and python .ci/nbval_outputs.py mark on the notebook.
"""
from __future__ import annotations
import sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parent))
from output_stamps import stamp  # noqa: E402

for src in map(Path, sys.argv[1:]):
    nb = nbformat.read(src, as_version=4)
    t = time.time()
    NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}).execute()
    nbformat.write(nb, src)           # written only after a complete run: a failed cell leaves the stored notebook as it was
    print(f"executed {src} in {time.time() - t:.0f} s; {stamp(src)} cells stamped")
