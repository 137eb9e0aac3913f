"""The shape of the helpers package: small modules in layers, imports pointing down only."""

import ast
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parents[1] / "helpers"

# Every module of helpers, in its layer (README: "The helpers package"). A module may import modules of
# its own layer that come earlier in this table, and any module of a lower layer; topic modules import no
# other topic module.
LAYERS = {
    "ground": ["distributed", "config", "files", "data", "recipes", "plotting"],
    "core": ["attention", "layers", "model", "lora", "generate", "seq2seq", "train", "checkpoint", "gguf", "pretrained",
             "gemma"],
    "topic": ["text", "arithmetic", "vision", "audio", "music", "rag", "llm", "post_training"],
    "entry": ["train_cli"],
}
ORDER = [name for names in LAYERS.values() for name in names]
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
MAX_LINES = 450


def modules():
    return sorted(p for p in HELPERS.rglob("*.py") if p.name != "__init__.py" or p.parent != HELPERS)


def top_module(path: Path) -> str:
    return path.relative_to(HELPERS).parts[0].removesuffix(".py")


def helpers_imports(path: Path) -> set[str]:
    """The top-level helpers modules that ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(HELPERS).parent.parts  # () for helpers/x.py, ("vision",) for helpers/vision/x.py
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target[0]] if target else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "helpers":
                parts = node.module.split(".")[1:]
                names = [parts[0]] if parts else [a.name for a in node.names]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("helpers."))
    return found - {top_module(path)}


def test_every_module_is_in_a_layer():
    assert {top_module(p) for p in modules()} == set(ORDER)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(HELPERS)))
def test_imports_point_down(path):
    me = top_module(path)
    for other in helpers_imports(path):
        assert other in LAYER_OF, f"{path.name} imports helpers.{other}, which is in no layer"
        assert ORDER.index(other) < ORDER.index(me), f"{me} ({LAYER_OF[me]}) imports {other} ({LAYER_OF[other]})"
        assert not (LAYER_OF[me] == LAYER_OF[other] == "topic"), f"topic {me} imports topic {other}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(HELPERS)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
