"""Resuming training: only complete checkpoints count, and a run killed with SIGKILL resumes to the same weights."""

import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from titlegen.checkpoints import is_complete_checkpoint, last_complete_checkpoint, remove_incomplete_checkpoints
from titlegen.recipes.train import train

from .conftest import NO_EVAL, ROOT, logged_losses, subprocess_env, tiny_train_args


def fake_checkpoint(output_dir, step, *, state=True, weights=True, state_step=None):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": state_step or step}))
    return folder


def test_only_finished_checkpoints_count(tmp_path):
    done = fake_checkpoint(tmp_path, 2)
    no_state = fake_checkpoint(tmp_path, 4, state=False)  # killed before its trainer state was written
    torn = fake_checkpoint(tmp_path, 6)
    (torn / "trainer_state.json").write_text('{"global_step": 6, "log_hist')  # killed while writing it
    other_step = fake_checkpoint(tmp_path, 8, state_step=7)
    no_weights = fake_checkpoint(tmp_path, 10, weights=False)
    (tmp_path / "checkpoint-12").write_text("a file, not a folder")

    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-10"), "transformers picks any folder"
    assert [is_complete_checkpoint(p) for p in (done, no_state, torn, other_step, no_weights)] == [True] + [False] * 4
    assert last_complete_checkpoint(tmp_path) == done
    assert last_complete_checkpoint(tmp_path / "missing") is None

    removed = remove_incomplete_checkpoints(tmp_path)
    assert removed == [no_state, torn, other_step, no_weights]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-12", "checkpoint-2"]


# Runs the training recipe and kills it with SIGKILL while it saves checkpoint-4: the model, optimizer
# and scheduler are on disk, the random states and trainer_state.json are not.
KILLED_WHILE_SAVING = """
import os, signal, sys
from transformers import Trainer

save_rng_state = Trainer._save_rng_state

def kill_while_saving(self, output_dir):
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)

Trainer._save_rng_state = kill_while_saving
from titlegen.recipes.train import main
sys.exit(main(sys.argv[1:]))
"""

# 12 articles, batches of 4: 3 steps an epoch, 6 in all, a checkpoint every 2 (one of them mid-epoch).
RESUMABLE = ("--save_strategy", "steps", "--save_steps", "2", "--bf16", "false", *NO_EVAL)


@pytest.mark.slow
def test_a_run_killed_while_saving_resumes_to_the_same_weights(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train(tiny_train_args(reference, *RESUMABLE))

    result = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, *tiny_train_args(killed, *RESUMABLE)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert (killed / "checkpoint-4" / "model.safetensors").is_file(), "killed in the middle of the save"
    assert not is_complete_checkpoint(killed / "checkpoint-4")
    assert last_complete_checkpoint(killed) == killed / "checkpoint-2"
    assert not (killed / "model.safetensors").exists()

    train(tiny_train_args(killed, *RESUMABLE, "--resume", "true"))
    assert list(logged_losses(killed)) == [1, 2, 3, 4, 5, 6]
    assert logged_losses(killed) == pytest.approx(logged_losses(reference), rel=1e-5)
    expected, resumed = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_pickles_are_loaded_without_running_code(trained_dir, tmp_path):
    """A checkpoint's optimizer, scheduler and random states are pickles; resuming never executes one."""
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state": Payload()}, last_complete_checkpoint(run) / "optimizer.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        train(tiny_train_args(run, "--num_train_epochs", "3", "--resume", "true"))
    assert not marker.exists()
