"""Stale stored outputs fail CI: every code cell's stored output carries a stamp of the source that produced it.

The book shows the outputs of full-mode runs, which CI never re-executes (it runs the quick mode). So that an edit to a cell cannot
leave the output of the old code on the page, each code cell with outputs carries `metadata.lvmkit.source`, the SHA-256 (first 16 hex
digits) of the cell's source when the notebook was executed. `check` fails on any cell whose stored outputs have no stamp or a stamp of
another source: re-execute the notebook (`python .ci/execute.py nbs/X.ipynb`, which stamps), or, for an edit that cannot change the
output (a comment, a rename), re-stamp that notebook after checking the output by eye.

    python .ci/output_stamps.py check nbs/*.ipynb        # CI: list every code cell whose stored output is older than its source
    python .ci/output_stamps.py stamp nbs/X.ipynb        # after executing X (done by .ci/execute.py), or after an output-neutral edit

A cell's output also comes from code outside it, so the stamp also holds `metadata.lvmkit.uses`, a digest per piece of code the cell
calls that draws or defines what it shows: every function or class defined in an earlier cell of the notebook that the cell names
(and, transitively, those that they name), and every lvmkit function it names that draws (its source uses matplotlib, `make_grid`,
`save_image` or `imshow`: `show_images`, `image_grid`, `save_samples`) with the lvmkit functions those call. Editing a plotting helper
two cells up, or `lvmkit.experiments.show_images`, makes the figures drawn with it stale, by name.

A cell that reads the book's records names them by a literal path ("../book/results/vae-mlp.json"): each such file's content is
in the stamp too, so when an earlier chapter is run again and its record changes, the later chapters' tables that show it are stale.
Those cells read nothing else and run alone: `python .ci/execute.py NB --cell ID` executes just that cell in a fresh kernel and
stamps it.

What it does not see: a change in the library's models, training or evaluation code (a different number, not a different drawing).
Those outputs come from recorded runs, whose records carry the commit; CI's nbval run executes every cell in quick mode, and compares
the outputs that do not depend on the mode (`.ci/nbval_outputs.py`).
"""
from __future__ import annotations
import ast, hashlib, importlib, inspect, json, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's lvmkit, whichever environment runs the check
DRAWS = ("matplotlib", "make_grid", "save_image", "imshow")     # an lvmkit function whose source holds one of these draws what a cell shows


def digest(cell: dict) -> str:
    return hashlib.sha256("".join(cell["source"]).encode()).hexdigest()[:16]


def _short(text: str) -> str: return hashlib.sha256(text.encode()).hexdigest()[:12]


def _parse(src: str) -> ast.Module | None:
    "The cell's code without IPython's magics and shell lines; None if it is not Python."
    try: return ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
    except SyntaxError: return None


RECORDS = "book/results/"   # a string constant naming a file under it, ending in .json, is a record the cell reads


def _records(tree: ast.AST, folder: Path | None) -> dict[str, str]:
    "{path as written: digest of the file's content ('missing' if absent)} of every record path the cell names literally."
    out = {}
    for n in ast.walk(tree):
        if folder is not None and isinstance(n, ast.Constant) and isinstance(n.value, str) and RECORDS in n.value and n.value.endswith(".json"):
            f = folder / n.value
            out[n.value] = _short(f.read_text()) if f.is_file() else "missing"
    return out


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _lvmkit_closure(obj, seen: dict) -> None:
    "obj's source and, transitively, the source of every lvmkit function it calls by a module-level name, into `seen` (qualified name -> digest)."
    key = f"{obj.__module__}.{obj.__qualname__}"
    if key in seen: return
    seen[key] = _short(inspect.getsource(obj))
    for name in obj.__code__.co_names:
        f = obj.__globals__.get(name)
        if inspect.isfunction(f) and f.__module__.startswith("lvmkit"): _lvmkit_closure(f, seen)


def uses(nb: dict, folder: Path | None = None) -> list[dict]:
    """For each cell, {name: digest} of the code it calls that is defined outside it, and of the records it names, read from the
    notebook's `folder` (see the module's docstring)."""
    defs: dict[str, tuple[str, set[str]]] = {}         # name -> (its source, the names it uses), the latest definition so far
    imported: dict[str, tuple[str, str]] = {}          # local name -> (lvmkit module, name)
    out = []
    for c in nb["cells"]:
        if c["cell_type"] != "code": out.append({}); continue
        src = "".join(c["source"]); tree = _parse(src); found: dict[str, str] = {}
        if tree is not None:
            todo, seen = sorted(_names(tree)), set()
            while todo:                                 # earlier cells' definitions, transitively
                n = todo.pop()
                if n in seen or n not in defs: continue
                seen.add(n); found[n] = _short(defs[n][0]); todo += sorted(defs[n][1] - seen)
            for n in sorted(_names(tree) | {m for d in seen for m in defs[d][1]}):
                if n in imported and n not in defs:
                    mod, attr = imported[n]
                    try: obj = getattr(importlib.import_module(mod), attr)
                    except (ImportError, AttributeError): continue
                    if inspect.isfunction(obj) and any(w in inspect.getsource(obj) for w in DRAWS): _lvmkit_closure(obj, found)
            found.update(_records(tree, folder))
            for node in tree.body:                      # this cell's own definitions and imports, for the cells after it
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defs[node.name] = (ast.get_source_segment(src, node) or node.name, _names(node)); imported.pop(node.name, None)
                elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lvmkit" and not node.level:
                    for a in node.names: imported[a.asname or a.name] = (node.module, a.name); defs.pop(a.asname or a.name, None)
        out.append(found)
    return out


def stamp(path: Path, only: set[str] | None = None) -> int:
    """Stamp every code cell that has outputs with its source's digest, and drop the stamp of cells without outputs; returns the cells stamped.
    `only`: the ids of the cells to stamp (the cells just executed); the others keep their stamps."""
    nb = json.loads(path.read_text())
    n = 0
    for c, u in zip(nb["cells"], uses(nb, path.parent)):
        if c["cell_type"] != "code" or (only is not None and c.get("id") not in only): continue
        meta = c.setdefault("metadata", {})
        if c.get("outputs"):
            m = meta.setdefault("lvmkit", {}); m["source"] = digest(c); n += 1
            if u: m["uses"] = u
            else: m.pop("uses", None)
        elif "lvmkit" in meta:
            meta["lvmkit"].pop("source", None); meta["lvmkit"].pop("uses", None)
            if not meta["lvmkit"]: del meta["lvmkit"]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return n


def stale(path: Path) -> list[str]:
    "One line per code cell whose stored outputs do not come from its current source."
    nb, out = json.loads(path.read_text()), []
    for i, (c, now) in enumerate(zip(nb["cells"], uses(nb, path.parent))):
        if c["cell_type"] != "code" or not c.get("outputs"): continue
        m = c.get("metadata", {}).get("lvmkit", {})
        s, then = m.get("source"), m.get("uses", {})
        changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if s != digest(c) or changed:
            first = next((l.strip() for l in "".join(c["source"]).splitlines() if l.strip()), "")[:70]
            reads = [k for k in changed if RECORDS in k]
            why = ("no stamp" if s is None else "the source changed after the outputs were stored" if s != digest(c) else
                   f"code it calls changed after the outputs were stored ({', '.join(changed[:4])})" if not reads else
                   f"a record it reads changed after the outputs were stored ({', '.join(reads[:4])}): python .ci/execute.py {path} --cell {c.get('id')}")
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
    print(f"output stamps: all {n} code cells with stored outputs in {len(paths)} notebooks match their sources and the code they call")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
