"""Titles per second of titlegen's generation against a plain transformers baseline, on CPU.

    python bench/predict_speed.py [--articles 256] [--new_tokens 20] [--repeats 3] [--threads N]

Model: mT5-small's shape (MT5Config defaults: d_model 512, d_ff 1024, 8+8 layers, 6 heads, d_kv 64) with random
weights, built by titlegen.modeling.build_model, and a SentencePiece tokenizer trained on LCSTS train text
(vocab_size 32000 asked; the size it reaches is printed). Inputs: the first --articles LCSTS test articles.

Random weights write degenerate titles that end at random points, so both sides generate exactly --new_tokens
tokens (min_new_tokens = max_new_tokens) and do the same work.

* baseline: the transformers summarization example's way: batches of 8 (its default evaluation batch size)
  in input order, padded per batch, fp32, ``model.generate`` per batch, no flush-to-zero.
* titlegen: ``titlegen.generation.generate_titles`` after ``configure_cpu()``: length-sorted batches,
  inference mode, flush-to-zero, beam search without cross-attention cache copies; fp32, and bf16 autocast.

Each configuration runs --repeats times, interleaved with the others so that a busy machine slows all of
them alike; the table shows the median. Wall-clock titles/s is what users see; titles per CPU-second is
steadier when other programs share the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from titlegen.corpus import data_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

LCSTS = data_dir() / "lcsts"
MAX_SOURCE_LENGTH = 256  # titlegen's default; LCSTS articles are ~110 characters, so nothing is cut


def baseline_titles(model, tokenizer, texts: list[str], batch_size: int, **generate_kwargs) -> list[str]:
    """Titles the way transformers' summarization example writes them: batches in input order, fp32."""
    titles = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        inputs = tokenizer(batch, max_length=MAX_SOURCE_LENGTH, truncation=True, padding=True, return_tensors="pt")
        output = model.generate(**inputs, **generate_kwargs)
        titles += [t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True)]
    return titles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=256, help="LCSTS test articles to title")
    parser.add_argument("--new_tokens", type=int, default=20, help="tokens generated per title")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (median shown)")
    parser.add_argument("--batch_size", type=int, default=16, help="titlegen's batch size (predict's default)")
    parser.add_argument("--baseline_batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--data", type=Path, default=LCSTS, help="folder with LCSTS train/test .zh-tw.jsonl")
    args = parser.parse_args()

    import torch
    import transformers

    from titlegen.data import normalize_text, read_jsonl
    from titlegen.generation import generate_titles
    from titlegen.modeling import build_model, configure_cpu
    from titlegen.tokenizer import train_tokenizer

    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = read_jsonl(args.data / "train.zh-tw.jsonl", fields=("maintext", "title"))
    texts = [normalize_text(r["maintext"]) for r in read_jsonl(args.data / "test.zh-tw.jsonl")][: args.articles]
    print(f"training a tokenizer on {len(train)} LCSTS training pairs ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer((r[c] for r in train for c in ("maintext", "title")), tmp, vocab_size=32000)
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer).eval()
    parameters = sum(p.numel() for p in model.parameters())
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    print(
        f"model: mT5-small shape, {parameters / 1e6:.1f}M parameters, vocabulary {len(tokenizer)}; "
        f"{len(texts)} articles of {min(lengths)}-{max(lengths)} tokens; {args.new_tokens} new tokens per title; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    fixed_length = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}

    def run_baseline(num_beams: int) -> list[str]:
        torch.set_flush_denormal(False)
        return baseline_titles(model, tokenizer, texts, args.baseline_batch_size, num_beams=num_beams, **fixed_length)

    def run_titlegen(num_beams: int, bf16: bool) -> list[str]:
        configure_cpu()
        return generate_titles(
            model, tokenizer, texts, batch_size=args.batch_size, bf16=bf16, progress=False,
            max_source_length=MAX_SOURCE_LENGTH, num_beams=num_beams, **fixed_length,
        )  # fmt: skip

    configurations = {}
    for decoding, num_beams in (("greedy", 1), ("beam 4", 4)):
        configurations[(decoding, "baseline", "fp32")] = lambda n=num_beams: run_baseline(n)
        configurations[(decoding, "titlegen", "fp32")] = lambda n=num_beams: run_titlegen(n, bf16=False)
        configurations[(decoding, "titlegen", "bf16")] = lambda n=num_beams: run_titlegen(n, bf16=True)

    baseline_titles(model, tokenizer, texts[:2], 2, max_new_tokens=2)  # one-time costs, outside the timings
    wall: dict[tuple, list[float]] = {key: [] for key in configurations}
    cpu: dict[tuple, list[float]] = {key: [] for key in configurations}
    titles: dict[tuple, list[str]] = {}
    for repeat in range(1, args.repeats + 1):
        for key, run in configurations.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            titles[key] = run()
            wall[key].append(len(texts) / (time.perf_counter() - start_wall))
            cpu[key].append(len(texts) / (time.process_time() - start_cpu))
            print(f"  run {repeat}/{args.repeats} {' '.join(key)}: {wall[key][-1]:.2f} titles/s", flush=True)

    print()
    print("| decoding | generation | precision | titles/s | × baseline | titles/CPU-s | × baseline | same titles |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for key in configurations:
        decoding, side, precision = key
        base = (decoding, "baseline", "fp32")
        same = sum(a == b for a, b in zip(titles[key], titles[base], strict=True))
        w, c = statistics.median(wall[key]), statistics.median(cpu[key])
        w0, c0 = statistics.median(wall[base]), statistics.median(cpu[base])
        print(
            f"| {decoding} | {side} | {precision} | {w:.2f} | {w / w0:.2f} | {c:.2f} | {c / c0:.2f} "
            f"| {same}/{len(texts)} |"
        )


if __name__ == "__main__":
    main()
