"""Stale stored outputs fail CI: every code cell's stored output carries a stamp of the source that produced it.

The book shows the outputs of full-mode runs, which CI never re-executes (it runs the quick mode). So that an edit to a cell cannot
leave the output of the old code on the page, each code cell with outputs carries `metadata.lvmkit.source`, the SHA-256 (first 16 hex
digits) of the cell's source when the notebook was executed. `check` fails on any cell whose stored outputs have no stamp or a stamp of
another source: re-execute the notebook (`python .ci/execute.py nbs/X.ipynb`, which stamps), or, for an edit that cannot change the
output (a comment, a rename), re-stamp that notebook after checking the output by eye.

    python .ci/output_stamps.py check nbs/*.ipynb        # CI: list every code cell whose stored output is older than its source
    python .ci/output_stamps.py stamp nbs/X.ipynb        # after executing X (done by .ci/execute.py), or after an output-neutral edit

What it does not see: a change in library code that a cell calls (the cell's source is unchanged). CI's nbval run executes every cell
in quick mode, and compares the outputs that do not depend on the mode (`.ci/nbval_outputs.py`).
"""
from __future__ import annotations
import hashlib, json, sys
from pathlib import Path


def digest(cell: dict) -> str:
    return hashlib.sha256("".join(cell["source"]).encode()).hexdigest()[:16]


def stamp(path: Path) -> int:
    "Stamp every code cell that has outputs with its source's digest, and drop the stamp of cells without outputs; returns the cells stamped."
    nb = json.loads(path.read_text())
    n = 0
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        meta = c.setdefault("metadata", {})
        if c.get("outputs"): meta.setdefault("lvmkit", {})["source"] = digest(c); n += 1
        elif "lvmkit" in meta:
            meta["lvmkit"].pop("source", None)
            if not meta["lvmkit"]: del meta["lvmkit"]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return n


def stale(path: Path) -> list[str]:
    "One line per code cell whose stored outputs do not come from its current source."
    nb, out = json.loads(path.read_text()), []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code" or not c.get("outputs"): continue
        s = c.get("metadata", {}).get("lvmkit", {}).get("source")
        if s != digest(c):
            first = next((l.strip() for l in "".join(c["source"]).splitlines() if l.strip()), "")[:70]
            why = "no stamp" if s is None else "the source changed after the outputs were stored"
            out.append(f"{path} cell {i} (id {c.get('id')}): {why}: {first}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("stamp", "check"): print(__doc__); return 2
    paths = [Path(p) for p in argv[1:]]
    if argv[0] == "stamp":
        for p in paths: print(f"{p}: {stamp(p)} cells stamped")
        return 0
    bad = [line for p in paths for line in stale(p)]
    n = sum(1 for p in paths for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code" and c.get("outputs"))
    if bad:
        print("\n".join(bad))
        print(f"{len(bad)} of {n} code cells with stored outputs are stale. Re-execute the notebook (python .ci/execute.py NB), "
              "or, after checking that an edit cannot change the output, re-stamp it (python .ci/output_stamps.py stamp NB).")
        return 1
    print(f"output stamps: all {n} code cells with stored outputs in {len(paths)} notebooks match their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
