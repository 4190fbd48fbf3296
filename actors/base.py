"""What every role actor shares: its rank in the role's group and torch.distributed set-up."""

from __future__ import annotations

import os
import socket

import torch


class RoleActor:
    """Base of the role actors. One process per rank; ranks of a role form one process group."""

    def __init__(self, rank: int, world_size: int, num_threads: int = 2):
        self.rank, self.world_size = rank, world_size
        torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the rendezvous."""
        ip = socket.gethostbyname(socket.gethostname())
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def setup_distributed(self, addr: str, port: int) -> None:
        """Join the role's process group (nccl on GPU, gloo on CPU)."""
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=self.rank, world_size=self.world_size)
