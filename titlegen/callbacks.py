"""Trainer callbacks that end a run safely (on a signal, on a NaN or infinite loss) or on time (a training budget).

Each takes its decision in every process at the same step (see `titlegen.distributed.any_process`),
so they work unchanged under ``torchrun`` and ``accelerate launch``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import torch
from transformers import TrainerCallback

from titlegen import TitlegenError
from titlegen.checkpoints import last_complete_checkpoint
from titlegen.distributed import any_process, wait_for_everyone

logger = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint.

    Attributes:
        exit_status: 128 + the signal number, as a shell reports a process ended by that signal.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


class NonFiniteLossError(TitlegenError):
    """The training loss became NaN or infinite."""


class StopOnSignal(TrainerCallback):
    """On SIGINT (Ctrl-C) or SIGTERM, saves a checkpoint at the end of the current step and stops.

    The handlers are installed when training begins and the previous ones are restored when it ends.
    Once the checkpoint is written, `Interrupted` is raised, so nothing after training (the final save
    or evaluation) runs; ``--resume true`` continues from that checkpoint. A second signal does not
    cut the save short: launchers such as ``torchrun`` pass Ctrl-C on to processes that already got it.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.received: int | None = None
        self._stopping = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            logger.warning("%s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)
        else:
            logger.warning("already stopping; the checkpoint is being saved (SIGKILL stops at once)")

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _stop_requested(self, args) -> bool:
        return any_process(self.received is not None, args.device)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training outside the main thread: a signal will not save a checkpoint")
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_requested(args):
            self._stopping = True
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        # A signal that came after the epoch's last step (during its evaluation, say), when no step is
        # left to end: this is also the last chance before training finishes.
        self.on_step_end(args, state, control, **kwargs)

    def on_save(self, args, state, control, **kwargs):
        if not self._stopping:
            return
        wait_for_everyone()  # a launcher stops all processes once one exits: let every save finish first
        self._restore_handlers()
        signum = self.received or signal.SIGTERM
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} at step {state.global_step}; saved "
            f"{args.output_dir}/checkpoint-{state.global_step}. Continue with the same command and --resume true",
            signum,
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._restore_handlers()


class NonFiniteLossGuard(TrainerCallback):
    """Stops training at the first optimizer step whose loss is NaN or infinite, before it changes the weights.

    transformers' Trainer only hides such losses from its logs (``logging_nan_inf_filter``) and steps
    on, which turns every weight into NaN and every later checkpoint into garbage. Here a forward hook
    records whether each training forward pass gave a finite loss (or finite logits, when the Trainer
    computes the loss itself, as with label smoothing), and the check before each optimizer step raises
    `NonFiniteLossError`: no checkpoint is written after the last good one. The check costs one
    device-to-host copy of a flag per optimizer step.
    """

    def __init__(self):
        self._hook = None
        self._nonfinite = None

    def _record(self, module, inputs, output) -> None:
        if not module.training:
            return
        loss = getattr(output, "loss", None)
        # NaN and inf survive a sum, so one reduction checks the logits without a copy of their size.
        value = loss.detach() if loss is not None else output.logits.detach().sum()
        bad = ~torch.isfinite(value)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._hook = model.register_forward_hook(self._record)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        nonfinite = self._nonfinite if self._nonfinite is not None else False
        self._nonfinite = None
        if not any_process(nonfinite, args.device):
            return
        self._remove_hook()
        step = state.global_step + 1
        last = last_complete_checkpoint(args.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        if args.fp16:
            advice = "mT5 overflows under fp16: train with --bf16 true --fp16 false (or in fp32)"
        else:
            advice = (
                "lower learning_rate, set max_grad_norm, or check the data; mT5 must not train under fp16 "
                "(use bf16 or fp32)"
            )
        raise NonFiniteLossError(
            f"step {step}: the training loss is NaN or infinite, so training stopped before this step changed "
            f"the weights; {kept} (continue from it with --resume true). To fix it: {advice}"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class TrainingTimeBudget(TrainerCallback):
    """Stops training once its optimizer steps have taken `minutes`, and keeps validation scores against that time.

    Only the steps are timed: evaluation and checkpointing are not training time. At the step that spends
    the budget, the model is evaluated and saved, so that ``load_best_model_at_end`` sees the last weights.

    Attributes:
        evaluations: One ``{"step", "train_minutes", **metrics}`` per evaluation, in order.
    """

    def __init__(self, minutes: float):
        self.minutes = minutes
        self.evaluations: list[dict] = []
        self._seconds = 0.0
        self._start = 0.0

    @property
    def train_minutes(self) -> float:
        """Minutes spent in optimizer steps so far."""
        return self._seconds / 60

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._seconds += time.perf_counter() - self._start
        if any_process(self.train_minutes >= self.minutes, args.device) and not control.should_training_stop:
            logger.info("training time budget of %.1f minutes spent at step %d", self.minutes, state.global_step)
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append({"step": state.global_step, "train_minutes": self.train_minutes, **(metrics or {})})
