"""A training run's folder and its checkpoints: which ones a run can resume from, and titlegen-rl's own.

`prepare_run_dir` checks a run's output_dir before any work and finds the checkpoint to resume from.

transformers' Trainer (titlegen-train) writes ``checkpoint-N`` in place, file after file: the model, the
optimizer and scheduler, the random states, and ``trainer_state.json`` last (process 0 writes it after its
own files). ``transformers.trainer_utils.get_last_checkpoint`` returns the highest-numbered folder whether
or not it was finished, so a run killed while saving would resume from half a checkpoint. Here a
checkpoint counts only when its ``trainer_state.json`` is whole JSON for step N and its weights exist.

titlegen-rl writes ``checkpoint-N`` with `save_checkpoint`: the trainable tensors, the optimizer, scheduler
and random state, and ``state.json``, in a temporary folder renamed into place, so that it is whole or absent.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import shutil
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import atomic_output_dir, follow_umask, write_json
from titlegen.outputs import check_output_folder

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# A full model, sharded or not, in safetensors or (written with save_safetensors=False) torch format,
# or a PEFT adapter.
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
)
_RL_STATE, _RL_WEIGHTS = "state.json", "trainable.safetensors"  # titlegen-rl's checkpoint files


def checkpoint_step(folder: str | Path) -> int | None:
    """The step N of a ``checkpoint-N`` folder name, or None for any other name."""
    match = _CHECKPOINT.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` is a ``checkpoint-N`` that the Trainer, or titlegen-rl, finished writing."""
    folder = Path(folder)
    step = checkpoint_step(folder)
    if step is None or not folder.is_dir():
        return False
    if (folder / _RL_STATE).is_file():
        return _json_field(folder / _RL_STATE, "step") == step and (folder / _RL_WEIGHTS).is_file()
    return _json_field(folder / "trainer_state.json", "global_step") == step and any(
        (folder / name).is_file() for name in _WEIGHTS
    )


def _json_field(path: Path, key: str):
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir`, or None."""
    complete = [p for p in _checkpoints(Path(output_dir)) if is_complete_checkpoint(p)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Deletes the checkpoint folders that were never finished (they cannot be resumed from).

    A resumed run writes those steps again; leaving the old folders would let the Trainer's rotation
    (``save_total_limit``) count them and delete a good checkpoint instead.

    Returns:
        The folders deleted.
    """
    removed = [p for p in _checkpoints(Path(output_dir)) if not is_complete_checkpoint(p)]
    for folder in removed:
        logger.warning("removing %s: the run stopped before this checkpoint was complete", folder)
        shutil.rmtree(folder, ignore_errors=True)
    return removed


# titlegen-rl's checkpoints ------------------------------------------------------------------------------------------


def trainable_state(model) -> dict:
    """The trainable tensors by name (all weights, or only the LoRA adapters), detached and contiguous."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    """Loads tensors saved by `trainable_state` into `model`."""
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"weights that the model does not have: {result.unexpected_keys[:3]}")


def save_checkpoint(output_dir: str | Path, model, optimizer, scheduler, state: dict) -> Path:
    """Writes everything a run needs to continue to ``checkpoint-STEP``, atomically, and removes older ones.

    Args:
        output_dir: The run's folder.
        model: The policy; only its trainable tensors are saved.
        optimizer: Its optimizer.
        scheduler: Its learning-rate scheduler.
        state: JSON-serialisable run state with at least ``step``.
    """
    import torch
    from safetensors.torch import save_file

    final = Path(output_dir) / f"checkpoint-{state['step']}"
    with atomic_output_dir(final) as tmp:  # the folder appears complete or not at all
        save_file(trainable_state(model), tmp / _RL_WEIGHTS)
        follow_umask(tmp)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        write_json(tmp / _RL_STATE, state)
    for old in _checkpoints(Path(output_dir)):
        if old != final:
            shutil.rmtree(old)
    return final


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restores a `save_checkpoint` folder into the model, optimizer, scheduler and torch's RNG.

    Returns:
        The run state saved with it.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    load_trainable_state(model, load_file(path / _RL_WEIGHTS))
    saved = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return json.loads((path / _RL_STATE).read_text(encoding="utf-8"))


def prepare_run_dir(output_dir: str | Path, resume: bool, is_main_process: bool = True) -> Path | None:
    """Checks a training run's output_dir, and finds the checkpoint to resume from.

    Without `resume`, a folder holding anything but TensorBoard logs (``runs/``) is an earlier run and is
    refused. With it, the latest complete checkpoint is returned (None when there is none) and, on the
    main process, the checkpoints left incomplete are removed.
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir, "the run")
    if not output_dir.is_dir():
        return None
    if is_main_process:  # before anything in it is looked at, or removed
        lock_run_dir(output_dir)
    if resume:
        last = last_complete_checkpoint(output_dir)
        if is_main_process:
            remove_incomplete_checkpoints(output_dir)
        if last is None:
            logger.info("no complete checkpoint in %s: starting from the beginning", output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if any(p.name != "runs" for p in output_dir.iterdir()):
        raise TitlegenError(
            f"{output_dir} already holds a run; pass --resume to continue it, or choose another --output_dir"
        )
    return None


# The output_dirs this process holds a lock on, each with the open folder that holds it.
_RUN_DIR_LOCKS: dict[Path, int] = {}


def lock_run_dir(output_dir: str | Path) -> None:
    """Takes an exclusive lock on a training run's output_dir (created if need be), held until the command that
    took it ends (`releases_run_dir_locks`), so that two runs (a resumed one, say) never write one folder together;
    the second is refused.

    The lock is on the folder itself (flock), so that no lock file is left behind; taking it again is a no-op.
    Only the main process of a distributed run takes it.
    """
    path = Path(output_dir).resolve()
    if path in _RUN_DIR_LOCKS:
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TitlegenError(
            f"{output_dir}: another run is writing to this output_dir; wait for it to finish, or choose another "
            "--output_dir"
        ) from None
    _RUN_DIR_LOCKS[path] = fd


def releases_run_dir_locks(command):
    """Decorates a training command: the output_dir locks it takes (`lock_run_dir`) are released when it returns."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        finally:
            while _RUN_DIR_LOCKS:
                os.close(_RUN_DIR_LOCKS.popitem()[1])

    return run
