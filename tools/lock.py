"""Write requirements.lock, the exact versions `make setup` installs, or check that it is not stale.

    python tools/lock.py            # (make lock) resolve requirements.txt, write requirements.lock
    python tools/lock.py --check    # (make setup) fail when requirements.txt asks for what the lock lacks

The lock is a pip constraints file (`name==version` lines): `make setup` runs
`pip install -r requirements.txt -c requirements.lock`, so requirements.txt keeps its ranges for users while
every install of the course gets the versions the tests ran with. It is produced by pip's own resolver,
`pip install --dry-run --ignore-installed --report`, which installs nothing and needs no extra tool.

The resolution is that of the Python and platform that run this script (the header says which). On another
platform the lock still works as constraints: a pin only applies to a package that platform actually needs, so
Linux-only packages (nvidia-*, triton) are never forced onto a Mac, and a package only another platform needs
is installed unpinned. Any constraint file from the machine's pip configuration is ignored while resolving
(PIP_CONSTRAINT=/dev/null), so the lock depends only on requirements.txt and the package index.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
except ImportError:  # a fresh virtual environment: pip always carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    """The normalised form of a distribution name (PEP 503): `Jinja2` and `jinja2` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path: Path) -> list[Requirement]:
    """The requirements of a requirements file (comments and blank lines skipped; no options, no -r)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def oldest_python(report: dict) -> str:
    """The oldest Python version that every resolved package accepts (the highest lower bound of Requires-Python)."""
    specs = [SpecifierSet(item["metadata"]["requires_python"]) for item in report["install"]
             if item["metadata"].get("requires_python")]
    bounds = sorted({Version(s.version) for spec in specs for s in spec if s.operator in (">=", "~=")})
    return next((str(v) for v in bounds if all(spec.contains(v) for spec in specs)), "?")


def resolve(path: Path) -> tuple[dict[str, str], dict]:
    """Resolve a requirements file with pip: {name: version}, and what it was resolved for (environment, pip)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "-r", str(path)]
        subprocess.run(cmd, check=True, env={**os.environ, "PIP_CONSTRAINT": "/dev/null"})
        data = json.loads(report.read_text())
    pins = {item["metadata"]["name"]: item["metadata"]["version"] for item in data["install"]}
    about = {**data["environment"], "pip": data["pip_version"], "oldest_python": oldest_python(data)}
    return dict(sorted(pins.items(), key=lambda kv: canonical(kv[0]))), about


def write_lock(source: Path, lock: Path) -> None:
    """Resolve `source` and write the lock file with a header saying how it was made."""
    pins, about = resolve(source)
    header = [
        "# The exact versions the course is tested with: a pip constraints file that `make setup` installs",
        "# with `pip install -r requirements.txt -c requirements.lock`. Do not edit it by hand.",
        "# Refresh it after changing requirements.txt:  make lock   (python tools/lock.py)",
        f"# Resolved by pip {about['pip']} from {source.name} (pip install --dry-run --ignore-installed --report)",
        f"# for Python {about['python_full_version']} on {about['sys_platform']} {about['platform_machine']};"
        " elsewhere a pin applies only to a package that platform needs.",
        f"# These versions need Python >= {about['oldest_python']}.",
    ]
    lock.write_text("\n".join(header + [f"{name}=={version}" for name, version in pins.items()]) + "\n")
    print(f"{lock.name}: {len(pins)} packages pinned from {source}")


def check(source: Path, lock: Path) -> list[str]:
    """The requirements of `source` that `lock` does not pin to an allowed version (empty: the lock is fresh)."""
    if not lock.exists():
        return [f"{lock.name} is missing"]
    pins = {canonical(r.name): r.specifier for r in requirements(lock)}
    problems = []
    for req in requirements(source):
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonical(req.name))
        if pin is None:
            problems.append(f"{req.name} is not in {lock.name}")
            continue
        version = next(iter(pin)).version
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} in {lock.name} does not satisfy {req} in {source.name}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt", help="what to resolve")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock", help="the lock file to write")
    parser.add_argument("--check", action="store_true", help="only check that the lock covers the requirements")
    args = parser.parse_args()
    if not args.check:
        write_lock(args.requirements, args.lock)
        return
    problems = check(args.requirements, args.lock)
    if problems:
        sys.exit(f"{args.lock.name} is stale; refresh it with `make lock` and commit it:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
