"The book's publishing workflow: valid against GitHub's workflow schema, and it builds the book as CI does and deploys it to Pages."
import re, shutil, subprocess
from pathlib import Path
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WF = ROOT / ".github" / "workflows" / "book.yml"


def test_schema_valid():
    exe = shutil.which("check-jsonschema")
    if exe is None: pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]' installs it)")
    r = subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", str(WF)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_builds_like_ci_and_deploys_to_pages():
    wf = yaml.safe_load(WF.read_text())
    on = wf.get("on", wf.get(True))                                            # YAML 1.1 reads the key `on` as True
    branch = re.search(r'^BRANCH = "([^"]+)"', (ROOT / "lvmkit" / "__init__.py").read_text(), re.M).group(1)
    assert on["push"]["branches"] == [branch]
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    build = wf["jobs"]["build"]["steps"]
    runs = " ".join(s.get("run", "") for s in build)
    ci_build = next(l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("jupyter-book build"))
    assert ci_build in runs and 'pip install -e ".[dev]"' in runs
    upload = next(s for s in build if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_build/html"
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages@") for s in deploy["steps"])
