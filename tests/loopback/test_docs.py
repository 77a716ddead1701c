"""The documentation site builds with warnings as errors, and its pictures can be remade
(issue 20, must-show 1).

``mkdocs build --strict`` (mkdocs.yml turns on the validation of the nav, links and anchors)
runs into a temporary directory, so the work tree is left as it was: every page, every
snippet included from ``examples/``, ``README.md`` and ``benchmarks/README.md``, every
link and anchor into the API reference generated from the package roots' docstrings.
``benchmarks/plots.py`` remakes the committed benchmark pictures from the committed JSON.

MkDocs and matplotlib come with the ``docs`` and ``plot`` extras, which ``./scripts/test``
installs. Without them these tests are skipped on a developer's machine and fail under
``CI=true``, like a missing peer.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _require(module: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} cannot be imported ({exc}); pip install -e '.[{extra}]'"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI=true: the {extra} extra must be installed)", pytrace=False)
        pytest.skip(message)


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.timeout(300)
def test_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    _require("mkdocs", "docs")
    _require("mkdocstrings_handlers.python", "docs")
    _require("material", "docs")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=280, cwd=tmp_path, env=_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    for page in ("index", "stun/index", "serve/index", "reference/anchor_link/index"):
        assert (site / f"{page}.html").is_file(), page
    # The API reference is generated from the docstrings of the public names.
    reference = (site / "reference/anchor_ice/index.html").read_text()
    for name in ("Connection", "GatewayNominator", "Nominator", "Candidate"):
        assert f'id="anchor_ice.{name}"' in reference, name
    link = (site / "reference/anchor_link/index.html").read_text()
    assert 'id="anchor_link.LinkEndpoint"' in link
    # The examples are included from examples/ itself, not copied.
    stun = (site / "stun/index.html").read_text()
    assert "CLIENT_AS_SEEN" in stun
    assert (site / "img/bench-ratios.png").read_bytes().startswith(PNG)


def test_benchmark_pictures_are_made_from_bench_json(tmp_path: Path) -> None:
    _require("matplotlib", "plot")
    source = ROOT / "docs/img/bench-all.json"
    rows = json.loads(source.read_text())
    assert {row["metric"] for row in rows} >= {"codec", "checks", "connect", "relay", "channel"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.plots", str(source), "--out", str(tmp_path),
         "--when", "2026-12-06 03:02 UTC", "--machine", "a test"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    made = sorted(p.name for p in tmp_path.glob("*.png"))
    assert made == ["bench-ratios.png", "bench-rows.png"]
    for name in made:
        assert (tmp_path / name).read_bytes().startswith(PNG)
        assert (ROOT / "docs/img" / name).read_bytes().startswith(PNG), "commit the picture"


def test_benchmark_pictures_refuse_what_is_not_bench_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"metric": "codec"}]))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.plots", str(bad), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("benchmarks.plots: ") and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.png"))
