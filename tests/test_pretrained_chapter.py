"""A chapter with PRETRAINED: Chapter 1 executed (quick mode) against a local release on 127.0.0.1, as a reader who skips the training runs it.
The release holds weights exported from quick runs under the full runs' names (a test of the path, not of the book's weights)."""
import json
from pathlib import Path
import nbformat, pytest
from nbclient import NotebookClient
from test_pretrained import Server
import lvmkit.recipes  # noqa: F401  (registers the experiments)
from lvmkit.experiments import get_experiment, run_experiment
from lvmkit.pretrained import export_pretrained

NB = Path(__file__).parent.parent / "nbs" / "10_vae.ipynb"
CH1_RUNS = ("vae-seed-meanfield", "vae-mlp", "vae-latent2")

def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))

def test_chapter_1_from_released_weights_trains_nothing_and_draws_every_figure(tmp_path, monkeypatch):
    for name in CH1_RUNS:                                           # the release: one file per run the chapter shows
        run_experiment(get_experiment(name), quick_mode=True, run_dir=tmp_path / "trained" / name, progress=False, device="cpu")
        export_pretrained(tmp_path / "trained" / name, tmp_path / "release", name=name, checkpoint="best.pt")
    srv = Server(tmp_path / "release")
    for k, v in dict(LVMKIT_QUICK="1", LVMKIT_PRETRAINED="1", LVMKIT_PRETRAINED_URL=srv.url, LVMKIT_CACHE=str(tmp_path / "cache")).items():
        monkeypatch.setenv(k, v)
    stored = nbformat.read(NB, as_version=4)
    nb = nbformat.read(NB, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(                       # the reader's check: every run came from the release, none was trained
        "import json\n"
        f"assert sorted(summaries) == {sorted(CH1_RUNS)!r}, sorted(summaries)\n"
        "for n, s in summaries.items():\n"
        "    assert s['pretrained']['name'] == n and (RUNS / n / 'pretrained.json').is_file(), s\n"
        "    assert not any((RUNS / n).glob('last.pt')), 'a training checkpoint was written'\n"
        "print(json.dumps({n: s['pretrained']['sha256'][:12] for n, s in summaries.items()}))"))
    try: NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    finally: srv.stop()
    served = json.loads(nb.cells[-1].outputs[0]["text"])
    assert sorted(served) == sorted(CH1_RUNS)
    missing = [i for i, (a, b) in enumerate(zip(stored.cells, nb.cells)) if a.cell_type == "code" and _images(a) and not _images(b)]
    assert not missing, f"cells that drew a figure in the book but not from the released weights: {missing}"
