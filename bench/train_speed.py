"""Training speed on real data: titlegen's recipe against the plain transformers summarization recipe.

    python -m bench.train_speed [--steps 25] [--batch_size 16] [--repeats 2] [--bf16 false] [--profile]

Both sides train the same model (mT5-small's shape: MT5Config's defaults, built by
``titlegen.modeling.build_model`` with the same seed) on the same LCSTS training pairs, tokenized by the same
32k-vocabulary tokenizer (trained here on LCSTS train), with the same batch size, sequence limits and number of
optimizer steps: two epochs over `steps` x `batch_size` pairs drawn at random from LCSTS train, the first a
warm-up, the second timed.

* titlegen: ``titlegen/recipes/train.py`` with its defaults for a CPU: flush-to-zero, bf16 autocast,
  length-grouped batches, freed memory kept for reuse;
* plain: a copy of ``run_summarization.py``'s training: ``Seq2SeqTrainer``, fp32, dynamic padding, random batches.

Both sides time an epoch over the same pairs, so that they process the same tokens. Timing a few steps of the
whole file instead would favour the plain recipe: transformers' length-grouped sampler starts an epoch with
its longest batches (so that running out of memory shows at once), so titlegen's first steps see longer
articles than random batches do (in 6 steps after 2 of warm-up, 19% more tokens per sample).

Each run is a fresh process (so peak memory is its own); runs alternate (titlegen, plain, titlegen, ...) with a
matmul probe before each pair, so that both sides see the same load on a shared machine; the table gives the
median over runs. Model FLOPs count the matmuls of the real (unpadded) tokens: 6 x parameters x tokens for the
linear layers and the output layer, plus attention scores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import multiprocessing
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import LCSTS, machine, markdown_table
from titlegen.data import read_jsonl, write_jsonl
from titlegen.model_folder import load_tokenizer
from titlegen.modeling import build_model
from titlegen.preprocessing import make_tokenize_fn, to_features
from titlegen.recipes.train import train
from titlegen.tokenizer import train_tokenizer

TRAIN_FILE = LCSTS / "train.zh-tw.jsonl"
VALIDATION_FILE = LCSTS / "validation.zh-tw.jsonl"
MAX_SOURCE_LENGTH = 128  # LCSTS articles are ~110 characters
MAX_TARGET_LENGTH = 32
RECIPES = ("titlegen", "plain")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=25, help="optimizer steps per epoch: the run trains on steps x batch_size pairs"
    )
    parser.add_argument("--batch_size", type=int, default=16, help="global batch, both recipes")
    parser.add_argument("--repeats", type=int, default=2, help="runs per recipe, alternating")
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--bf16", default="true", choices=("true", "false"), help="titlegen's side under bf16 autocast")
    # On a busy 2-core machine, two threads spend most of their time waiting for each other.
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both recipes and the matmul probe")
    parser.add_argument("--profile", action="store_true", help="print where titlegen's step time goes, then stop")
    return parser.parse_args(argv)


class StepTimer:
    """Times each optimizer step and counts the real tokens its forward passes saw.

    A ``TrainerCallback`` (built in the child process, where transformers is imported). The Trainer hands
    the labels to titlegen's loss function, not to the model, so the tokens are counted as batches leave
    ``DataCollatorForSeq2Seq`` (both recipes use it) and credited to the training forward pass that takes
    each batch, in order.
    """

    @staticmethod
    def create():
        import collections

        from transformers import DataCollatorForSeq2Seq, TrainerCallback

        class _StepTimer(TrainerCallback):
            def __init__(self):
                self.steps: list[dict] = []
                self._tokens = [0, 0, 0]  # samples, source tokens, target tokens since the step began
                self._collated: collections.deque = collections.deque()
                collate = DataCollatorForSeq2Seq.__call__

                def counting_collate(collator, features, *args, **kwargs):
                    batch = collate(collator, features, *args, **kwargs)
                    labels = batch.get("labels")
                    self._collated.append(
                        (
                            batch["input_ids"].shape[0],
                            int(batch["attention_mask"].sum()),
                            int((labels != -100).sum()) if labels is not None else 0,
                        )
                    )
                    return batch

                DataCollatorForSeq2Seq.__call__ = counting_collate

            def _count(self, module, args, kwargs):
                if module.training and self._collated:
                    for i, n in enumerate(self._collated.popleft()):
                        self._tokens[i] += n

            def on_train_begin(self, args, state, control, model=None, **kwargs):
                self._collated.clear()
                model.register_forward_pre_hook(self._count, with_kwargs=True)

            def on_step_begin(self, args, state, control, **kwargs):
                self._tokens = [0, 0, 0]
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                samples, source, target = self._tokens
                seconds = time.perf_counter() - self._start
                self.steps.append({"seconds": seconds, "samples": samples, "source": source, "target": target})

        return _StepTimer()


def _titlegen_argv(
    train_file: str, tokenizer_dir: str, output_dir: str, max_steps: int, batch_size: int, bf16: str
) -> list[str]:
    # No --config: the dataclasses' defaults, i.e. mT5-small's shape, plus the CPU settings titlegen's configs use.
    return [
        "--model_type", "mt5",
        "--tokenizer_name", tokenizer_dir,
        "--train_file", train_file,
        "--validation_file", str(VALIDATION_FILE),
        "--max_eval_samples", str(batch_size),
        "--max_source_length", str(MAX_SOURCE_LENGTH),
        "--max_target_length", str(MAX_TARGET_LENGTH),
        "--output_dir", output_dir,
        "--per_device_train_batch_size", str(batch_size),
        "--max_steps", str(max_steps),
        "--bf16", bf16,
        "--train_sampling_strategy", "group_by_length",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--load_best_model_at_end", "false",
        "--predict_with_generate", "false",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--logging_steps", "1000",
        "--seed", "42",
    ]  # fmt: skip


def _train_plain(
    train_file: str, tokenizer_dir: str, output_dir: str, max_steps: int, batch_size: int, callback
) -> None:
    """What a user copies from transformers' examples/pytorch/summarization/run_summarization.py."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, set_seed

    torch.set_flush_denormal(False)
    set_seed(42)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model("mt5", tokenizer)  # the same model and weights as titlegen's side
    columns = ("id", "maintext", "title")
    tokenize = make_tokenize_fn(tokenizer, "maintext", "title", MAX_SOURCE_LENGTH, MAX_TARGET_LENGTH)
    train_dataset = to_features(read_jsonl(train_file, fields=columns), columns, tokenize, desc="tokenizing")
    args = Seq2SeqTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=max_steps,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        seed=42,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=[callback],
    )
    trainer.train()


def run_recipe(
    recipe: str,
    train_file: str,
    tokenizer_dir: str,
    max_steps: int,
    batch_size: int,
    bf16: str,
    threads: int,
    profile_steps=None,
) -> dict:
    """Trains `max_steps` steps with one recipe in this process; returns its step timings and peak memory."""
    import logging

    import datasets
    import torch
    import transformers

    torch.set_num_threads(threads)

    logging.disable(logging.WARNING)
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    timer = StepTimer.create()
    callbacks = [timer] if profile_steps is None else [timer, _profiler_callback(*profile_steps)]
    with tempfile.TemporaryDirectory() as output_dir:
        if recipe == "titlegen":
            train(
                _titlegen_argv(train_file, tokenizer_dir, output_dir, max_steps, batch_size, bf16), callbacks=callbacks
            )
        else:
            _train_plain(train_file, tokenizer_dir, output_dir, max_steps, batch_size, timer)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"recipe": recipe, "steps": timer.steps, "peak_mib": peak_mib}


def _profiler_callback(first: int, last: int):
    """Profiles optimizer steps first..last (1-based) and prints the operators that took the most time."""
    import torch
    from transformers import TrainerCallback

    class _Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == first:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == last:
                self.prof.__exit__(None, None, None)
                print(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), flush=True)

    return _Profile()


def in_child(fn, *args, **kwargs):
    """Runs fn(*args, **kwargs) in a fresh process, so that its imports, settings and peak memory are its own."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def matmul_flops(dtype_name: str, n: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of repeated n x n torch.matmul at a dtype: this CPU's practical peak for the model's matmuls."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def model_shape(tokenizer_dir: str) -> dict:
    """Parameter counts and sizes of the benchmarked model, for its FLOPs per token."""

    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model("mt5", tokenizer)
    config = model.config

    def linear_params(module) -> int:  # weights that multiply activations (embedding lookups do not)
        return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight") and p.dim() == 2)

    return {
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "encoder": sum(linear_params(layer) for layer in model.encoder.block),
        "decoder": sum(linear_params(layer) for layer in model.decoder.block) + model.lm_head.weight.numel(),
        "attention_width": config.num_heads * config.d_kv,
        "num_layers": config.num_layers,
        "num_decoder_layers": config.num_decoder_layers,
    }


def step_flops(step: dict, shape: dict, batch_size: int) -> float:
    """Training FLOPs (forward and backward, 3x forward) of one step's real tokens."""
    source, target = step["source"], step["target"]
    # Attention scores (QK^T and AV) per sequence, with the batch's mean lengths.
    src_len, tgt_len = source / batch_size, target / batch_size
    width = shape["attention_width"]
    attention = (
        batch_size
        * 2
        * 2
        * width
        * (shape["num_layers"] * src_len**2 + shape["num_decoder_layers"] * (tgt_len**2 + tgt_len * src_len))
    )
    return 3 * (2 * shape["encoder"] * source + 2 * shape["decoder"] * target + attention)


def epoch_rates(steps: list[dict], shape: dict, batch_size: int) -> dict:
    """Seconds, samples/s, real tokens/s and model FLOP/s of the timed epoch of one run."""
    seconds = sum(s["seconds"] for s in steps)
    return {
        "seconds": seconds,
        "samples/s": sum(s["samples"] for s in steps) / seconds,
        "tokens/s": sum(s["source"] + s["target"] for s in steps) / seconds,
        "flop/s": sum(step_flops(s, shape, batch_size) for s in steps) / seconds,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        records = read_jsonl(TRAIN_FILE, fields=("id", "maintext", "title"))
        tokenizer_dir = str(Path(tmp) / "tokenizer")
        train_tokenizer((r[c] for r in records for c in ("maintext", "title")), tokenizer_dir, args.vocab_size)
        train_file = str(Path(tmp) / "train.jsonl")
        write_jsonl(train_file, random.Random(42).sample(records, args.steps * args.batch_size))
        shape = in_child(model_shape, tokenizer_dir)
        print(
            f"model: mT5-small shape, {shape['parameters'] / 1e6:.1f}M parameters, vocabulary {shape['vocab_size']} "
            f"(asked {args.vocab_size}); batch {args.batch_size}, source <= {MAX_SOURCE_LENGTH} and target <= "
            f"{MAX_TARGET_LENGTH} tokens; {args.steps * args.batch_size} LCSTS training pairs, a warm-up epoch and "
            f"a timed epoch of {args.steps} steps; {args.repeats} runs per recipe",
            flush=True,
        )
        run = functools.partial(
            run_recipe,
            train_file=train_file,
            tokenizer_dir=tokenizer_dir,
            max_steps=2 * args.steps,
            batch_size=args.batch_size,
            bf16=args.bf16,
            threads=args.threads,
        )
        if args.profile:  # the first three steps of the timed epoch
            in_child(run, "titlegen", profile_steps=(args.steps + 1, args.steps + 3))
            return
        rates = {recipe: [] for recipe in RECIPES}
        peak_mib = {recipe: 0.0 for recipe in RECIPES}
        probes = {"bfloat16": [], "float32": []}
        for repeat in range(args.repeats):
            for dtype in probes:
                probes[dtype].append(matmul_flops(dtype))
            for recipe in RECIPES:
                result = in_child(run, recipe)
                rates[recipe].append(epoch_rates(result["steps"][args.steps :], shape, args.batch_size))
                peak_mib[recipe] = max(peak_mib[recipe], result["peak_mib"])
                print(
                    f"run {repeat + 1}/{args.repeats} {recipe}: epoch {rates[recipe][-1]['seconds']:.1f} s", flush=True
                )
    peak = {dtype: statistics.median(values) for dtype, values in probes.items()}
    median = {
        recipe: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for recipe, runs in rates.items()
    }
    rows = []
    for recipe in RECIPES:
        dtype = "bfloat16" if recipe == "titlegen" and args.bf16 == "true" else "float32"
        m = median[recipe]
        rows.append(
            [
                recipe,
                "bf16 autocast" if dtype == "bfloat16" else "fp32",
                m["seconds"],
                m["samples/s"],
                m["tokens/s"],
                f"{m['samples/s'] / median['plain']['samples/s']:.2f}x",
                peak_mib[recipe],
                m["flop/s"] / 1e9,
                f"{100 * m['flop/s'] / peak[dtype]:.0f}% of {peak[dtype] / 1e9:.0f} ({dtype})",
            ]
        )
    print()
    print(
        markdown_table(
            [
                "recipe",
                "dtype",
                "timed epoch (s)",
                "samples/s",
                "tokens/s",
                "speed vs plain",
                "peak RSS (MiB)",
                "model GFLOP/s",
                "share of matmul peak (GFLOP/s)",
            ],
            rows,
        )
    )
    print(f"\n{torch.get_num_threads()} threads; load average at the end: {machine().split(' | ')[2]}")


if __name__ == "__main__":
    main()
