"""Run a notebook top to bottom for its committed outputs, and make them read on GitHub as they do live.

    python tools/run_notebook.py 03_language_modelling.ipynb               # the cpu profile (default)
    python tools/run_notebook.py notebooks/06_image_classification.ipynb --profile gpu --timeout 7200

Run it with the course's environment (`.venv/bin/python tools/run_notebook.py ...`). It executes the notebook
in place with nbclient, in notebooks/, with TFS_PROFILE set and matplotlib's inline backend (so every figure
is saved as an image), then cleans what a static reader would see wrongly:
- tqdm's progress bars are Jupyter widgets whose saved text is the bar's first state ("0%| | 0/3000"): those
  outputs are removed (the training loop prints a one-line summary when it ends), and so is the widget state
  in the notebook's metadata;
- consecutive outputs of one stream are joined into one, as a live notebook shows them (an answer streamed token
  by token would otherwise be one output, one line on GitHub, per token);
- outputs that show an absolute path of this machine (the repository, the home folder, /tmp, ...) are refused:
  the notebook is then not overwritten (the run is kept in the temporary folder for a look) and the exit
  status is 1.
It then prints the wall time, the notebook's size (a warning above 2 MB) and what the committed-notebook test
(tests/test_committed_notebooks.py) would say about it; any problem there also makes the exit status 1.

The quiet-machine rule: the notebooks print training times, and the README quotes them, so run one notebook at a
time on a machine doing nothing else (no test suite, no second notebook, no build); otherwise the times printed
measure the other jobs too.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_checks as checks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def execute(nb: nbformat.NotebookNode, profile: str, timeout: int) -> None:
    """Run every cell of the notebook in place, in a fresh kernel started in notebooks/; prints each cell's end."""
    os.environ.update(TFS_PROFILE=profile, MPLBACKEND="module://matplotlib_inline.backend_inline")
    cells = checks.code_cells(nb)
    position = {index: n for n, (index, _) in enumerate(cells, 1)}
    start = time.perf_counter()

    def report(cell, cell_index, **_):
        if cell_index in position:
            print(f"  cell {cell_index} ({position[cell_index]}/{len(cells)}) done at "
                  f"{time.perf_counter() - start:.0f} s", flush=True)

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
                            record_timing=False, store_widget_state=False, on_cell_executed=report)
    client.execute()


def coalesce_streams(outputs: list) -> list:
    """Join consecutive stream outputs of the same stream (stdout, stderr) into one, as a live notebook shows
    them: text streamed token by token is then one answer, not one output (one line on GitHub) per token."""
    joined = []
    for output in outputs:
        previous = joined[-1] if joined else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            previous["text"] = checks.join(previous["text"]) + checks.join(output["text"])
        else:
            joined.append(output)
    return joined


def clean(nb: nbformat.NotebookNode) -> int:
    """Remove widget outputs and widget state, and what blank cells kept from earlier runs; returns how many
    widget outputs were removed."""
    nb.metadata.pop("widgets", None)
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if not cell.source.strip():
            cell.outputs, cell.execution_count = [], None
        kept = [o for o in cell.outputs if checks.WIDGET_VIEW not in o.get("data", {})]
        removed += len(cell.outputs) - len(kept)
        cell.outputs = coalesce_streams(kept)
        cell.metadata.pop("execution", None)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a notebook for its committed outputs (see the file's top).")
    parser.add_argument("notebook", help="NAME.ipynb, in notebooks/ or as a path")
    parser.add_argument("--profile", default="cpu", choices=["ci", "cpu", "gpu"], help="TFS_PROFILE (default: cpu)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (default: 3600)")
    args = parser.parse_args()
    path = Path(args.notebook)
    path = path if path.exists() else NOTEBOOKS / path.name
    if not path.exists():
        sys.exit(f"no notebook {args.notebook} (looked in {NOTEBOOKS})")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"{path.name}: profile {args.profile}, load average {load:.1f} on {os.cpu_count()} cores"
          + (" -- not a quiet machine: the times printed will be off" if load > 0.5 else ""), flush=True)
    nb = nbformat.read(path, as_version=4)
    kept = Path(tempfile.gettempdir()) / path.name  # where a refused run is left for a look
    start = time.perf_counter()
    try:
        execute(nb, args.profile, args.timeout)
    except CellExecutionError as error:
        nbformat.write(nb, kept)
        sys.exit(f"{error}\n{path.name} NOT written: a cell failed (the run so far is in {kept})")
    seconds = time.perf_counter() - start
    removed = clean(nb)
    print(f"{path.name}: ran in {seconds / 60:.1f} min ({seconds:.0f} s) wall time; {removed} widget outputs removed")

    machine = {ROOT, Path.home(), Path(sys.prefix), Path(tempfile.gettempdir()).resolve()}
    leaks = checks.check_paths(nb, extra=tuple(str(p) for p in machine if len(p.parts) > 1))
    if leaks:
        nbformat.write(nb, kept)
        sys.exit(f"{path.name} NOT written: its outputs show paths of this machine; make those cells print "
                 f"relative paths or names, then rerun (this run is in {kept}):\n  " + "\n  ".join(leaks))
    nbformat.write(nb, path)

    size = path.stat().st_size
    print(f"{path.name}: written, {size / 1e6:.2f} MB" + (" -- WARNING: above 2 MB" if size > checks.MAX_BYTES else ""))
    problems = checks.check_all(nb, size)
    if problems:
        sys.exit(f"{path.name}: tests/test_committed_notebooks.py will fail:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
