"""The built wheel and sdist install in a fresh venv and run ``anchor demo`` (issue 20,
must-show 3).

``python -m build`` makes the sdist, then the wheel from the sdist (so the sdist is proven
complete), into a temporary directory. Each artifact is installed into a new virtual
environment of its own (no system site-packages, no PYTHONPATH, the current directory
outside the checkout: nothing of the work tree can be imported by accident), with its
dependencies from the package index pip is configured with, and that environment's
``anchor demo --json`` must end with a dissolved link and nothing left behind.

``build`` comes with the ``test`` extra. Without it this test is skipped on a developer's
machine and fails under ``CI=true``, like a missing peer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_clean_env(),
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if importlib.util.find_spec("build") is None:
        message = "the 'build' package is missing; pip install -e '.[test]'"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI=true: a missing tool is a failure)", pytrace=False)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("dist")
    result = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], out, 300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheel = out / f"anchor_nat-{version}-py3-none-any.whl"
    sdist = out / f"anchor_nat-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in out.iterdir())
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_fresh_venv_installs_and_runs_the_demo(
    artifacts: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    assert made.returncode == 0, made.stderr
    python, anchor = venv / "bin" / "python", venv / "bin" / "anchor"
    installed = _run([str(python), "-m", "pip", "install", str(artifacts[kind])], tmp_path, 400)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    where = _run([str(python), "-c", "import anchor_link; print(anchor_link.__file__)"],
                 tmp_path, 60)  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    demo = _run([str(anchor), "demo", "--json"], tmp_path, 120)
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["dissolved"] is True, summary
    assert summary["lost"] == 0 and summary["messages"] > 0, summary
    assert summary["allocations_left"] == 0 and summary["sockets_left"] == 0, summary
