"""The training processes of a run: one, or several under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m focalfast train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; each joins one process
group (NCCL on CUDA devices, gloo on CPU) and uses device ``cuda:LOCAL_RANK`` on GPUs.
"""

from __future__ import annotations

import os
from typing import List, Optional

import torch


class Processes:
    """This process's place among the run's processes, and the collectives the run needs
    (all no-ops with a single process)."""

    def __init__(self, device_name: Optional[str] = None):
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() if device_name is None else device_name.startswith("cuda")
        if cuda and self.world_size > 1:
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device(device_name or ("cuda" if cuda else "cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = self.world_size > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        """Rank 0: it logs and writes the run's files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all processes (in place, and returned)."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """Every process's ``tensor`` (same shape and dtype on all), in rank order."""
        if not self.distributed:
            return [tensor]
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return parts

    def barrier(self) -> None:
        """Waits until every process has come here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, model):
        """``model`` in DistributedDataParallel when there are several processes."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
