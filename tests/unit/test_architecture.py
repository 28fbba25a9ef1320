"""The code keeps its shape: import contracts hold, and ruff and mypy find nothing on the core packages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold() -> None:
    out = _run(str(BIN / "lint-imports"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_ruff_is_clean() -> None:
    out = _run(sys.executable, "-m", "ruff", "check", ".")
    assert out.returncode == 0, out.stdout[-3000:]


def test_mypy_is_clean_on_the_core_packages() -> None:
    out = _run(sys.executable, "-m", "mypy", "broker", "ledger", "catalog", "--ignore-missing-imports")
    assert out.returncode == 0, out.stdout[-3000:]
