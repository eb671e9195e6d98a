"""Data-parallel training across nodes with torch.distributed: the multi-node example.

    fabriek submit --partition gpu-h100 --nodes 2 --gpus 4 --time 30m -- python ddp_train.py

fabriek starts this script once on each node with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK
and LOCAL_RANK set, which is all `init_process_group("env://")` needs. It uses NCCL on GPUs and
gloo on CPUs (the test suite runs it on two CPU-only Slurm nodes). For one process per GPU, run
`torchrun --nnodes=$WORLD_SIZE --node-rank=$RANK --nproc-per-node=4 --master-addr=$MASTER_ADDR
--master-port=$MASTER_PORT train.py` as the command instead.

Each rank fits y = 3x - 2 on its own shard of the data; DDP averages the gradients, so every rank
ends with the same weights, which rank 0 saves to $FABRIEK_OUTPUT_DIR.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    gpu = torch.cuda.is_available()
    dist.init_process_group("nccl" if gpu else "gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu")
    torch.manual_seed(rank)  # each rank its own data shard
    x = torch.rand(4096, 1, device=device)
    y = 3 * x - 2 + 0.01 * torch.randn_like(x)

    torch.manual_seed(0)  # the same initial weights everywhere
    model = torch.nn.Linear(1, 1).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if gpu else None)
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.5)
    began = time.time()
    for _ in range(300):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        loss.backward()  # gradients averaged over all ranks here
        optimiser.step()

    weight, bias = model.weight.item(), model.bias.item()
    # Every rank must hold the same model: compare with rank 0's.
    mine = torch.tensor([weight, bias], device=device)
    first = mine.clone()
    dist.broadcast(first, src=0)
    same = bool(torch.allclose(mine, first))
    print(
        f"rank {rank}/{world} on {os.environ.get('SLURMD_NODENAME', os.uname().nodename)}: "
        f"w={weight:.3f} b={bias:.3f} "
        f"loss={loss.item():.5f} same-as-rank-0={same} ({time.time() - began:.1f}s)",
        flush=True,
    )
    if rank == 0:
        out = os.environ.get("FABRIEK_OUTPUT_DIR", ".")
        torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
