"""Point the notebooks' Colab badges and setup cells at a repository (for example a lecturer's fork).

    python tools/set_repository.py https://github.com/YOU/transformers-from-scratch [--branch main]

The repository URL is kept in one place, ``[project.urls] Repository`` in ``pyproject.toml``. This
script writes the given URL there, and from there into the README's badges, every notebook's
"Open in Colab" badge and every setup cell's ``%pip install`` line. Run without a URL, it re-applies
the URL already in ``pyproject.toml``. ``tests/test_colab.py`` checks that they all agree.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
GITHUB = re.compile(r"^https://github\.com/(?P<slug>[\w.-]+/[\w.-]+?)(?:\.git)?/?$")
# the setup cell's install line and the badge links, whatever repository they name now
INSTALL = re.compile(r'%pip install -q "(?:transformers-from-scratch-helpers\[course\] @ )?git\+[^"]*"')
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/notebooks/")


def repository_url() -> str:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["urls"]["Repository"]


def install_line(url: str, branch: str = "main") -> str:
    ref = "" if branch == "main" else f"@{branch}"
    return f'%pip install -q "transformers-from-scratch-helpers[course] @ git+{url}{ref}"'


def badge_prefix(url: str, branch: str = "main") -> str:
    slug = GITHUB.match(url)["slug"]
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/"


def apply(url: str, branch: str = "main") -> list[Path]:
    """Write ``url`` into pyproject.toml, the README and every notebook; returns the changed files."""
    if not GITHUB.match(url):
        raise SystemExit(f"{url!r} is not a GitHub repository URL (https://github.com/OWNER/NAME): Colab opens notebooks from GitHub")
    changed = []
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    new = re.sub(r'(?m)^Repository = ".*"$', f'Repository = "{url}"', text)
    if new != text:
        pyproject.write_text(new)
        changed.append(pyproject)
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = BADGE.sub(badge_prefix(url, branch), text)
    if new != text:
        readme.write_text(new)
        changed.append(readme)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, 4)
        before = [c.source for c in nb.cells]
        for cell in nb.cells:
            cell.source = BADGE.sub(badge_prefix(url, branch), cell.source)
            if cell.cell_type == "code":
                cell.source = INSTALL.sub(install_line(url, branch).replace("\\", "\\\\"), cell.source)
        if [c.source for c in nb.cells] != before:
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="https://github.com/OWNER/NAME (default: the one in pyproject.toml)")
    parser.add_argument("--branch", default="main")
    args = parser.parse_args()
    for path in apply(args.url or repository_url(), args.branch):
        print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
