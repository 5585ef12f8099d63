"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (real QuIC-360 annotations and panoramas); skips the test when it is absent."""
    if not (SHARED_DATA / "quic360-sample" / "test.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI provides ../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_panoramas(shared_data_dir: Path) -> list[Path]:
    """The five real QuIC-360 test panoramas."""
    paths = sorted((shared_data_dir / "quic360-sample" / "images").glob("*.jpg"))
    assert len(paths) == 5, paths
    return paths
