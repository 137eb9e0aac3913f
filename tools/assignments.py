"""Graded assignments with nbgrader: student versions of the notebooks, and autograding.

The notebooks in ``notebooks/`` are the lecture versions, solutions included. Their graded exercises
are nbgrader cells: a solution cell (code between ``### BEGIN SOLUTION`` and ``### END SOLUTION``)
followed by an autograded test cell (visible asserts, and hidden ones between
``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``). Each notebook is one nbgrader assignment,
named after the notebook. The course folder is ``assignments/`` (git-ignored):

    python tools/assignments.py release      # student versions -> assignments/release/<name>/<name>.ipynb
    python tools/assignments.py autograde    # grade assignments/submitted/<student>/<name>/<name>.ipynb

``release`` runs ``nbgrader generate_assignment`` (solutions replaced by ``raise NotImplementedError()``,
hidden tests removed, outputs cleared, test cells locked). ``autograde`` runs ``nbgrader autograde``
(which puts the original test cells, hidden tests included, back into each submission before running
it) and writes one row per student, notebook and exercise to ``assignments/grades.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE = ROOT / "assignments"

CONFIG = """\
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.db_url = "sqlite:///" + {db!r}
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.ExecutePreprocessor.timeout = 1800
"""


def is_graded(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("solution") or meta.get("grade"))


def graded_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks that contain nbgrader cells."""
    return [p for p in sorted(folder.glob("*.ipynb")) if any(is_graded(c) for c in nbformat.read(p, 4).cells)]


def _prepare_course(course: Path) -> None:
    # nbgrader runs the `alembic` command of its own environment to set up the gradebook
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(
        CONFIG.format(root=str(course.resolve()), db=str((course / "gradebook.db").resolve()))
    )


def _nbgrader(course: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, check=True)


def release(course: Path = COURSE, notebooks: list[Path] | None = None) -> list[Path]:
    """Write the student version of every graded notebook; returns their paths."""
    _prepare_course(course)
    released = []
    for nb in notebooks or graded_notebooks():
        source = course / "source" / nb.stem
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(nb, source / nb.name)
        _nbgrader(course, "generate_assignment", nb.stem, "--force", "--log-level=WARN")
        released.append(course / "release" / nb.stem / nb.name)
    return released


def autograde(course: Path = COURSE) -> list[dict]:
    """Autograde every submission under ``course/submitted``; returns and saves the per-exercise scores."""
    from nbgrader.api import Gradebook

    _prepare_course(course)
    submitted = course / "submitted"
    assignments = sorted({p.name for p in submitted.glob("*/*") if p.is_dir()})
    if not assignments:
        raise SystemExit(
            f"No submissions found: put each student's notebook in {submitted}/<student>/<notebook>/<notebook>.ipynb "
            "(for example with `nbgrader zip_collect`), after running `release`."
        )
    for name in assignments:
        _nbgrader(course, "autograde", name, "--force", "--log-level=WARN")

    rows = []
    with Gradebook(f"sqlite:///{(course / 'gradebook.db').resolve()}") as gradebook:
        for name in assignments:
            for submission in gradebook.assignment_submissions(name):
                for notebook in submission.notebooks:
                    for grade in sorted(notebook.grades, key=lambda g: g.name):
                        rows.append({
                            "student": submission.student.id, "notebook": name, "exercise": grade.name,
                            "score": grade.score, "max_score": grade.max_score,
                        })
    with open(course / "grades.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["student", "notebook", "exercise", "score", "max_score"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Student versions and autograding of the course notebooks (nbgrader).")
    parser.add_argument("command", choices=["release", "autograde"])
    parser.add_argument("--course", type=Path, default=COURSE, help="the nbgrader course folder (default: assignments/)")
    args = parser.parse_args()
    if args.command == "release":
        for path in release(args.course):
            print(f"student version: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    else:
        rows = autograde(args.course)
        width = max(len(r["exercise"]) for r in rows)
        print(f"{'student':12} {'notebook':34} {'exercise':{width}}  score")
        for r in rows:
            print(f"{r['student']:12} {r['notebook']:34} {r['exercise']:{width}}  {r['score']:g}/{r['max_score']:g}")
        print(f"per-exercise scores written to {args.course / 'grades.csv'}")


if __name__ == "__main__":
    main()
