"""What a committed notebook's outputs must satisfy, so that a reader on GitHub sees what a live reader sees.

Used by tests/test_committed_notebooks.py (every committed notebook) and by tools/run_notebook.py (right after
a run). Every check reads the notebook's JSON only and returns problems as strings "cell N: ...", where N is
the cell's index in the notebook's list of cells (0-based, markdown cells included, as in the JSON).
"""

from __future__ import annotations

import ast
import re

MAX_BYTES = 2_000_000  # a committed notebook above this is slow to open on GitHub and bloats the repository
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")

# An absolute path of the machine that ran the notebook: home folders, temporary folders, the course's own
# work folder, Colab's /content, Windows drives. The look-behind skips URLs ("https://host/home/...").
MACHINE_PATH = re.compile(
    r"(?<![\w.:/~-])(?:/root\b|/home/|/Users/|/work/|/tmp/|/private/var/|/var/folders/|/content/|[A-Za-z]:\\)"
)
# tqdm's text: "training:   0%|          | 0/3000 [00:00<?, ?it/s]"
PROGRESS = re.compile(r"(\d+)%\|")
# A template token left in a markdown cell: a line that is nothing but an ALL_CAPS_WORD with underscores
# ("SELECTION_TABLE", also as "{SELECTION_TABLE}" or "<SELECTION_TABLE>"), or a note to self: TODO, XXX, FIXME.
# An identifier inside a sentence ("`MAX_LEN` digits") is prose, not a placeholder.
TEMPLATE_LINE = re.compile(r"^[ \t]*[{<\[]*[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+[}>\]]*[ \t]*$", re.MULTILINE)
NOTE_TO_SELF = re.compile(r"\b(?:TODO|XXX|FIXME)\b")

# A cell "draws a figure" when its code, magics translated and comments ignored, calls one of these at run time
# (calls inside a `def`, `class` or `lambda` are only definitions): pyplot's and Axes' drawing functions
# (`plt.subplots(...)`, `ax.plot(...)`, `history.plot()`, `plt.show()`), and the course's plotting helpers
# (`plot_attention(...)`, `music.plot_piano_roll(...)`, `show_images(...)`). With the inline backend every such
# figure becomes an image output when the cell ends. A call inside an `if` counts too: the committed run is
# expected to take the branch that draws.
DRAWING_CALLS = {"show", "figure", "subplots", "subplot_mosaic", "plot", "imshow", "matshow", "scatter", "bar",
                 "barh", "hist", "pcolormesh", "contourf", "show_images"}
DRAWING_PREFIX = "plot_"


def code_cells(nb: dict) -> list[tuple[int, dict]]:
    """(index, cell) of every code cell whose source is not blank; nbclient and Jupyter skip blank ones."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and source(c).strip()]


def join(text: str | list[str]) -> str:
    """A multi-line JSON string, which nbformat stores as a string or as a list of lines."""
    return "".join(text) if isinstance(text, list) else text


def source(cell: dict) -> str:
    return join(cell.get("source", ""))


def output_texts(output: dict) -> list[str]:
    """The human-readable text of one output: stream text, text/* representations, an error's traceback."""
    texts = [join(output.get("text", ""))]
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime == "image/svg+xml":
            texts.append(join(value))
    return texts + [output.get("evalue", "")] + output.get("traceback", [])


def check_execution(nb: dict) -> list[str]:
    """Every non-blank code cell ran, top to bottom, once each: execution counts 1, 2, 3, ... with no gaps."""
    problems, never, expected = [], [], 1
    for i, cell in code_cells(nb):
        count = cell.get("execution_count")
        if count is None:
            never.append(str(i))
            continue
        if count != expected:
            problems.append(f"cell {i}: execution count {count}, expected {expected} (run top to bottom once)")
        expected = count + 1
    if never:
        problems.insert(0, f"cells {', '.join(never)}: never ran (no execution count)")
    return problems


def check_errors(nb: dict) -> list[str]:
    """No output is an error."""
    return [f"cell {i}: error output {o.get('ename')}: {o.get('evalue', '')[:120]}"
            for i, c in code_cells(nb) for o in c.get("outputs", []) if o["output_type"] == "error"]


def check_widgets(nb: dict) -> list[str]:
    """No saved widget state, and no widget output whose text fallback is an unfinished progress bar."""
    problems = ["metadata.widgets: stale widget state (remove it; tools/run_notebook.py does)"] \
        if "widgets" in nb.get("metadata", {}) else []
    for i, cell in code_cells(nb):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = join(data.get("text/plain", ""))
            bar = PROGRESS.search(text)
            if WIDGET_VIEW in data and bar and int(bar.group(1)) < 100:
                problems.append(f"cell {i}: progress-bar widget, shown on GitHub as {text.strip()!r}")
    return problems


def draws_figure(code: str) -> bool:
    """Whether the code calls a drawing function at run time (see DRAWING_CALLS)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        code = TransformerManager().transform_cell(code)
    except ImportError:
        pass
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False

    def calls(node: ast.AST):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                continue
            if isinstance(child, ast.Call):
                func = child.func
                yield func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            yield from calls(child)

    return any(name in DRAWING_CALLS or name.startswith(DRAWING_PREFIX) for name in calls(tree))


def check_figures(nb: dict) -> list[str]:
    """Every cell that draws a figure has an image output."""
    return [f"cell {i}: draws a figure but has no image output (was it run with an inline matplotlib backend?)"
            for i, c in code_cells(nb) if draws_figure(source(c))
            and not any(mime in o.get("data", {}) for o in c.get("outputs", []) for mime in IMAGE_TYPES)]


def check_paths(nb: dict, extra: tuple[str, ...] = ()) -> list[str]:
    """No output shows an absolute path of the machine that ran it (MACHINE_PATH, or any string of `extra`)."""
    problems = []
    for i, cell in code_cells(nb):
        for output in cell.get("outputs", []):
            for text in output_texts(output):
                found = MACHINE_PATH.search(text)
                start = found.start() if found else min((text.find(p) for p in extra if p in text), default=-1)
                if start >= 0:
                    problems.append(f"cell {i}: output shows a path of this machine: {text[start:start + 80]!r}")
                    break
    return problems


def check_placeholders(nb: dict) -> list[str]:
    """No markdown cell holds a leftover template token or note to self (TEMPLATE_LINE, NOTE_TO_SELF)."""
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        text = source(cell)
        found = [m.group().strip() for m in TEMPLATE_LINE.finditer(text)] + NOTE_TO_SELF.findall(text)
        if found:
            problems.append(f"cell {i}: a placeholder left in the text: {', '.join(map(repr, found))}")
    return problems


def check_size(size: int) -> list[str]:
    """The notebook file is at most MAX_BYTES."""
    return [f"{size / 1e6:.2f} MB, above {MAX_BYTES / 1e6:.0f} MB (smaller or fewer figures)"] if size > MAX_BYTES else []


def check_all(nb: dict, size: int) -> list[str]:
    """Every check above, in reading order of their importance."""
    return (check_execution(nb) + check_errors(nb) + check_widgets(nb) + check_figures(nb) + check_paths(nb)
            + check_placeholders(nb) + check_size(size))
