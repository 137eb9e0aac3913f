"""The graded exercises: nbgrader makes student versions that fail the autograded tests, the lecture
versions pass them, and no solution leaks into what students receive."""

import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbgrader.utils import determine_grade, is_grade

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import assignments  # noqa: E402

GRADED = assignments.graded_notebooks()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    paths = assignments.release(course)
    return course, {p.name: p for p in paths}


def exercise_cells(nb):
    """The setup cell (imports) and the nbgrader cells: graded exercises are self-contained."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return [code[0]] + [c for c in nb.cells if assignments.is_graded(c)]


def run_exercises(nb, workdir):
    reduced = nbformat.v4.new_notebook(metadata=nb.metadata, cells=exercise_cells(nb))
    NotebookClient(reduced, timeout=300, allow_errors=True, resources={"metadata": {"path": str(workdir)}}).execute()
    return {c.metadata.nbgrader["grade_id"]: determine_grade(c) for c in reduced.cells if is_grade(c)}


def test_every_notebook_has_graded_exercises():
    assert len(GRADED) >= 2
    for path in GRADED:
        nb = nbformat.read(path, 4)
        solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        # at most 4, or 5 for notebook 10, whose five parts (windows, dense top-k, BM25, fusion, grounding) are
        # each a short function a student writes; merging two would make one exercise test two ideas
        most = 5 if path.name.startswith("10_") else 4
        assert 2 <= len(solutions) <= most and len(tests) >= len(solutions), path.name


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_student_version_hides_solutions_and_hidden_tests(path, released):
    _, student = released
    source = nbformat.read(path, 4)
    released_nb = nbformat.read(student[path.name], 4)
    text = "\n".join(c.source for c in released_nb.cells)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert text.count("raise NotImplementedError()") >= sum(
        1 for c in source.cells if c.metadata.get("nbgrader", {}).get("solution"))
    region = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", flags=re.S)
    # what the lecture shows outside the graded regions may appear; no line of a region may
    public = "\n".join(region.sub("", c.source) for c in source.cells)
    for cell in source.cells:
        for _, hidden in region.findall(cell.source):
            for line in hidden.splitlines():
                line = line.strip()
                if len(line) > 12 and line not in public:
                    assert line not in text, f"{path.name} leaks: {line}"
    assert all(not c.get("outputs") for c in released_nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", GRADED, ids=lambda p: p.stem)
def test_solutions_pass_and_student_versions_fail(path, released, tmp_path):
    _, student = released
    solved = run_exercises(nbformat.read(path, 4), tmp_path)
    unsolved = run_exercises(nbformat.read(student[path.name], 4), tmp_path)
    assert solved and all(score == max_score for score, max_score in solved.values()), solved
    assert all(score == 0 for score, _ in unsolved.values()), unsolved


def test_autograde_scores_each_exercise(released):
    course, student = released
    name = GRADED[0].stem
    for who, notebook in [("solved", GRADED[0]), ("untouched", student[GRADED[0].name])]:
        target = course / "submitted" / who / name
        target.mkdir(parents=True)
        shutil.copy(notebook, target / f"{name}.ipynb")
    rows = assignments.autograde(course)
    scores = {(r["student"], r["exercise"]): (r["score"], r["max_score"]) for r in rows}
    tests = [c.metadata.nbgrader["grade_id"] for c in nbformat.read(GRADED[0], 4).cells if is_grade(c)]
    for test in tests:
        score, max_score = scores[("solved", test)]
        assert score == max_score > 0
        assert scores[("untouched", test)][0] == 0
    assert (course / "grades.csv").read_text().startswith("student,notebook,exercise,score,max_score")
