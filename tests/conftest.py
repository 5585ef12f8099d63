"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest_browser import chromium, evaluations  # noqa: F401  (report/leaderboard fixtures)

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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny ``fit`` of ``configs/tiny.yaml`` (finetune + LoRA, 2 epochs with validation), shared by tests.

    Returns a dict with ``run_dir`` (Path), ``cli`` (the PanoLLaVACLI, whose ``model`` is the trained module in
    memory) and ``workdir`` (the folder it ran in).
    """
    import os

    from panollava.lightning_cli import run_lightning_cli

    workdir = tmp_path_factory.mktemp("tiny_run")
    old = os.getcwd()
    os.chdir(workdir)
    try:
        cli = run_lightning_cli(["fit", "--config", str(PROJECT_ROOT / "configs" / "tiny.yaml")])
    finally:
        os.chdir(old)
    run_dir = workdir / "runs" / "tiny" / "finetune" / "anyres-e2p_mlp"
    return {"run_dir": run_dir, "cli": cli, "workdir": workdir}


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models are overhead-bound: on a shared 2-core machine two torch threads ran ~30× slower than one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
