"""Ending a run safely: a signal saves a checkpoint first, and a NaN loss stops before it spoils the weights."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import titlegen.modeling
import titlegen.recipes.train
from titlegen.callbacks import TrainingTimeBudget
from titlegen.checkpoints import is_complete_checkpoint
from titlegen.recipes.train import main as train_main
from titlegen.recipes.train import train

from .conftest import NO_EVAL, ROOT, subprocess_env, tiny_train_args


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_stops(tmp_path, signum):
    run = tmp_path / "run"
    args = tiny_train_args(run, *NO_EVAL, "--max_steps", "100000", "--save_strategy", "no", "--logging_steps", "20")
    child = subprocess.Popen(
        [sys.executable, "-m", "titlegen.recipes.train", *args],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in child.stdout:  # the Trainer prints a loss line every 20 steps
            if line.startswith("{'loss'"):
                child.send_signal(signum)
                break
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 128 + signum, stderr

    checkpoints = [p for p in run.iterdir() if p.name.startswith("checkpoint-")]
    assert len(checkpoints) == 1, "save_strategy is 'no': the only checkpoint is the one the signal asked for"
    step = int(checkpoints[0].name.split("-")[1])
    assert 20 <= step < 100000 and is_complete_checkpoint(checkpoints[0])
    name = signal.Signals(signum).name
    assert f"interrupted: stopped by {name} at step {step}; saved {run}/checkpoint-{step}." in stderr
    assert "--resume true" in stderr
    assert "Traceback" not in stderr
    assert not (run / "model.safetensors").exists(), "nothing after training ran"

    # The checkpoint is a real one: the run continues from it.
    train(tiny_train_args(run, *NO_EVAL, "--max_steps", str(step + 1), "--resume", "true"))
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == step + 1


def inject_nan_at_training_forward(n: int):
    """Wraps build_model so that the n-th training forward pass overflows: the encoder's output becomes NaN."""
    build_model = titlegen.modeling.build_model

    def build_overflowing_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        calls = 0

        def overflow(module, inputs, output):
            nonlocal calls
            if module.training:
                calls += 1
                if calls == n:
                    output.last_hidden_state = output.last_hidden_state * float("nan")
            return output

        model.get_encoder().register_forward_hook(overflow)
        return model

    return build_overflowing_model


@pytest.mark.slow
def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(titlegen.modeling, "build_model", inject_nan_at_training_forward(3))
    run = tmp_path / "run"
    assert train_main(tiny_train_args(run, *NO_EVAL, "--save_strategy", "steps", "--save_steps", "1")) == 2
    err = capsys.readouterr().err
    assert (
        "error: step 3: the training loss is NaN or infinite, so training stopped before this step changed the "
        f"weights; the last good checkpoint is {run}/checkpoint-2 (continue from it with --resume true)"
    ) in err
    assert "mT5 must not train under fp16 (use bf16 or fp32)" in err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert is_complete_checkpoint(run / "checkpoint-2")
    weights = load_file(run / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (run / "model.safetensors").exists(), "no final model is saved from a failed run"


@pytest.mark.slow
def test_without_the_guard_the_trainer_trains_on_through_nan(tmp_path, monkeypatch):
    """Why the guard exists: transformers only hides a NaN loss from its logs, and the weights turn to NaN."""

    monkeypatch.setattr(titlegen.modeling, "build_model", inject_nan_at_training_forward(3))
    monkeypatch.setattr("titlegen.callbacks.NonFiniteLossGuard.on_pre_optimizer_step", lambda *a, **k: None)
    run = tmp_path / "run"
    titlegen.recipes.train.train(tiny_train_args(run, *NO_EVAL, "--max_steps", "4", "--save_strategy", "no"))
    weights = load_file(run / "model.safetensors")
    assert not all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
def test_a_time_budget_stops_training_and_evaluates_the_last_step(tmp_path):

    run = tmp_path / "run"
    budget = TrainingTimeBudget(minutes=0.0)  # spent by the first step
    args = ("--max_steps", "50", "--eval_strategy", "steps", "--eval_steps", "20", "--save_strategy", "steps")
    train(tiny_train_args(run, *args, "--save_steps", "20"), callbacks=[budget])

    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert [e["step"] for e in budget.evaluations] == [1], "the step that spends the budget is evaluated"
    assert budget.evaluations[0]["train_minutes"] > 0
    assert "eval_rouge-l" in budget.evaluations[0]
    assert (run / "checkpoint-1").is_dir(), "and saved, so that the best model can be loaded at the end"
