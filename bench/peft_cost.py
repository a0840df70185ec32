"""What cheaper fine-tuning saves on an mT5-small-shaped model: trainable parameters, time per step, peak memory.

    python -m bench.peft_cost [--rounds 3] [--steps 1] [--batch_size 4] [--threads 1]

The model has mT5-small's shape (MT5Config defaults: d_model 512, 8 encoder and 8 decoder layers,
the full 250,112-token vocabulary) with random weights and, as google/mt5-small, an output layer apart
from the input embedding. The real tokenizer cannot be downloaded here, so the checkpoint carries a
32,000-piece SentencePiece tokenizer trained on LCSTS; titlegen-prune-vocab then shrinks the checkpoint
to the pieces the LCSTS train and validation text uses. Each setting trains on the same real LCSTS
batches (forward, backward and an Adafactor step, as mt5_small_full.yaml):

    full           every parameter
    lora           LoRA adapters, use_lora's defaults (r=8 on the attention projections)
    decoder        freeze_encoder: the decoder, the shared embedding and the output layer train
    decoder-blocks freeze_encoder and freeze_embeddings: only the decoder's blocks train
    pruned         every parameter of the vocabulary-pruned model

Each measurement runs in a fresh process, so that its peak memory is its own, after one untimed
warm-up step. The settings take turns, round after round, so that other work on the machine slows all
of them alike; the table shows medians. Results also go to bench/results/peft_cost.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import LCSTS, ROOT
from titlegen.cpu import configure_cpu
from titlegen.data import read_jsonl, write_json
from titlegen.lora import add_lora
from titlegen.model_folder import load_model, load_tokenizer
from titlegen.modeling import build_model, count_parameters, freeze_embeddings, freeze_encoder, untie_output_layer
from titlegen.preprocessing import make_tokenize_fn
from titlegen.prune import prune_vocabulary
from titlegen.tokenizer import train_tokenizer

RESULTS = ROOT / "bench" / "results"
VOCAB_SIZE = 250_112  # mT5's embedding rows (MT5Config's default)
TOKENIZER_SIZE = 32_000
SETTINGS = ("full", "lora", "decoder", "decoder-blocks", "pruned")
TARGET_SPEEDUP = 2.5  # the pruned model against the full vocabulary


def build_checkpoints(work: Path) -> tuple[Path, Path, dict]:
    """Writes the full-vocabulary checkpoint and its pruned copy; returns both folders and the prune sizes."""

    def texts(split):
        records = read_jsonl(LCSTS / f"{split}.zh-tw.jsonl", fields=("id", "maintext", "title"))
        return [r[c] for r in records for c in ("maintext", "title")]

    full, pruned = work / "full", work / "pruned"
    print(f"training a {TOKENIZER_SIZE:,}-piece tokenizer on LCSTS ...", flush=True)
    tokenizer = train_tokenizer(texts("train"), work / "tokenizer", vocab_size=TOKENIZER_SIZE)
    print(f"building mT5-small with {VOCAB_SIZE:,} tokens and an untied output layer ...", flush=True)
    model = build_model("mt5", tokenizer, f"vocab_size={VOCAB_SIZE}")
    untie_output_layer(model)
    model.save_pretrained(full)
    tokenizer.save_pretrained(full)
    del model
    print("pruning its vocabulary to LCSTS train + validation ...", flush=True)
    sizes = prune_vocabulary(str(full), texts("train") + texts("validation"), pruned)
    return full, pruned, sizes


def measure(setting: str, model_dir: str, batch_size: int, steps: int, threads: int) -> dict:
    """Trains `steps` timed steps (after one warm-up step) in this process and reports their cost."""
    import torch
    from transformers import DataCollatorForSeq2Seq
    from transformers.optimization import Adafactor

    torch.set_num_threads(threads)
    configure_cpu()
    torch.manual_seed(0)
    runtime_mib = _memory_mib("VmRSS")  # Python, torch and transformers, before any model
    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir)
    if setting == "lora":
        model = add_lora(model)
    if setting in ("decoder", "decoder-blocks"):
        freeze_encoder(model)
    if setting == "decoder-blocks":
        freeze_embeddings(model)
    trainable, total = count_parameters(model)

    records = read_jsonl(LCSTS / "train.zh-tw.jsonl", fields=("id", "maintext", "title"))[: (steps + 1) * batch_size]
    features = make_tokenize_fn(tokenizer, "maintext", "title", max_source_length=128, max_target_length=32)(
        {"maintext": [r["maintext"] for r in records], "title": [r["title"] for r in records]}
    )
    collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    examples = [{k: v[i] for k, v in features.items()} for i in range(len(records))]
    batches = [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    # Adafactor as the Trainer's optim="adafactor" builds it (mt5_small_full.yaml).
    optimizer = Adafactor(
        [p for p in model.parameters() if p.requires_grad],
        lr=1e-3,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
    )

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step(batches[0])  # allocates gradients and optimizer state
    _reset_peak_memory()
    seconds = []
    for batch in batches[1:]:
        start = time.perf_counter()
        step(batch)
        seconds.append(time.perf_counter() - start)
    return {
        "setting": setting,
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "trainable": trainable,
        "total": total,
        "seconds": seconds,
        "peak_mib": _memory_mib("VmHWM"),
        "runtime_mib": runtime_mib,
        "source_lengths": [batch["input_ids"].shape[1] for batch in batches[1:]],
    }


def _reset_peak_memory() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")


def _memory_mib(field: str) -> float:
    """VmRSS (resident memory now) or VmHWM (its peak) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_worker(setting: str, model_dir: Path, args) -> dict:
    command = [sys.executable, "-m", "bench.peft_cost", "--worker", setting, "--model_dir", str(model_dir)]
    command += ["--batch_size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{setting}: the measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for setting, measurements in runs.items():
        seconds = [s for m in measurements for s in m["seconds"]]
        first = measurements[0]
        rows.append(
            {
                "setting": setting,
                "vocab_size": first["vocab_size"],
                "trainable": first["trainable"],
                "total": first["total"],
                "seconds_per_step": statistics.median(seconds),
                "seconds_min": min(seconds),
                "seconds_max": max(seconds),
                "peak_mib": statistics.median(m["peak_mib"] for m in measurements),
            }
        )
    full = rows[0]
    for row in rows:
        row["speedup"] = full["seconds_per_step"] / row["seconds_per_step"]
        row["memory_ratio"] = row["peak_mib"] / full["peak_mib"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'setting':<15} {'vocabulary':>10} {'trainable':>12} {'of total':>9} {'s/step':>7} {'(min-max)':>13} "
        f"{'speed-up':>9} {'peak MiB':>9} {'vs full':>8}"
    )
    for r in rows:
        spread = f"({r['seconds_min']:.1f}-{r['seconds_max']:.1f})"
        print(
            f"{r['setting']:<15} {r['vocab_size']:>10,} {r['trainable']:>12,} {r['trainable'] / r['total']:>9.1%} "
            f"{r['seconds_per_step']:>7.2f} {spread:>13} {r['speedup']:>8.2f}x {r['peak_mib']:>9,.0f} "
            f"{r['memory_ratio']:>7.2f}x"
        )


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["setting"] for r in rows][::-1]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    panels = [
        ("trainable parameters (millions)", [r["trainable"] / 1e6 for r in rows][::-1], "{:.1f}"),
        ("seconds per training step (median)", [r["seconds_per_step"] for r in rows][::-1], "{:.2f}"),
        ("peak memory (GiB)", [r["peak_mib"] / 1024 for r in rows][::-1], "{:.2f}"),
    ]
    for ax, (label, values, fmt) in zip(axes, panels, strict=True):
        bars = ax.barh(names, values, color=["tab:green" if n == "pruned" else "tab:blue" for n in names])
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.set_xlabel(label)
        ax.set_xlim(0, max(values) * 1.25)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each setting is measured, in turns")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per measurement")
    parser.add_argument("--batch_size", type=int, default=4, help="LCSTS articles per step")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads. On a CPU shared with other jobs, threads mostly wait for each other and "
        "timings vary tenfold; one thread measures the work itself (default: 1)",
    )
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.model_dir, args.batch_size, args.steps, args.threads)))
        return

    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="peft_cost.") as work:
        full, pruned, sizes = build_checkpoints(Path(work))
        runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
        for round_ in range(1, args.rounds + 1):
            for setting in SETTINGS:
                runs[setting].append(run_worker(setting, pruned if setting == "pruned" else full, args))
                m = runs[setting][-1]
                print(f"round {round_}/{args.rounds} {setting:<15} s/step {[round(s, 2) for s in m['seconds']]} "
                      f"peak {m['peak_mib']:,.0f} MiB", flush=True)  # fmt: skip
    rows = summarise(runs)
    (vocab_before, vocab_after), (params_before, params_after) = sizes["vocab_size"], sizes["parameters"]
    source_length = statistics.median(n for m in runs["full"] for n in m["source_lengths"])
    runtime = statistics.median(m["runtime_mib"] for ms in runs.values() for m in ms)
    print(
        f"\nmT5-small shape; batches of {args.batch_size} LCSTS articles (padded to {source_length:.0f} tokens) "
        f"and titles; Adafactor; {args.threads} thread(s); {args.rounds} rounds x {args.steps} step(s). "
        f"Peak memory includes {runtime:,.0f} MiB of Python and torch."
    )
    print(
        f"vocabulary pruned to LCSTS: {vocab_before:,} -> {vocab_after:,} tokens; "
        f"parameters {params_before:,} -> {params_after:,} ({params_after / params_before:.1%})"
    )
    print_table(rows)
    speedup = rows[SETTINGS.index("pruned")]["speedup"]
    verdict = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
    print(f"\npruned vs full vocabulary: {speedup:.2f}x faster per step (target >= {TARGET_SPEEDUP}x: {verdict})")
    print(f"took {time.time() - started:.0f} s")

    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "model_dir")}
    write_json(RESULTS / "peft_cost.json", {"settings": settings, "prune": sizes, "rows": rows, "runs": runs})
    plot(
        rows,
        RESULTS / "peft_cost.png",
        f"mT5-small shape on LCSTS, CPU, {args.threads} thread(s), batch {args.batch_size}",
    )
    print(f"wrote {RESULTS / 'peft_cost.json'} and {RESULTS / 'peft_cost.png'}")


if __name__ == "__main__":
    main()
