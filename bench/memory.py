"""Peak memory of one mT5-small training step for each memory switch: measured, and estimated.

    python -m bench.memory                 # about 30 minutes on 2 CPU cores (or on a GPU, if there is one)
    python -m bench.memory --batch_size 8 --source_length 64

The model has mT5-small's shape (MT5Config's defaults: d_model 512, 8 + 8 layers, 6 heads, d_ff 1024,
the full 250,112-token vocabulary) with its own output layer, as google/mt5-small has, and random
weights: nothing is downloaded. The inputs are real LCSTS articles and titles from
../shared/data/lcsts, tokenized by a SentencePiece tokenizer trained on the LCSTS training text; every
batch holds articles of at least --source_length tokens and titles of at least --target_length tokens,
cut to those lengths, so batches are full length, the case `titlegen.memory` estimates.

Each configuration runs --steps optimizer steps of transformers' Seq2SeqTrainer, as titlegen-train
does, in a fresh Python process, so that none inherits memory from another. Its peak is
- on CUDA, ``torch.cuda.max_memory_allocated()``: the live tensors at their peak;
- on CPU, the process's peak resident memory (VmHWM) minus its resident memory just before the model
  was built: weights, gradients, optimizer state, activations and every temporary. The process runs
  with MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns each freed block of 64 KiB or more to the
  system at once; its default, adaptive threshold keeps blocks of up to 32 MiB for reuse, and the
  resident memory would then count tensors that PyTorch has already freed.

Prints a table with the ratio of each peak to the default's and the estimate next to it, and writes
bench/results/memory.json and bench/results/memory.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import LCSTS, ROOT, machine, markdown_table
from titlegen.cpu import configure_cpu
from titlegen.data import read_jsonl, write_json
from titlegen.loss import title_loss
from titlegen.memory import SETTINGS, estimate_training_memory
from titlegen.modeling import untie_output_layer
from titlegen.preprocessing import make_tokenize_fn
from titlegen.tokenizer import train_tokenizer

RESULTS = ROOT / "bench" / "results"
GIB = 2**30


def configurations(batch_size: int) -> dict[str, dict]:
    """The training settings of each configuration, by their config names (titlegen-train's flags)."""
    default = {
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": 1,
        "optim": "adamw_torch_fused",  # transformers' default
        "learning_rate": 1e-4,
        "bf16": False,
        "activation_checkpointing": False,
    }
    halved = {"per_device_train_batch_size": batch_size // 2, "gradient_accumulation_steps": 2}
    adafactor = {"optim": "adafactor", "learning_rate": 1e-3}
    return {
        "default (AdamW, fp32)": default,
        "activation_checkpointing": {**default, "activation_checkpointing": True},
        "optim adafactor": {**default, **adafactor},
        "bf16 autocast": {**default, "bf16": True},
        f"batch {batch_size // 2} x 2 accumulation": {**default, **halved},
        "all four switches": {**default, **halved, **adafactor, "bf16": True, "activation_checkpointing": True},
    }


def mt5_small(device: str = "cpu"):
    """A randomly initialised model of mT5-small's shape with its own output layer, as google/mt5-small has."""
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration

    with torch.device(device):
        model = MT5ForConditionalGeneration(MT5Config())
        untie_output_layer(model)  # MT5Config always ties it
    return model


def full_length_examples(tokenizer, source_length: int, target_length: int, count: int):
    """The first `count` LCSTS training pairs long enough to fill both lengths, tokenized and cut to them."""
    from datasets import Dataset

    tokenize = make_tokenize_fn(tokenizer, "maintext", "title", source_length, target_length)
    examples = {"input_ids": [], "attention_mask": [], "labels": []}
    for record in read_jsonl(LCSTS / "train.zh-tw.jsonl", fields=("maintext", "title")):
        features = tokenize({"maintext": [record["maintext"]], "title": [record["title"]]})
        if len(features["input_ids"][0]) == source_length and len(features["labels"][0]) == target_length:
            for name in examples:
                examples[name].append(features[name][0])
            if len(examples["labels"]) == count:
                return Dataset.from_dict(examples)
    raise SystemExit(f"LCSTS has fewer than {count} pairs of {source_length} and {target_length} tokens")


def resident_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(settings: dict, tokenizer_dir: str, source_length: int, target_length: int, steps: int) -> dict:
    """Trains `steps` steps with `settings` and returns the peak memory and the time per step."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    cuda = torch.cuda.is_available()
    if not cuda:
        configure_cpu()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    count = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"] * steps
    dataset = full_length_examples(tokenizer, source_length, target_length, count)
    before = resident_bytes("VmRSS")
    model = mt5_small()
    with tempfile.TemporaryDirectory() as output_dir:
        args = Seq2SeqTrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not cuda,
            seed=0,
            **settings,
        )
        trainer = Seq2SeqTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
            compute_loss_func=title_loss,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resident_bytes("VmHWM") - before
    return {"peak_bytes": peak, "seconds_per_step": seconds / steps, "device": "cuda" if cuda else "cpu"}


def run_child(settings: dict, options: argparse.Namespace, tokenizer_dir: str) -> dict:
    """`measure` in a fresh Python process (see the module docstring for why)."""
    command = [sys.executable, "-m", "bench.memory", "--child", json.dumps(settings), "--tokenizer_dir", tokenizer_dir,
               "--source_length", str(options.source_length), "--target_length", str(options.target_length),
               "--steps", str(options.steps)]  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"configuration {settings} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def estimate(settings: dict, source_length: int, target_length: int) -> int:

    known = {k: v for k, v in settings.items() if k in SETTINGS}
    return estimate_training_memory(
        mt5_small("meta"), **known, max_source_length=source_length, max_target_length=target_length
    ).peak


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["configuration"] for r in rows]
    positions = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh([p + 0.2 for p in positions], [r["measured_gib"] for r in rows], height=0.4, label="measured")
    ax.barh([p - 0.2 for p in positions], [r["estimate_gib"] for r in rows], height=0.4, label="estimated")
    ax.set_yticks(list(positions), names)
    ax.invert_yaxis()
    ax.set_xlabel("peak memory of a training step (GiB)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=16, help="per-device batch of the default")
    parser.add_argument("--source_length", type=int, default=96, help="article tokens (LCSTS: ~80)")
    parser.add_argument("--target_length", type=int, default=16, help="title tokens (LCSTS: ~15)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps; from the second, AdamW's state exists")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer_dir", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.child:
        settings = json.loads(options.child)
        print(json.dumps(measure(settings, options.tokenizer_dir, options.source_length, options.target_length,
                                 options.steps)))  # fmt: skip
        return

    rows = []
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        records = read_jsonl(LCSTS / "train.zh-tw.jsonl", fields=("maintext", "title"))
        train_tokenizer((r[c] for r in records for c in ("maintext", "title")), tokenizer_dir, vocab_size=8000)
        for name, settings in configurations(options.batch_size).items():
            measured = run_child(settings, options, tokenizer_dir)
            row = {
                "configuration": name,
                "batch": f"{settings['per_device_train_batch_size']} x {settings['gradient_accumulation_steps']}",
                "measured_gib": measured["peak_bytes"] / GIB,
                "estimate_gib": estimate(settings, options.source_length, options.target_length) / GIB,
                "seconds_per_step": measured["seconds_per_step"],
                "device": measured["device"],
                "settings": settings,
            }
            rows.append(row)
            print(f"measured {name}: {row['measured_gib']:.2f} GiB, {row['seconds_per_step']:.0f} s/step", flush=True)

    default = rows[0]["measured_gib"]
    title = (
        f"mT5-small shape (300M weights, 250,112 tokens, untied output layer) on {rows[0]['device']},\n"
        f"{options.source_length} source / {options.target_length} target tokens of LCSTS"
    )
    header = ["configuration", "batch x accumulation", "measured peak", "vs default", "estimate", "estimate / measured"]
    table = [
        [r["configuration"], r["batch"], f"{r['measured_gib']:.2f} GiB", r["measured_gib"] / default,
         f"{r['estimate_gib']:.2f} GiB", r["estimate_gib"] / r["measured_gib"]]
        for r in rows
    ]  # fmt: skip
    print(f"\n{machine()}\n{title.replace(chr(10), ' ')}\n\n{markdown_table(header, table)}")

    RESULTS.mkdir(parents=True, exist_ok=True)

    options = {k: v for k, v in vars(options).items() if k not in ("child", "tokenizer_dir")}
    write_json(RESULTS / "memory.json", {"machine": machine(), "title": title, "options": options, "rows": rows})
    plot(rows, RESULTS / "memory.png", title)
    print(f"\nwrote {RESULTS / 'memory.json'} and {RESULTS / 'memory.png'}")


if __name__ == "__main__":
    main()
