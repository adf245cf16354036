#!/usr/bin/env python3
"""Renumber the code cells of notebooks 1..n after `nbdev-clean`.

nbdev-clean sets every `execution_count` to null, and nbval then fails every cell that has
outputs ("Unrun reference cell has outputs"). This script gives code cells the counts 1..n (and
their `execute_result` outputs the same count) and writes the JSON exactly as nbdev does, so the
step is idempotent and diffs stay stable.

Usage: python .ci/nbcounts.py nbs/*.ipynb
"""
import json, sys
from pathlib import Path


def renumber(nb: dict) -> dict:
    "Number code cells 1..n in order; cells and execute_result outputs share the number."
    n = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code": continue
        n += 1
        cell["execution_count"] = n
        for out in cell.get("outputs", []):
            if out.get("output_type") == "execute_result": out["execution_count"] = n
    return nb


def dumps(nb: dict) -> str:
    "Serialise like nbdev (sorted keys, indent 1, UTF-8, trailing newline)."
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: python .ci/nbcounts.py NOTEBOOK.ipynb ...", file=sys.stderr); return 2
    for p in map(Path, paths):
        if not p.exists():
            print(f"nbcounts: {p} does not exist", file=sys.stderr); return 1
        old = p.read_text(encoding="utf-8")
        new = dumps(renumber(json.loads(old)))
        if new != old: p.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
