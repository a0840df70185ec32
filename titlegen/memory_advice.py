"""What to do when a run runs out of memory: the settings that were in use and the switches to try, in order.

`out_of_memory_advice` turns an out-of-memory error of training or generation into a one-line `TitlegenError`
with that advice; the training switches are ordered by what the memory estimate (`titlegen.memory`) says each
one saves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from titlegen import TitlegenError
from titlegen.checkpoints import last_complete_checkpoint
from titlegen.memory import SETTINGS, estimate_training_memory, format_bytes, format_value, memory_settings


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA's out-of-memory error, Python's MemoryError and the CPU allocator's failure.

    Also for accelerate's "No executable batch size found" after ``auto_find_batch_size`` reached 0.
    """
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or should_reduce_batch_size(err):
        return True
    return isinstance(err, RuntimeError) and "No executable batch size found" in str(err)


@contextlib.contextmanager
def out_of_memory_advice(advice: Callable[..., str], *args) -> Iterator[None]:
    """Turns an out-of-memory error inside the block into a `TitlegenError` whose message is ``advice(*args)``.

    `advice` is called after the error, so it sees how far the run got. Nothing is deleted:
    checkpoints written before the error stay usable.
    """
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise TitlegenError(advice(*args)) from err


def training_advice(trainer, data_args) -> str:
    """What was in use and what to try, after a `Seq2SeqTrainer` ran out of memory.

    Args:
        trainer: The trainer; whether its model was in training mode tells training from evaluation.
        data_args: The run's `DataArguments` (sequence lengths).
    """

    args, model = trainer.args, trainer.model
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    precision = f"{dtype} weights" + (
        " with bf16 autocast" if args.bf16 else " with fp16 autocast" if args.fp16 else ""
    )
    lengths = f"max_source_length {data_args.max_source_length}, max_target_length {data_args.max_target_length}"
    if model.training:
        settings = memory_settings(args, data_args)
        # auto_find_batch_size may have lowered the batch before giving up.
        settings["per_device_train_batch_size"] = trainer.state.train_batch_size or args.per_device_train_batch_size
        peak = _estimated_peak(model, settings, {})
        lines = [
            f"out of memory while training: per_device_train_batch_size {settings['per_device_train_batch_size']} "
            f"x gradient_accumulation_steps {args.gradient_accumulation_steps}, {lengths}, {precision}, "
            f"optim {settings['optim']}, activation_checkpointing {format_value(args.activation_checkpointing)}"
            + ("." if peak is None else f" (estimated peak {format_bytes(peak)})."),
            "Try these switches, in order (each as a flag or in the config):",
            *_numbered(_training_switches(model, settings)),
        ]
    else:  # generating titles for the validation set
        batch, beams = args.per_device_eval_batch_size, args.generation_num_beams or 1
        lines = [
            f"out of memory while generating for evaluation: per_device_eval_batch_size {batch} x "
            f"generation_num_beams {beams}, {lengths}, {precision}.",
            "Try these switches, in order (each as a flag or in the config):",
            *_numbered(_generation_switches("per_device_eval_batch_size", batch, "generation_num_beams", beams)),
        ]
    checkpoint = last_complete_checkpoint(args.output_dir)
    if checkpoint:
        lines.append(f"{checkpoint} is complete: add --resume true to continue from it with the new settings.")
    return "\n".join(lines)


def generation_advice(batch_size: int, num_beams: int, bf16: bool, max_source_length: int) -> str:
    """What was in use and what to try, after ``titlegen-predict`` ran out of memory."""
    switches = _generation_switches("batch_size", batch_size, "num_beams", num_beams)
    if not bf16:
        switches.append("--bf16 true   bfloat16 activations (not fp16: mT5 overflows in it)")
    switches.append(f"--max_source_length {max(1, max_source_length // 2)}   shorter articles")
    precision = "bf16 autocast" if bf16 else "float32"
    return "\n".join(
        [
            f"out of memory while generating: batch_size {batch_size} x num_beams {num_beams}, "
            f"max_source_length {max_source_length}, {precision}.",
            "Try these switches, in order:",
            *_numbered(switches),
        ]
    )


def _training_switches(model, settings: dict) -> list[str]:
    """Each switch on its own, with the peak it is estimated to give, the most effective first.

    Shorter articles change what the model learns from, so they come last whatever they save.
    """
    batch, steps = settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"]
    switches = []  # (flags, why)
    if batch > 1:
        halved = {"per_device_train_batch_size": batch // 2, "gradient_accumulation_steps": steps * 2}
        switches.append((halved, f"the same effective batch of {batch * steps}, half the activations"))
    if not settings["activation_checkpointing"]:
        switches.append(
            ({"activation_checkpointing": True}, "recompute layers in the backward pass: one more forward a step")
        )
    if not settings["bf16"]:
        switches.append(({"bf16": True}, "bfloat16 autocast, on GPUs that have it (not fp16: mT5 overflows)"))
    if settings["optim"] != "adafactor":
        adafactor = {"optim": "adafactor", "learning_rate": 1e-3}
        switches.append((adafactor, "T5's optimizer, without Adam's two moments per weight"))
    shorter = ({"max_source_length": max(1, settings["max_source_length"] // 2)}, "shorter articles")

    peaks = [_estimated_peak(model, settings, flags) for flags, _ in switches]
    ranked = list(zip(switches, peaks, strict=True))
    if None not in peaks:
        ranked.sort(key=lambda switch_peak: switch_peak[1])
    ranked.append((shorter, _estimated_peak(model, settings, shorter[0])))
    lines = []
    for (flags, why), peak in ranked:
        switch = " ".join(f"--{k} {format_value(v)}" for k, v in flags.items())
        estimate = "" if peak is None else f" (estimated peak {format_bytes(peak)})"
        lines.append(f"{switch}   {why}{estimate}")
    return lines


def _estimated_peak(model, settings: dict, flags: dict) -> int | None:
    """The estimated peak with `flags` applied to `settings`; None for models outside the T5 family."""
    changed = {k: v for k, v in flags.items() if k in SETTINGS}
    try:
        return estimate_training_memory(model, **{**settings, **changed}).peak
    except TitlegenError:
        return None


def _generation_switches(batch_flag: str, batch: int, beams_flag: str, beams: int) -> list[str]:
    switches = []
    if batch > 1:
        switches.append(f"--{batch_flag} {batch // 2}   fewer articles per generate call")
    if beams > 1:
        switches.append(f"--{beams_flag} {max(1, beams // 2)}   fewer beams per article")
    return switches


def _numbered(switches: list[str]) -> list[str]:
    return [f"  {i}. {switch}" for i, switch in enumerate(switches, start=1)]
