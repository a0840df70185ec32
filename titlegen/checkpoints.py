"""Which training checkpoints a run can resume from.

transformers' Trainer writes ``checkpoint-N`` in place, file after file: the model, the optimizer and
scheduler, the random states, and ``trainer_state.json`` last (process 0 writes it after its own
files). ``transformers.trainer_utils.get_last_checkpoint`` returns the highest-numbered folder whether
or not it was finished, so a run killed while saving would resume from half a checkpoint. Here a
checkpoint counts only when its ``trainer_state.json`` is whole JSON for step N and its weights exist.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

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


def checkpoint_step(folder: str | Path) -> int | None:
    """The step N of a ``checkpoint-N`` folder name, or None for any other name."""
    match = _CHECKPOINT.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` is a ``checkpoint-N`` that the Trainer finished writing."""
    folder = Path(folder)
    step = checkpoint_step(folder)
    if step is None or not folder.is_dir():
        return False
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return state.get("global_step") == step and any((folder / name).is_file() for name in _WEIGHTS)


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
