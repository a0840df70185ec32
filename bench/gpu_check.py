"""What one GPU does with titlegen, in one command and under 5 minutes: training and titling speeds, one table.

    python -m bench.gpu_check [--steps 30] [--batch_size 32] [--articles 1024] [--new_tokens 20]
    python -m bench.gpu_check --device cpu --tiny      # a smoke run of every part on CPU, in seconds

Training: the mT5-small shape (MT5Config defaults, its own output layer, as google/mt5-small; random weights built
from the config, no hub) trained --steps steps on random full-length batches (--batch_size articles of
--source_length tokens, titles of --target_length) with bf16 autocast and fused AdamW, as titlegen-train's bf16
runs do: steps/s, and peak GPU memory against what ``titlegen-estimate`` (titlegen/memory.py) predicts for it.

Titling: the same shape with a SentencePiece tokenizer trained on the articles (LCSTS test from the data setting
when present, else the fixture articles, repeated to --articles), random weights, so every title is exactly
--new_tokens tokens long (min_new_tokens = max_new_tokens) and every configuration does the same work; greedy:

* plain loop: the transformers summarization example's way: batches of 8 in input order, fp32 ``model.generate``;
* titlegen bf16: ``titlegen.generation.generate_titles``, length-sorted batches of --predict_batch_size, bf16;
* ct2 float16 / bfloat16 / int8_float16: ``titlegen-export`` in that type, decoded by ``titlegen.engines.ct2``
  with the same batches (on CPU: float32 and int8);
* titlegen-predict under ``torchrun --nproc_per_node 1`` and ``2`` (transformers, bf16; start-up included), when
  2 GPUs exist and titlegen shards predict across processes (``titlegen.sharding``); else a row says why not.

Titles/s are the median of --repeats runs, interleaved. Nothing here is needed by the test suite or by CI; a GPU
machine's results go to bench/README.md. Writes bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench._common import LCSTS, machine, markdown_table
from titlegen.data import read_jsonl
from titlegen.engines.ct2 import CT2Engine
from titlegen.engines.export import export_model
from titlegen.generation import generate_titles
from titlegen.memory import estimate_training_memory
from titlegen.modeling import untie_output_layer
from titlegen.tokenizer import train_tokenizer

RESULTS = ROOT / "bench" / "results"
FIXTURE = ROOT / "tests" / "assets" / "articles.jsonl"
# The --tiny model: mT5's architecture at a size that runs on CPU in seconds (as tests/conftest.py builds).
TINY = "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1,num_decoder_layers=1,dropout_rate=0.0"
CT2_TYPES = {"cuda": ("float16", "bfloat16", "int8_float16"), "cpu": ("float32", "int8")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu only for a smoke run")
    parser.add_argument("--tiny", action="store_true", help="a tiny mT5 and a few steps and articles: a smoke run")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (after 3 warm-up steps)")
    parser.add_argument("--batch_size", type=int, default=32, help="training articles per step")
    parser.add_argument("--source_length", type=int, default=256, help="article tokens in training")
    parser.add_argument("--target_length", type=int, default=32, help="title tokens in training")
    parser.add_argument("--articles", type=int, default=1024, help="articles titled per configuration")
    parser.add_argument("--predict_batch_size", type=int, default=64, help="titlegen's and ct2's batch size")
    parser.add_argument("--new_tokens", type=int, default=20, help="tokens per title")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each titling configuration")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.batch_size, args.source_length, args.target_length = 2, 2, 16, 8
        args.articles, args.predict_batch_size, args.new_tokens, args.repeats = 12, 4, 4, 1
    return args


def model_config(tiny: bool, vocab_size: int | None = None):
    """mT5-small's config (MT5Config's defaults), or the tiny one; untied as google/mt5-small."""
    from transformers import MT5Config

    config = MT5Config(decoder_start_token_id=0)
    if tiny:
        config.update_from_string(TINY)
    if vocab_size is not None:
        config.vocab_size = vocab_size
    return config


def new_model(config, device: str):
    import torch
    from transformers import MT5ForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = MT5ForConditionalGeneration(config)
        untie_output_layer(model)  # MT5Config always ties it
    return model


def training(args) -> list[list]:
    """bf16 training steps/s and peak memory, against titlegen's estimate."""
    import torch

    config = model_config(args.tiny)
    model = new_model(config, args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator(args.device).manual_seed(0)
    shape = (args.batch_size, args.source_length), (args.batch_size, args.target_length)
    batches = [
        {
            "input_ids": torch.randint(2, config.vocab_size, shape[0], device=args.device, generator=generator),
            "labels": torch.randint(2, config.vocab_size, shape[1], device=args.device, generator=generator),
        }
        for _ in range(2)
    ]

    def step(batch: dict) -> float:
        with torch.autocast(args.device, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(3):  # kernels chosen and the optimizer state allocated outside the timing
        step(batches[i % 2])
    synchronize(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % 2])
    loss = float(loss.detach())  # waits for the last step
    seconds = time.perf_counter() - start
    shadow = new_model(config, "meta")  # the same shape, for the estimate: no memory
    estimate = estimate_training_memory(
        shadow, per_device_train_batch_size=args.batch_size, max_source_length=args.source_length,
        max_target_length=args.target_length, optim="adamw_torch_fused", bf16=True,
    ).peak  # fmt: skip
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else None
    print(f"training: {args.steps} steps in {seconds:.1f} s, last loss {loss:.2f}", flush=True)
    gib = 2**30
    return [
        [
            f"train bf16, batch {args.batch_size} x {args.source_length}/{args.target_length} tokens",
            f"{args.steps / seconds:.2f} steps/s",
            f"{args.steps * args.batch_size / seconds:.1f} articles/s",
            f"peak {peak / gib:.2f} GiB, estimate {estimate / gib:.2f} GiB ({peak / estimate:.2f}x)"
            if peak is not None
            else f"estimate {estimate / gib:.2f} GiB (peak: GPU only)",
        ]
    ]


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def read_articles(count: int) -> list[str]:
    """`count` articles: LCSTS test's when the data setting has it, else the fixture's, repeated."""

    source = LCSTS / "test.zh-tw.jsonl"
    path = source if source.is_file() else FIXTURE
    texts = [r["maintext"] for r in read_jsonl(path, fields=("maintext",))][:count]
    print(f"articles: {count} from {path}", flush=True)
    return (texts * (count // len(texts) + 1))[:count]


def titling(args, workdir: Path) -> list[list]:
    """Titles/s of each configuration, against the plain loop's."""
    from bench.predict_speed import baseline_titles

    texts = read_articles(args.articles)
    tokenizer = train_tokenizer(texts, workdir / "tokenizer", vocab_size=1000 if args.tiny else 32000)
    model = new_model(model_config(args.tiny, len(tokenizer)), "cpu").eval()
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    model.to(args.device)
    fixed = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "num_beams": 1}

    runs = {
        "plain loop, fp32": lambda: baseline_titles(model, tokenizer, texts, 8, **fixed),
        "titlegen transformers, bf16": lambda: generate_titles(
            model, tokenizer, texts, batch_size=args.predict_batch_size, bf16=True, progress=False, **fixed
        ),
    }
    for compute_type in CT2_TYPES[args.device]:
        export_model(workdir / "model", workdir / compute_type, quantization=compute_type)
        engine = CT2Engine(workdir / compute_type, device=args.device, compute_type=compute_type)
        runs[f"ct2 {compute_type}"] = lambda e=engine: e.generate_titles(
            texts, batch_size=args.predict_batch_size, progress=False, **fixed
        )
    baseline_titles(model, tokenizer, texts[:2], 2, max_new_tokens=2)  # one-time costs, outside the timings
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            synchronize(args.device)
            start = time.perf_counter()
            titles = run()
            synchronize(args.device)
            assert len(titles) == len(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
            print(f"  run {repeat + 1}/{args.repeats} {name}: {rates[name][-1]:.1f} titles/s", flush=True)
    base = statistics.median(rates["plain loop, fp32"])
    rows = [
        [f"titles, greedy, {args.new_tokens} tokens: {name}", f"{statistics.median(r):.1f} titles/s",
         f"{statistics.median(r) / base:.2f}x the plain loop", ""]
        for name, r in rates.items()
    ]  # fmt: skip
    rows += sharded(args, workdir, texts)
    return rows


def sharded(args, workdir: Path, texts: list[str]) -> list[list]:
    """titlegen-predict under torchrun with 1 and with 2 processes, one GPU each, when there are 2 GPUs and
    titlegen shards predict across processes (start-up and model loads included in both)."""
    import torch

    name = "titles, titlegen-predict under torchrun, transformers bf16"
    if args.device != "cuda" or torch.cuda.device_count() < 2:
        return [[name, "skipped: needs 2 GPUs", "", ""]]
    if importlib.util.find_spec("titlegen.sharding") is None:
        return [[name, "skipped: this titlegen does not shard predict across processes", "", ""]]
    source = workdir / "articles.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "maintext": t}) + "\n" for i, t in enumerate(texts)))
    rates = {}
    for processes in (1, 2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", "29531", "-m", "titlegen.recipes.predict",
            "--model", str(workdir / "model"), "--input", str(source), "--output", str(workdir / f"{processes}.jsonl"),
            "--batch_size", str(args.predict_batch_size), "--bf16", "true", "--num_beams", "1",
            "--max_new_tokens", str(args.new_tokens),
        ]  # fmt: skip
        start = time.perf_counter()
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        if result.returncode != 0:
            return [[name, f"failed with {processes}: {result.stderr.strip().splitlines()[-1][:200]}", "", ""]]
        rates[processes] = len(texts) / (time.perf_counter() - start)
    return [
        [f"{name}, {n} process{'es' if n > 1 else ''}", f"{rate:.1f} titles/s", f"{rate / rates[1]:.2f}x 1 process",
         "start-up and model load included"]
        for n, rate in rates.items()
    ]  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench/gpu_check.py measures a CUDA GPU and torch sees none here; "
            "`python -m bench.gpu_check --device cpu --tiny` runs every part on CPU as a smoke test"
        )
    print(machine(), flush=True)
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}", flush=True)
    start = time.perf_counter()
    rows = training(args)
    with tempfile.TemporaryDirectory() as workdir:
        rows += titling(args, Path(workdir))
    print(markdown_table(["what", "speed", "against", "memory / notes"], rows))
    print(f"total {time.perf_counter() - start:.0f} s")
    if not args.tiny:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gpu_check.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
