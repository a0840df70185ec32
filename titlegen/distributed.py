"""The little coordination a run needs when ``torchrun`` or ``accelerate launch`` starts several processes.

Both launchers set up ``torch.distributed``; with one process (or none initialised) every function
here is a no-op.
"""

from __future__ import annotations


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def wait_for_everyone() -> None:
    """Blocks until every process gets here."""
    import torch.distributed as dist

    if _world_size() > 1:
        dist.barrier()


def any_process(flag, device) -> bool:
    """Whether `flag` (a bool or a boolean tensor) is true in at least one process.

    Every process must call it at the same point: a decision to stop or to save has to be the same
    everywhere, or the processes that go on wait forever for the ones that stopped.

    Args:
        flag: This process's answer.
        device: Where the collective runs (``TrainingArguments.device``: a GPU for NCCL, the CPU for gloo).
    """
    import torch

    if _world_size() == 1:
        return bool(flag)
    import torch.distributed as dist

    value = torch.as_tensor(flag, device=device).to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shut_down() -> None:
    """Destroys the process group a launcher set up, if any.

    Left to interpreter exit, the group's communication threads can be torn down in the wrong order, and a
    process that finished its work aborts ("terminate called without an active exception", seen with gloo).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
