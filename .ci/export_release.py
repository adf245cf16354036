"""Export the weights of every run whose full-mode record the book prints, for a release (RELEASING.md, step 4).

    python .ci/export_release.py [--runs runs] [--results book/results] [--out release]

For each registered experiment with a full-mode record in book/results, exports runs/NAME (and, for a two-stage model, the whole
model of its second record as NAME-STAGE) with `lvmkit.pretrained.export_pretrained`. Lists the records whose run folder is missing
(their runs must be trained again before a release can carry them) and exits 1 if there are any.
"""
from __future__ import annotations
import argparse, json, sys
from pathlib import Path
import lvmkit.recipes  # noqa: F401  (registers the book's experiments)
from lvmkit.experiments import EXPERIMENTS
from lvmkit.pretrained import export_pretrained

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--runs", default="runs"); p.add_argument("--results", default="book/results"); p.add_argument("--out", default="release")
a = p.parse_args()
full = {r["name"] for f in Path(a.results).glob("*.json") for r in [json.loads(f.read_text())] if r.get("mode") == "full"}
done, missing = [], []
for exp in EXPERIMENTS.values():
    names = [exp.name] + ([f"{exp.name}-{exp.prior.name}"] if exp.prior is not None else [])
    for name in (n for n in names if n in full):
        run = Path(a.runs) / exp.name
        if not run.is_dir(): missing.append(f"{name}: no run folder {run}"); continue
        try: export_pretrained(run, a.out, name=name); done.append(name)
        except (OSError, ValueError) as e: missing.append(f"{name}: {e}")
covered = set(done) | {m.split(":")[0] for m in missing}
base = lambda n: n.rsplit("-iw", 1)[0] if n.rsplit("-iw", 1)[-1].isdigit() else n      # name-iwK: a second record of the run name
missing += [f"{n}: no registered experiment of that name; export its run folder by hand (lvmkit export runs/NAME --out {a.out})"
            for n in sorted({base(n) for n in full} - covered)]
print(f"exported {len(done)} to {a.out}: {', '.join(sorted(done)) or 'none'}")
if missing: print("not exported (train these runs again, or restore their folders):\n  " + "\n  ".join(sorted(missing)), file=sys.stderr)
sys.exit(1 if missing else 0)
