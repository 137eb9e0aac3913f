"""The committed notebooks' outputs: what a reader on GitHub sees must be what a live reader sees.

One test per notebook in notebooks/, reading its JSON only (no kernel): every non-blank code cell ran, top to
bottom, once each (execution counts 1, 2, 3, ...; nbclient and Jupyter skip blank cells and so does the count);
no error outputs; no stale widget state and no progress-bar widgets frozen at 0%; every cell that draws a figure
has an image output; no absolute path of the machine that ran it; no template token or note to self left in a
markdown cell (a line that is only an ALL_CAPS_WORD with underscores, TODO, XXX, FIXME); at most 2 MB. The rules are in
tools/notebook_checks.py. A notebook that fails is fixed by rerunning it: python tools/run_notebook.py NAME.ipynb
"""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import notebook_checks  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    problems = notebook_checks.check_all(nb, path.stat().st_size)
    if problems:
        pytest.fail(f"{path.name} (cell N: the N-th of its cells, counted from 0, markdown included); write the text "
                    f"a placeholder stands for, and rerun it with `python tools/run_notebook.py {path.name}`:\n  "
                    + "\n  ".join(problems), pytrace=False)


def _notebook(*cells):
    """A notebook of code cells given as (source, execution_count, outputs)."""
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s, execution_count=n, outputs=o)
                                           for s, n, o in cells])


def test_the_checks_catch_what_they_should():
    leak = [nbformat.v4.new_output("stream", text="saved to /home/ada/course/data/x.pt\n")]
    url = [nbformat.v4.new_output("stream", text="see https://example.org/home/page and data/x.pt\n")]
    bar = [nbformat.v4.new_output("display_data", data={notebook_checks.WIDGET_VIEW: {"model_id": "1"},
                                                        "text/plain": "training:   0%|   | 0/300 [00:00<?, ?it/s]"})]
    nb = _notebook(("x = 1", 1, bar), ("", None, []), ("y = 2", 3, url), ("print(x)", None, leak),
                   ("fig, ax = plt.subplots()\nax.plot(x)", 4, []), ("def f():\n    plt.show()", 5, []))
    nb.metadata["widgets"] = {}
    cells = lambda problems: [p.split(":")[0] for p in problems]
    assert notebook_checks.check_execution(nb) == ["cells 3: never ran (no execution count)",
                                                   "cell 2: execution count 3, expected 2 (run top to bottom once)"]
    assert cells(notebook_checks.check_widgets(nb)) == ["metadata.widgets", "cell 0"]
    assert cells(notebook_checks.check_paths(nb)) == ["cell 3"]  # not the URL of cell 2
    assert cells(notebook_checks.check_figures(nb)) == ["cell 4"]  # cell 5 only defines a function
    assert notebook_checks.check_size(3_000_000) and not notebook_checks.check_size(1_000_000)


def test_the_checks_catch_a_leftover_placeholder():
    cell = nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook(cells=[
        cell("**How the recipe was chosen.** On validation data:\n\nSELECTION_TABLE\n"),   # the template's token
        cell("Strings of `MIN_LEN` to MAX_LEN digits, the table below:\n\n| a | b |\n|---|---|"),  # prose: fine
        cell("Run `make test`.  \n  {RESULTS_TABLE}  "),
        cell("The curve flattens. TODO: say why."),
        cell("Exercise 3 (FIXME) and XXX."),
        cell("TODOS and XXXL are words; so is PRE_EMPHASIS_DB in a sentence."),
        nbformat.v4.new_code_cell("# TODO is allowed in code\nSELECTION_TABLE = 1", execution_count=1),
    ])
    problems = notebook_checks.check_placeholders(nb)
    assert [p.split(":")[0] for p in problems] == ["cell 0", "cell 2", "cell 3", "cell 4"]
    assert "'SELECTION_TABLE'" in problems[0] and "'{RESULTS_TABLE}'" in problems[1]
    assert "'FIXME', 'XXX'" in problems[3]
    assert problems == [p for p in notebook_checks.check_all(nb, 1000) if "placeholder" in p]   # part of check_all


def test_streamed_text_is_joined_as_a_live_notebook_shows_it():
    import run_notebook

    out = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)
    figure = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"})
    joined = run_notebook.coalesce_streams([out("stdout", "The"), out("stdout", " answer"), out("stderr", "warn"),
                                            out("stdout", "."), figure, out("stdout", "after")])
    assert [(o.output_type, o.get("name"), o.get("text")) for o in joined] == [
        ("stream", "stdout", "The answer"), ("stream", "stderr", "warn"), ("stream", "stdout", "."),
        ("display_data", None, None), ("stream", "stdout", "after")]
