"""What a user installs: the wheel carries the C++ sources and the web page and declares every
package chatfleet imports; an optional part that is missing says which extra brings it.

(`make wheel-check` installs the wheel into a fresh venv and runs one generation.)
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"yaml": "pyyaml", "prometheus_client": "prometheus-client"}


def _third_party_imports() -> set[str]:
    names = set()
    for path in (ROOT / "chatfleet").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "chatfleet"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel, built from a copy of the sources (the build writes beside them)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(
        ROOT / "chatfleet", src / "chatfleet", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return zipfile.ZipFile(next(out.glob("chatfleet-*.whl")))


def test_the_wheel_carries_the_kernel_sources_and_the_web_page(wheel):
    names = set(wheel.namelist())
    for path in [
        *(ROOT / "chatfleet" / "csrc").iterdir(),
        *(ROOT / "chatfleet" / "gateway" / "static").rglob("*"),
    ]:
        if path.is_file():
            assert str(path.relative_to(ROOT)) in names, path


def test_the_wheel_declares_every_package_chatfleet_imports(wheel):
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    declared = {re.split(r"[\[<>=!; ]", r, maxsplit=1)[0].lower() for r in requires}
    core = {
        re.split(r"[\[<>=!; ]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r
    }
    for module in _third_party_imports():
        assert DISTRIBUTIONS.get(module, module).replace("_", "-") in declared, module
    # What `chatfleet serve` and the gateway need is not an extra.
    assert {"torch", "fastapi", "pydantic", "starlette", "anyio", "uvicorn", "httpx"} <= core


@pytest.mark.parametrize(
    "module, extra, code",
    [
        (
            "psycopg",
            "postgres",
            "from chatfleet.gateway.store import open_store; open_store('postgresql://x/y')",
        ),
        (
            "redis",
            "redis",
            "from chatfleet.gateway.limits import open_limits; open_limits('redis://x')",
        ),
        ("matplotlib", "plots", "from chatfleet.extras import pyplot; pyplot()"),
        ("yaml", "ray", "from chatfleet.config.deploy_config import load_file; load_file('x')"),
    ],
)
def test_a_missing_extra_names_itself(module, extra, code):
    hide = f"import sys; sys.modules[{module!r}] = None; "
    run = subprocess.run(
        [sys.executable, "-c", hide + code], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode != 0
    assert f"pip install 'chatfleet[{extra}]'" in run.stderr


def test_the_cli_reports_a_missing_extra_in_one_line(tmp_path):
    code = (
        "import sys; sys.modules['psycopg'] = None; from chatfleet.entrypoints.cli import main; "
        "sys.exit(main(['keys', 'list', '--db', 'postgresql://127.0.0.1:1/x']))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "error: a PostgreSQL gateway store needs the `psycopg` package: "
        "pip install 'chatfleet[postgres]'"
    )


def test_every_install_pins_torch_so_no_dependency_pulls_another_build():
    """A package that names torch without a version must not replace the pinned CPU build:
    every pip install in the Makefile goes through constraints.txt, which pins what pyproject
    pins, and the venv the tests run in holds that build and no CUDA wheels. Nothing
    chatfleet's installed extras depend on names torch without the pin (accelerate did, and
    nothing used it), and no benchmark asks for such a package (xgrammar did)."""
    pinned = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned is not None
    constraints = (ROOT / "constraints.txt").read_text().split("\n")
    assert f"torch=={pinned.group(1)}" in constraints
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert makefile.count("$(PIP_INSTALL)") >= 6  # the venv's and the wheel check's installs
    # torch itself is asked for at its pin, never by bare name.
    torch_installs = [line for line in makefile.splitlines() if "$(PIP_INSTALL) torch" in line]
    assert len(torch_installs) == 2, torch_installs
    assert all(line.endswith(f"torch=={pinned.group(1)}") for line in torch_installs)
    assert importlib.metadata.version("torch").split("+")[0] == pinned.group(1)
    names = [d.metadata["Name"].lower() for d in importlib.metadata.distributions()]
    assert not [name for name in names if name.startswith("nvidia-")]
    assert _unpinned_torch_users(["dev", "ray"], f"torch=={pinned.group(1)}") == []
    # Nor anything else in the venv: a package an older install left behind (as accelerate
    # was) would bring another torch build with its next upgrade.
    assert _installed_unpinned_torch_users(f"torch=={pinned.group(1)}") == []


def _installed_unpinned_torch_users(pin: str) -> list[str]:
    """Installed packages whose unconditional requirements name torch without `pin`."""
    from packaging.requirements import Requirement

    found = []
    for dist in importlib.metadata.distributions():
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.name.lower() != "torch" or str(req.specifier) == pin.removeprefix("torch"):
                continue
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                found.append(f"{dist.metadata['Name']}: {raw}")
    return found


def _unpinned_torch_users(extras: list[str], pin: str) -> list[str]:
    """Installed packages reachable from chatfleet with `extras` whose requirements name
    torch without `pin`."""
    from packaging.requirements import Requirement

    found, seen = [], set()
    todo = [(r, set(extras)) for r in importlib.metadata.requires("chatfleet") or []]
    while todo:
        raw, chosen = todo.pop()
        req = Requirement(raw)
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in chosen | {""}
        ):
            continue
        name = req.name.lower()
        if name == "torch":
            continue
        if name == "chatfleet":
            todo += [(r, set(req.extras)) for r in importlib.metadata.requires("chatfleet") or []]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for r in requires:
            dep = Requirement(r)
            if dep.name.lower() == "torch" and str(dep.specifier) != pin.removeprefix("torch"):
                if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                    found.append(f"{name}: {r}")
            else:
                todo.append((r, set(req.extras)))
    return found
