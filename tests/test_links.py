"One setting names the repository: every public link of the project follows REPOSITORY and BRANCH of lvmkit/__init__.py."
import re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "nbs").glob("1[0-9]_*.ipynb"))]
FILES = ["lvmkit/__init__.py", "pyproject.toml", "_config.yml", "README.md", ".github/workflows/book.yml", *CHAPTERS]


def links(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "links.py"), "--root", str(root), *args], capture_output=True, text=True)


def test_the_repository_follows_its_setting():
    r = links(ROOT, "--check")
    assert r.returncode == 0, r.stderr


def test_changing_the_setting_is_all_it_takes(tmp_path):
    for f in FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy(ROOT / f, tmp_path / f)
    init = tmp_path / "lvmkit" / "__init__.py"
    old = re.search(r'^REPOSITORY = "([^"]+)"', init.read_text(), re.M).group(1)
    init.write_text(init.read_text().replace(f'REPOSITORY = "{old}"', 'REPOSITORY = "https://github.com/Teach-Org/lvm-book"')
                    .replace('BRANCH = "main"', 'BRANCH = "published"'))
    r = links(tmp_path, "--check")
    assert r.returncode == 1 and "pyproject.toml" in r.stderr and "nbs/10_vae.ipynb" in r.stderr
    assert links(tmp_path, "--write").returncode == 0 and links(tmp_path, "--check").returncode == 0
    for f in FILES[1:]:
        assert old not in (tmp_path / f).read_text(), f"{f} still names {old}"
    cfg = (tmp_path / "_config.yml").read_text()
    assert "url: https://github.com/Teach-Org/lvm-book" in cfg and "branch: published" in cfg
    py = (tmp_path / "pyproject.toml").read_text()
    assert 'Repository = "https://github.com/Teach-Org/lvm-book"' in py and 'Homepage = "https://teach-org.github.io/lvm-book/"' in py
    assert "colab.research.google.com/github/Teach-Org/lvm-book/blob/published/nbs/10_vae.ipynb" in (tmp_path / "README.md").read_text()
    assert "branches: [published]" in (tmp_path / ".github" / "workflows" / "book.yml").read_text()   # the book is published from the branch
    assert CHAPTERS
    for nb in CHAPTERS:                                    # every chapter installs the release it was written for
        assert "lvmkit @ git+https://github.com/Teach-Org/lvm-book@v" in (tmp_path / nb).read_text(), nb
