"""Gathering Python objects (per-sample records, errors) across ranks.

Evaluation never pads or repeats samples (``panollava.evaluation.sharding``), so gathered records are never
de-duplicated: a sample id seen twice is an error wherever it is found (the one duplicate policy, docs/data.md).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Sequence
from typing import Any

from panollava.errors import InvalidInputError

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_objects(items: Sequence[Any]) -> list[Any]:
    """Concatenate a picklable list from every rank (in rank order); the list itself when not distributed."""
    import torch.distributed as dist

    if world_size() == 1:
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def launcher_world_size() -> tuple[int, str] | None:
    """The number of processes an external launcher started, and where that number comes from.

    Mirrors the cluster environment Lightning picks (SLURM first, then torchrun): ``SLURM_NTASKS`` when the process
    runs under SLURM (Lightning's ``SLURMEnvironment.detect``: not an interactive ``bash``/``interactive`` job),
    else ``WORLD_SIZE`` when ``torchrun`` started it (``TORCHELASTIC_RUN_ID`` is set). Lightning's own launcher is
    not an external one (it starts as many processes as the trainer asks).

    Returns:
        ``(world size, "SLURM_NTASKS=N (SLURM)")`` / ``(world size, "WORLD_SIZE=N (torchrun)")``, or None.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect() and os.environ.get("SLURM_NTASKS", "").isdigit():
        n = int(os.environ["SLURM_NTASKS"])
        return n, f"SLURM_NTASKS={n} (SLURM)"
    if "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("WORLD_SIZE", "").isdigit():
        n = int(os.environ["WORLD_SIZE"])
        return n, f"WORLD_SIZE={n} (torchrun)"
    return None


def check_launcher_world_size(num_nodes: int, devices: int) -> None:
    """Refuses a run whose launcher started another number of processes than the trainer expects.

    A multi-node ``torchrun`` that forgets ``--trainer.num_nodes`` otherwise runs every node as a world of its own,
    each evaluating every sample into the same folder.

    Args:
        num_nodes: The trainer's ``num_nodes``.
        devices: The trainer's devices per node.

    Raises:
        InvalidInputError: the two numbers differ (the message names both and the flags that fix it).
    """
    launched = launcher_world_size()
    if launched is None or launched[0] == num_nodes * devices:
        return
    n, source = launched
    raise InvalidInputError(
        f"the launcher started {n} process(es) ({source}) but the trainer expects --trainer.num_nodes {num_nodes} x "
        f"--trainer.devices {devices} = {num_nodes * devices}. Pass --trainer.num_nodes and --trainer.devices whose "
        "product is the launcher's world size: with torchrun, --trainer.num_nodes = --nnodes and --trainer.devices "
        "= --nproc_per_node; with srun, --trainer.num_nodes = --nodes and --trainer.devices = --ntasks-per-node"
    )


_teardown_registered = False


def destroy_process_group_at_exit() -> None:
    """Registers (once per process) an ``atexit`` handler that destroys the default process group while the
    interpreter is still whole.

    Without it, a process that leaves its Gloo group alive can abort at interpreter finalization ("terminate called
    without an active exception", SIGABRT) after all its work is written: Gloo's worker threads outlive the objects
    they hold (pytorch/pytorch#190489). Lightning keeps the group for reuse and never destroys it; several
    evaluations in one process (one torchrun launch) share it, so the group is destroyed at exit, not after each.
    """
    global _teardown_registered
    if _teardown_registered:
        return

    def destroy() -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(destroy)
    _teardown_registered = True
