"The course-assignment tools: the stripper's marker handling, student copies without leaks, and a grader that survives hostile submissions."
import json, os
from pathlib import Path
import pytest
from lvmkit.assign import (MarkerError, strip_regions, student_notebook, leaked_lines, tasks, grade, load_notebook, write_student_copies,
                           BEGIN_SOLUTION, END_SOLUTION, CODE_STUB)
from lvmkit.cli import main

ASSIGNMENTS = Path(__file__).resolve().parent.parent / "assignments"


def cell(kind, src, **nbg):
    c = {"cell_type": kind, "metadata": {"nbgrader": dict(nbg, schema_version=3)} if nbg else {}, "source": src}
    if kind == "code": c.update(outputs=[], execution_count=None)
    return c

def assignment(solution="def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION", test_points=2):
    return {"cells": [
        cell("markdown", "# Demo"),
        cell("code", "import math", locked=True, grade=False, solution=False, grade_id="setup"),
        cell("code", solution, solution=True, grade=False, locked=False, grade_id="double"),
        cell("code", "assert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(-3) == -6\n### END HIDDEN TESTS", grade=True,
             solution=False, locked=True, grade_id="test_double", points=test_points),
        cell("code", "assert math.isclose(double(0.5), 1.0)", grade=True, solution=False, locked=True, grade_id="test_half", points=1),
    ], "metadata": {"lvmkit": {"assignment": "demo"}}, "nbformat": 4, "nbformat_minor": 5}

def write(tmp_path, name, nb):
    p = tmp_path / f"{name}.ipynb"
    p.write_text(json.dumps(nb))
    return p


@pytest.mark.parametrize("text,match", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "has no"),
    ("def f():\n    return 1\n    ### END SOLUTION", "without"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n    ### END SOLUTION", "nested"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "top level"),
])
def test_marker_errors_name_the_cell_and_line(text, match):
    with pytest.raises(MarkerError, match=match) as e:
        strip_regions(text, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, "cell 7 ('kl')", top_level_ok=False)
    assert "cell 7 ('kl')" in str(e.value) and "line" in str(e.value)


def test_stub_keeps_indentation_and_surrounding_code():
    out = strip_regions("def f(x):\n    y = x\n    if y:\n        ### BEGIN SOLUTION\n        return 1\n        ### END SOLUTION\n    return 0",
                        BEGIN_SOLUTION, END_SOLUTION, CODE_STUB)
    assert out == "def f(x):\n    y = x\n    if y:\n        raise NotImplementedError()\n    return 0"
    compile(out, "<stub>", "exec")


def test_student_copy_has_nothing_of_the_solution(tmp_path):
    nb = assignment("def double(x):\n    ### BEGIN SOLUTION\n    secret_value = 2\n    return secret_value * x\n    ### END SOLUTION")
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "secret_value = 2\n"}]
    nb["cells"][2]["metadata"]["solution_note"] = "secret_value"
    nb["metadata"]["hint"] = "return secret_value * x"
    s = student_notebook(nb, "demo")
    text = json.dumps(s)
    assert "secret_value" not in text and "-3" not in text and "HIDDEN" not in text
    assert s["cells"][2]["source"].endswith(CODE_STUB) and s["cells"][2]["outputs"] == []
    assert s["metadata"]["lvmkit"]["assignment"] == "demo" and not leaked_lines(s, nb)
    s["cells"][2]["source"] += "\nreturn secret_value * x"                                   # the checker sees a leak
    assert leaked_lines(s, nb) == ["return secret_value * x"]


def test_graded_cells_need_ids_and_points():
    nb = assignment(test_points=0)
    with pytest.raises(MarkerError, match="points"): tasks(nb)
    nb = assignment(); nb["cells"][4]["metadata"]["nbgrader"]["grade_id"] = "test_double"
    with pytest.raises(MarkerError, match="more than one"): tasks(nb)


def test_not_a_notebook(tmp_path):
    (tmp_path / "bad.ipynb").write_text("{ this is not json")
    with pytest.raises(ValueError, match="not JSON"): load_notebook(tmp_path / "bad.ipynb")
    (tmp_path / "list.ipynb").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a notebook"): load_notebook(tmp_path / "list.ipynb")
    assert main(["assign", "grade", str(tmp_path / "bad.ipynb"), "--source", str(tmp_path / "bad.ipynb")]) == 2


def test_solution_full_marks_and_student_copy_zero(tmp_path):
    src = write(tmp_path, "demo", assignment())
    full = grade(src, src, timeout_s=60)
    assert (full.score, full.max_score, full.status) == (3, 3, "completed") and not full.errors
    stu = write(tmp_path, "student", student_notebook(assignment(), "demo"))
    zero = grade(stu, src, timeout_s=60)
    assert zero.score == 0 and not zero.errors and all("NotImplementedError" in t.message for t in zero.tasks)


def test_hostile_submission(tmp_path):
    "Deletes files, removes the visible checks, redefines the checks' tools and the checks themselves, and gets no points."
    src = write(tmp_path, "demo", assignment())
    keep = tmp_path / "teacher-file.txt"; keep.write_text("do not delete")
    nb = student_notebook(assignment(), "demo")
    nb["cells"][2]["source"] = (
        "import os, builtins, math, glob\n"
        f"os.remove({str(keep)!r})\n"                                            # the grader's own files are read before the run
        f"os.remove({str(src)!r})\n"
        "for f in glob.glob('*'): os.remove(f)\n"
        "math.isclose = lambda *a, **k: True\n"
        "builtins.AssertionError = type('Nothing', (Exception,), {})\n"
        "def double(x):\n    return 0\n")
    nb["cells"][3]["source"] = "pass"                                            # the student 'removes' the visible check
    nb["cells"].append(cell("code", "def test_double(): return True"))
    sub = write(tmp_path, "hostile", nb)
    r = grade(sub, src, timeout_s=60)
    assert r.status == "completed" and r.score == 0, r.text()
    assert not keep.exists()                                                    # other files of the user: not protected (documented)
    assert src.exists() and json.loads(src.read_text()) == assignment()         # the teacher's notebook: put back
    assert str(src.resolve()) in r.tampered and "changed the grader's files" in r.tasks[0].message
    assert {t.id: t.passed for t in r.tasks} == {"test_double": False, "test_half": False}


def test_a_submission_that_patches_the_grader_scores_zero_and_the_grader_is_restored(tmp_path):
    import lvmkit.assign
    src = write(tmp_path, "demo", assignment())
    target = Path(lvmkit.assign.__file__).resolve()
    original = target.read_bytes()
    nb = student_notebook(assignment(), "demo")
    nb["cells"][2]["source"] = (f"def double(x):\n    return 2 * x\nopen({str(target)!r}, 'a').write('\\n# patched by a submission\\n')")
    r = grade(write(tmp_path, "patch", nb), src, timeout_s=60)
    assert target.read_bytes() == original and r.score == 0 and str(target) in r.tampered, r.text()


def test_a_submission_that_hangs_floods_or_exits_still_gets_a_report(tmp_path):
    src = write(tmp_path, "demo", assignment())
    nb = student_notebook(assignment(), "demo")
    nb["cells"][2]["source"] = "def double(x):\n    return 2 * x\nwhile True:\n    print('y' * 10_000)"
    r = grade(write(tmp_path, "hang", nb), src, timeout_s=30, cell_timeout_s=2)
    assert r.status == "completed" and r.score == 3 and "longer than 2 s" in r.errors[0]["error"]     # the loop is cut, the function still works
    nb["cells"][2]["source"] = "def double(x):\n    return 2 * x\nimport signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass"
    r = grade(write(tmp_path, "hang2", nb), src, timeout_s=8, cell_timeout_s=2)
    assert r.status == "timed out" and r.score == 0 and "not reached" in r.tasks[0].message
    nb["cells"][2]["source"] = "import os\nos._exit(3)"
    r = grade(write(tmp_path, "exit", nb), src, timeout_s=30)
    assert r.status == "crashed" and r.score == 0 and "not reached" in r.tasks[0].message


def test_cli_student_and_grade(tmp_path, capsys):
    folder = tmp_path / "assignments"; folder.mkdir()
    write(folder, "demo", assignment())
    assert main(["assign", "student", str(tmp_path / "out"), "--source-dir", str(folder)]) == 0
    copy = tmp_path / "out" / "demo.ipynb"
    assert copy.exists() and "return 2 * x" not in copy.read_text()
    with pytest.raises(ValueError, match="overwritten"): write_student_copies(folder, None, folder)
    assert main(["assign", "grade", str(copy), "--source-dir", str(folder), "--out", str(tmp_path / "r.json")]) == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["score"] == 0 and rep["max_score"] == 3 and len(rep["tasks"]) == 2


def test_every_assignment_is_valid_and_leak_free():
    paths = sorted(ASSIGNMENTS.glob("*.ipynb"))
    assert paths, "no assignments found"
    for p in paths:
        nb = load_notebook(p)
        assert nb["metadata"]["lvmkit"]["assignment"] == p.stem
        ts = tasks(nb)
        assert 3 <= len(ts) <= 6, f"{p.name}: {len(ts)} graded tasks (3 to 6 per chapter)"
        s = student_notebook(nb, p.stem)
        assert not leaked_lines(s, nb), p.name
