"""Which notebook outputs nbval compares in CI, and how many cells are only executed.

CI runs nbval with --nbval-lax: a cell's fresh output is compared with its stored one only where the cell asks for it
(the tag `nbval-check-output`, or a `# NBVAL_CHECK_OUTPUT` comment). The stored outputs of the chapters are those of their
full runs and CI executes the quick mode, so only outputs that depend neither on the mode nor on the machine can be
compared: shapes, parameter counts, closed-form checks, dataset statistics, printed configurations, seeded results.

    python .ci/nbval_outputs.py mark nbs/*.ipynb     # run nbval comparing every cell (quick mode, one thread, the CI's
                                                      # sanitizers); tag each cell whose stored output it reproduced,
                                                      # untag those it did not
    python .ci/nbval_outputs.py report nbs/*.ipynb   # CI: count compared and only-executed cells per notebook

`mark` runs with one thread (the hardware line differs from the machine's) and is run after a chapter's outputs are stored.
"""
from __future__ import annotations
import json, os, re, subprocess, sys, tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

TAG = "nbval-check-output"
TIMING = re.compile(r"\d+(\.\d+)?\s?(s|ms|sec|seconds|min)\b|/s\b|it/s|s/it")   # timings vary, and so does their padding: never compared


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def checked(cell: dict) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", []) or "# NBVAL_CHECK_OUTPUT" in "".join(cell["source"])


def has_output(cell: dict) -> bool:
    return any(o.get("output_type") != "stream" or o.get("name") == "stdout" for o in cell.get("outputs", []))


def output_text(cell: dict) -> str:
    return "".join("".join(o.get("text", [])) + "".join(o.get("data", {}).get("text/plain", [])) for o in cell.get("outputs", []))


def mark(paths: list[Path]) -> None:
    junit = Path(tempfile.mkdtemp()) / "nbval.xml"
    env = dict(os.environ, LVMKIT_QUICK="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                    "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", f"--junitxml={junit}", *map(str, paths)], env=env)
    passed = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        nb = tc.get("classname").replace("nbs.", "nbs/", 1)
        ok = tc.find("failure") is None and tc.find("error") is None and tc.find("skipped") is None
        passed.setdefault(nb, {})[int(tc.get("name").split()[-1])] = ok
    for p in paths:
        res = passed.get(str(p))
        if res is None: print(f"{p}: no results (not collected)"); continue
        nb = json.loads(p.read_text())
        added = removed = 0
        for i, c in enumerate(code_cells(nb)):
            tags = c.setdefault("metadata", {}).setdefault("tags", [])
            want = res.get(i, False) and has_output(c) and not TIMING.search(output_text(c))
            if want and TAG not in tags: tags.append(TAG); added += 1
            if not want and TAG in tags: tags.remove(TAG); removed += 1
            if not tags: del c["metadata"]["tags"]
        p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"{p}: +{added} -{removed} tags")


def report(paths: list[Path]) -> None:
    tot = dict(code=0, output=0, compared=0)
    print(f"{'notebook':<34} {'code cells':>10} {'with output':>11} {'compared':>9} {'executed only':>13}")
    for p in paths:
        cells = code_cells(json.loads(p.read_text()))
        n_out = sum(has_output(c) for c in cells)
        n_cmp = sum(checked(c) for c in cells)
        tot["code"] += len(cells); tot["output"] += n_out; tot["compared"] += n_cmp
        print(f"{p.name:<34} {len(cells):>10} {n_out:>11} {n_cmp:>9} {len(cells) - n_cmp:>13}")
    print(f"{'all':<34} {tot['code']:>10} {tot['output']:>11} {tot['compared']:>9} {tot['code'] - tot['compared']:>13}")


if __name__ == "__main__":
    cmd, *files = sys.argv[1:]
    {"mark": mark, "report": report}[cmd]([Path(f) for f in files])
