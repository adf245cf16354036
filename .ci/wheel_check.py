"""pip install lvmkit as a user meets it: run with the python of a fresh virtual environment into which only the built wheel
(and its dependencies) was installed, from a temporary folder outside any checkout.

    python .ci/wheel_check.py README.md      (cwd: an empty temporary folder; LVMKIT_DATA set)

It runs `lvmkit --version`, `lvmkit list`, `lvmkit train vae --quick`, `lvmkit eval` and the README's Python snippet (with its
20 000 steps and K=1000 cut to 50 and 10, to take seconds), and checks that lvmkit was imported from the environment, not a
checkout, and that nothing was written inside the installed package.
"""
import json, os, re, subprocess, sys
from pathlib import Path

readme = Path(sys.argv[1]).resolve()
here = Path.cwd()
bindir = Path(sys.executable).parent
import lvmkit                                                                    # noqa: E402  (the installed copy)
pkg = Path(lvmkit.__file__).parent
assert "site-packages" in pkg.parts, f"lvmkit was imported from {pkg}, not from the environment"
assert not (here / "lvmkit").exists() and not (here / "pyproject.toml").exists(), "run this outside any checkout"


def files() -> set[str]:
    return {str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


before = files()
def run(*args: str) -> str:
    r = subprocess.run([str(bindir / "lvmkit"), *args], capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"lvmkit {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout

print(run("--version").strip())
assert "vae-mlp" in json.loads(run("list"))["experiments"]
out = json.loads(run("train", "vae", "--quick", "--out", str(here / "runs" / "vae"), "--no-progress"))
assert out["finished"] and (here / "runs" / "vae" / "best.pt").is_file()
ev = json.loads(run("eval", str(here / "runs" / "vae" / "best.pt"), "--iw", "10", "--n", "100", "--no-progress"))
assert ev["n"] == 100 and ev["k"] == 10
print(f"train vae --quick: {out['steps']} steps; eval IW-10 on 100 test images: {ev['nll']:.2f} nats")

snippet = re.search(r"## Using the package\s+```python\n(.*?)```", readme.read_text(), re.S).group(1)
short = snippet.replace("steps=20_000", "steps=50").replace("warmup_steps=5_000", "warmup_steps=10").replace("k=1000", "k=10")
assert short != snippet, "the README snippet changed: update .ci/wheel_check.py"
r = subprocess.run([sys.executable, "-c", short], capture_output=True, text=True, cwd=here)
if r.returncode: raise SystemExit(f"the README's Python snippet failed:\n{r.stderr[-3000:]}")
print("README snippet (50 steps, K=10):", r.stdout.strip().splitlines()[-1][:200])
written = files() - before
assert not written, f"files written inside the installed package: {sorted(written)[:5]}"
print(f"OK: the wheel works outside the checkout ({pkg})")
