"""The little coordination a run needs when ``torchrun`` or ``accelerate launch`` starts several processes.

Both launchers set up ``torch.distributed``; with one process (or none initialised) every function
here is a no-op.
"""

from __future__ import annotations

import os

from titlegen import TitlegenError


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


def fsdp_version(training_args) -> int | None:
    """The FSDP version a run asks for (1 or 2), or None without FSDP.

    FSDP comes from an accelerate config of ``distributed_type: FSDP`` (``accelerate launch`` passes it on as
    ACCELERATE_USE_FSDP and FSDP_VERSION, version 1 when the config names none), or from ``--fsdp`` in the
    training settings (transformers' default: version 2).
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return int(os.environ.get("FSDP_VERSION", "1"))
    if training_args.fsdp:
        return int((training_args.fsdp_config or {}).get("version", 2))
    return None


def check_fsdp(training_args) -> None:
    """Refuses, before any work, what a run cannot do under the FSDP it asks for (`fsdp_version`)."""
    if training_args.predict_with_generate and fsdp_version(training_args) == 1:
        # FSDP2 gathers each block's weights as generate reaches it (tested: the same titles as DDP).
        raise TitlegenError(
            "predict_with_generate fails under FSDP version 1 (transformers#21667): use fsdp_version 2 "
            "(trainer_args/accelerate/fsdp_mt5.yaml), or set predict_with_generate false"
        )
