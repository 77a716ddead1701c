"""The house: the package tower, adapters by place, public names at the package roots.

Parses the imports of every module of every package (with ``ast``, so imports inside
functions count too) and checks the layering of docs/design.md "Layers":
anchor_stun <- anchor_turn <- anchor_ice <- anchor_link <- anchor_cli, no package importing
``benchmarks``, and I/O modules (asyncio, socket, time, random, secrets, threading) only in
an ``aio/`` subpackage or the CLI package.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOWER = ["anchor_stun", "anchor_turn", "anchor_ice", "anchor_link", "anchor_cli"]
IO_MODULES = {"asyncio", "socket", "time", "random", "secrets", "threading"}
THIRD_PARTY_OF_CLI_AND_SERVER = ("rich", "prometheus_client", "redis")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute; relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT).parts[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.add(package)
            elif node.module:
                out.add(node.module)
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("package", TOWER)
def test_each_package_imports_only_packages_below_it(package: str) -> None:
    allowed = set(TOWER[: TOWER.index(package) + 1])
    forbidden = set(TOWER) - allowed
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if _top(name) in forbidden or _top(name) == "benchmarks"
    }
    assert not bad, sorted(bad)


@pytest.mark.parametrize("package", TOWER[:-1])
def test_io_only_in_aio_subpackages(package: str) -> None:
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        if "aio" not in path.relative_to(ROOT).parts
        for name in _imports(path)
        if _top(name) in IO_MODULES
    }
    assert not bad, sorted(bad)


def test_every_module_has_all() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for package in TOWER
        for path in _modules(package)
        if path.name != "__main__.py" and "__all__" not in path.read_text()
    ]
    assert not missing


@pytest.mark.parametrize("package", TOWER)
def test_package_root_reexports_its_public_names(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, package
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name}"


def test_the_public_api_of_the_readme() -> None:
    from anchor_ice import Candidate, Connection, GatewayNominator, StandardNominator
    from anchor_link import LinkEndpoint, WebSocketSignalling
    from anchor_stun import Message
    from anchor_turn import TurnConnection, TurnServer

    assert {Connection, Candidate, GatewayNominator, StandardNominator, LinkEndpoint,
            WebSocketSignalling, Message, TurnConnection, TurnServer}  # fmt: skip


def test_anchor_is_a_deprecated_alias_of_link_endpoint() -> None:
    import anchor_link

    with pytest.warns(DeprecationWarning, match="LinkEndpoint"):
        alias = anchor_link.Anchor
    assert alias is anchor_link.LinkEndpoint


def test_protocol_packages_import_without_cli_and_server_dependencies() -> None:
    """rich (the CLI's tables), prometheus-client (the server's metrics) and redis (the
    fleet's shared state) are not needed to use the protocol packages: importing them with
    all three blocked works."""
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in THIRD_PARTY_OF_CLI_AND_SERVER)
    code = f"import sys; {blocked}; import anchor_stun, anchor_turn, anchor_ice, anchor_link"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_wheel_has_no_top_level_benchmarks(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0 and "hatchling" in result.stderr:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    tops = {Path(name).parts[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "benchmarks" not in tops
    assert set(TOWER) <= tops


def test_readme_layout_matches_the_tree() -> None:
    """Every path the README's layout section names exists, and every module of the packages
    is named there."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```", 2)[1]
    named: set[str] = set()
    folder = ""
    for line in tree.splitlines():
        words = line.replace(",", " ").split()
        if words and not line.startswith(" ") and words[0].endswith("/"):
            folder = words[0]
            assert (ROOT / folder).is_dir(), f"README names {folder}, which does not exist"
        for word in words:
            if word.endswith(".py"):
                path = folder + word
                assert (ROOT / path).is_file(), f"README names {path}, which does not exist"
                named.add(path)
    for package in TOWER:
        for path in _modules(package):
            rel = str(path.relative_to(ROOT))
            assert rel in named, f"README's layout section does not name {rel}"
