"""Titles per second of titlegen's generation against a plain transformers baseline, on CPU, and of CTranslate2.

    python -m bench.predict_speed [--articles 256] [--new_tokens 20] [--repeats 3] [--threads N]
        [--quality_model DIR] [--quality_articles N]

Speed. Model: mT5-small's shape (MT5Config defaults: d_model 512, d_ff 1024, 8+8 layers, 6 heads, d_kv 64) with
random weights, built by titlegen.modeling.build_model, and a SentencePiece tokenizer trained on LCSTS train text
(vocab_size 32000 asked; the size it reaches is printed). Inputs: the first --articles LCSTS test articles.

Random weights write degenerate titles that end at random points, so every configuration generates exactly
--new_tokens tokens (min_new_tokens = max_new_tokens) and does the same work.

* baseline: the transformers summarization example's way: batches of 8 (its default evaluation batch size)
  in input order, padded per batch, fp32, ``model.generate`` per batch, no flush-to-zero.
* titlegen: ``titlegen.generation.generate_titles`` after ``configure_cpu()``: length-sorted batches,
  inference mode, flush-to-zero, beam search without cross-attention cache copies; fp32, and bf16 autocast.
* ct2: the model exported by ``titlegen-export`` in float32 and in int8, decoded by ``titlegen.engines.ct2``
  (the same length-sorted batches, CTranslate2's ``intra_threads`` = the torch threads).

Each configuration runs --repeats times, interleaved with the others so that a busy machine slows all of
them alike; the table shows the median. Wall-clock titles/s is what users see; titles per CPU-second is
steadier when other programs share the cores.

Quality. A trained model (--quality_model; by default ``outputs/bench/predict_speed/model``, trained here with
``trainer_args/tiny_offline.yaml`` for --quality_steps steps, about its 4 epochs, when it does not exist) titles
the LCSTS validation file with transformers (fp32) and with its CTranslate2 exports (float32, int8), greedily,
with 4 beams, and with 4 beams and article tokens only (that model's own decoding); the table gives tw_rouge (char
segmenter), titles/s of one run, and the titles identical to transformers'. It also times the exports, and an
evaluation during training both ways (the model's first max_eval_samples validation articles, its own decoding,
batch 64; CTranslate2 with the export of the weights included), --repeats times in turn.

Writes bench/results/predict_speed.json and predict_speed.png (titles/s by configuration).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench._common import LCSTS, machine, markdown_table, offline_model
from titlegen.cpu import configure_cpu
from titlegen.data import normalize_text, read_jsonl, write_json
from titlegen.engines import TransformersEngine
from titlegen.engines.ct2 import CT2Engine
from titlegen.engines.export import export_model, training_engine
from titlegen.generation import generate_titles
from titlegen.metrics import f100, get_segmenter, tw_rouge
from titlegen.model_folder import trained_settings
from titlegen.modeling import build_model
from titlegen.tokenizer import train_tokenizer

MAX_SOURCE_LENGTH = 256  # titlegen's default; LCSTS articles are ~110 characters, so nothing is cut
RESULTS = ROOT / "bench" / "results"
QUALITY_MODEL = ROOT / "outputs" / "bench" / "predict_speed" / "model"


def baseline_titles(model, tokenizer, texts: list[str], batch_size: int, **generate_kwargs) -> list[str]:
    """Titles the way transformers' summarization example writes them: batches in input order, fp32."""
    titles = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        inputs = tokenizer(batch, max_length=MAX_SOURCE_LENGTH, truncation=True, padding=True, return_tensors="pt")
        output = model.generate(**inputs, **generate_kwargs)
        titles += [t.strip() for t in tokenizer.batch_decode(output, skip_special_tokens=True)]
    return titles


def timed_export(model_dir: Path, output_dir: Path, quantization: str) -> float:
    """Seconds ``titlegen-export`` takes (loading, converting, checking and writing)."""

    start = time.perf_counter()
    export_model(model_dir, output_dir, quantization=quantization)
    return time.perf_counter() - start


def speed(args, texts: list[str], train: list[dict], workdir: Path) -> tuple[list[list], dict]:
    """The speed table's rows: every configuration, --repeats times in turn."""
    import torch

    print(f"training a tokenizer on {len(train)} LCSTS training pairs ...", flush=True)
    tokenizer = train_tokenizer((r[c] for r in train for c in ("maintext", "title")), workdir / "tok", vocab_size=32000)
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
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    engines, export_seconds = {}, {}
    for quantization in ("float32", "int8"):
        export_seconds[quantization] = timed_export(workdir / "model", workdir / quantization, quantization)
        engines[quantization] = CT2Engine(workdir / quantization, threads=torch.get_num_threads())
    print("export: " + ", ".join(f"{q} {s:.1f} s" for q, s in export_seconds.items()), flush=True)

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

    def run_ct2(num_beams: int, quantization: str) -> list[str]:
        return engines[quantization].generate_titles(
            texts, batch_size=args.batch_size, progress=False, max_source_length=MAX_SOURCE_LENGTH,
            num_beams=num_beams, **fixed_length,
        )  # fmt: skip

    configurations = {}
    for decoding, num_beams in (("greedy", 1), ("beam 4", 4)):
        configurations[(decoding, "baseline", "fp32")] = lambda n=num_beams: run_baseline(n)
        configurations[(decoding, "titlegen", "fp32")] = lambda n=num_beams: run_titlegen(n, bf16=False)
        configurations[(decoding, "titlegen", "bf16")] = lambda n=num_beams: run_titlegen(n, bf16=True)
        configurations[(decoding, "ct2", "float32")] = lambda n=num_beams: run_ct2(n, "float32")
        configurations[(decoding, "ct2", "int8")] = lambda n=num_beams: run_ct2(n, "int8")

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

    rows = []
    for key in configurations:
        decoding, side, precision = key
        base = (decoding, "baseline", "fp32")
        same = sum(a == b for a, b in zip(titles[key], titles[base], strict=True))
        w, c = statistics.median(wall[key]), statistics.median(cpu[key])
        w0, c0 = statistics.median(wall[base]), statistics.median(cpu[base])
        rows.append([decoding, side, precision, w, w / w0, c, c / c0, f"{same}/{len(texts)}"])
    return rows, {"export_seconds": export_seconds, "wall": {" ".join(k): v for k, v in wall.items()}}


def quality_model(args) -> Path:
    """The trained model of the quality part: --quality_model, or one trained here once."""
    every = str(args.quality_steps // 5)
    return offline_model(
        args.quality_model, QUALITY_MODEL,
        "--max_steps", str(args.quality_steps), "--eval_strategy", "steps", "--eval_steps", every,
        "--save_strategy", "steps", "--save_steps", every, "--disable_tqdm", "true",
    )  # fmt: skip


def quality(args, workdir: Path) -> tuple[list[list], dict]:
    """The quality table's rows: the trained model's validation titles by engine and decoding."""
    import torch

    model_dir = quality_model(args)
    settings = trained_settings(str(model_dir))
    records = read_jsonl(args.data / "validation.zh-tw.jsonl", fields=("maintext", "title"))[: args.quality_articles]
    articles, references = [r["maintext"] for r in records], [r["title"] for r in records]
    threads = torch.get_num_threads()
    engines, export_seconds = {"transformers fp32": TransformersEngine(str(model_dir), threads=threads)}, {}
    for quantization in ("float32", "int8"):
        export_seconds[quantization] = timed_export(model_dir, workdir / f"q-{quantization}", quantization)
        engines[f"ct2 {quantization}"] = CT2Engine(workdir / f"q-{quantization}", threads=threads)
    print(f"quality model {model_dir}: export " + ", ".join(f"{q} {s:.1f} s" for q, s in export_seconds.items()))
    # Without the loop guard, which CTranslate2 cannot apply (titlegen.engines.ct2): both engines decode alike.
    decodings = {
        "greedy": {"num_beams": 1, "article_tokens_only": False, "no_loops": False},
        "beam 4": {"num_beams": 4, "article_tokens_only": False, "no_loops": False},
        "beam 4, article tokens only": {"num_beams": 4, "article_tokens_only": True, "no_loops": False},
    }
    segmenter = get_segmenter("char")
    rows, titles, seconds = [], {}, {}
    for decoding, arguments in decodings.items():
        for name, engine in engines.items():
            start = time.perf_counter()
            titles[decoding, name] = engine.generate_titles(
                articles, batch_size=args.batch_size, progress=False,
                max_source_length=settings.max_source_length, source_prefix=settings.source_prefix, **arguments,
            )  # fmt: skip
            seconds[decoding, name] = time.perf_counter() - start
            print(f"  {decoding} {name}: {len(articles) / seconds[decoding, name]:.1f} titles/s", flush=True)
        for name in engines:
            scores = f100(tw_rouge(titles[decoding, name], references, segmenter))
            same = sum(
                a == b for a, b in zip(titles[decoding, name], titles[decoding, "transformers fp32"], strict=True)
            )
            rows.append([
                decoding, name, scores["rouge-1"], scores["rouge-2"], scores["rouge-l"],
                len(articles) / seconds[decoding, name], f"{same}/{len(articles)}",
            ])  # fmt: skip
    transformers = engines["transformers fp32"]
    evaluated = articles[: settings.max_eval_samples or 200]
    evaluation = evaluation_seconds(transformers.model, transformers.tokenizer, evaluated, settings, args.repeats)
    details = {"articles": len(articles), "export_seconds": export_seconds, "evaluation_seconds": evaluation}
    return rows, {"model": str(model_dir), **details}


def evaluation_seconds(model, tokenizer, articles: list[str], settings: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of one evaluation's titles during training, as `titlegen.trainer.TitleTrainer` writes them:
    transformers' generate, or CTranslate2 with the export of the weights included (``generation_backend``), both
    without the loop guard, which training with CTranslate2 refuses."""

    options = {
        "batch_size": 64,
        "progress": False,
        "max_source_length": settings.max_source_length,
        "no_loops": False,
    }
    seconds: dict[str, list[float]] = {"transformers": [], "ct2": []}
    for _ in range(repeats):
        start = time.perf_counter()
        generate_titles(model, tokenizer, articles, **options)
        seconds["transformers"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with training_engine(model, tokenizer) as engine:
            engine.generate_titles(articles, **options)
        seconds["ct2"].append(time.perf_counter() - start)
    print(f"evaluation of {len(articles)} articles: {seconds}", flush=True)
    return seconds


def plot(rows: list[list], path: Path, title: str) -> None:
    """Titles/s of every configuration of the speed table, greedy and beam 4 side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(f"{side}\n{precision}" for _, side, precision, *_ in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for offset, decoding in ((-0.2, "greedy"), (0.2, "beam 4")):
        values = [row[3] for row in rows if row[0] == decoding]
        bars = ax.bar([i + offset for i in range(len(values))], values, width=0.4, label=decoding)
        ax.bar_label(bars, labels=[f"{row[4]:.1f}x" for row in rows if row[0] == decoding], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("titles per second (median)")
    ax.set_title(title, fontsize=8)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=256, help="LCSTS test articles to title")
    parser.add_argument("--new_tokens", type=int, default=20, help="tokens generated per title")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (median shown)")
    parser.add_argument("--batch_size", type=int, default=16, help="titlegen's batch size (predict's default)")
    parser.add_argument("--baseline_batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--data", type=Path, default=LCSTS, help="folder with LCSTS train/test .zh-tw.jsonl")
    parser.add_argument("--quality_model", type=Path, default=None, help=f"trained model (default: {QUALITY_MODEL})")
    parser.add_argument("--quality_steps", type=int, default=4500, help="training steps when it has to be trained")
    parser.add_argument("--quality_articles", type=int, default=None, help="validation articles (default: all)")
    args = parser.parse_args()

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    header = machine()
    print(header, flush=True)
    train = read_jsonl(args.data / "train.zh-tw.jsonl", fields=("maintext", "title"))
    texts = [normalize_text(r["maintext"]) for r in read_jsonl(args.data / "test.zh-tw.jsonl")][: args.articles]
    with tempfile.TemporaryDirectory() as tmp:
        speed_rows, speed_details = speed(args, texts, train, Path(tmp))
        header_row = ["decoding", "generation", "precision", "titles/s", "× baseline", "titles/CPU-s", "× baseline",
                      "same titles"]  # fmt: skip
        print(f"\n{header}\n\n{markdown_table(header_row, speed_rows)}\n")
        for decoding in ("greedy", "beam 4"):
            by_key = {(r[1], r[2]): r for r in speed_rows if r[0] == decoding}
            print(
                f"{decoding}: ct2 int8 {by_key['ct2', 'int8'][4]:.2f}x the baseline, "
                f"{by_key['ct2', 'int8'][3] / by_key['titlegen', 'bf16'][3]:.2f}x titlegen bf16"
            )
        print(f"\nexports of the mT5-small shape: {speed_details['export_seconds']}\n", flush=True)
        quality_rows, quality_details = quality(args, Path(tmp))

    print(
        f"\nquality model {quality_details['model']}, {quality_details['articles']} LCSTS validation articles, "
        f"tw_rouge F x 100 with the char segmenter; exports {quality_details['export_seconds']}\n"
    )
    print(
        markdown_table(["decoding", "engine", "ROUGE-1", "ROUGE-2", "ROUGE-L", "titles/s", "same titles"], quality_rows)
    )
    evaluation = {name: statistics.median(values) for name, values in quality_details["evaluation_seconds"].items()}
    print(
        "an evaluation during training (the model's own decoding, no loop guard): "
        f"transformers {evaluation['transformers']:.1f} s, ct2 {evaluation['ct2']:.1f} s with the export (medians)"
    )
    for decoding in dict.fromkeys(r[0] for r in quality_rows):
        by_engine = {r[1]: r for r in quality_rows if r[0] == decoding}
        print(f"{decoding}: ROUGE-L int8 - float32 = {by_engine['ct2 int8'][4] - by_engine['ct2 float32'][4]:+.2f}")

    plot(speed_rows, RESULTS / "predict_speed.png", header)
    write_json(
        RESULTS / "predict_speed.json",
        {
            "machine": header,
            "speed": {"rows": speed_rows, **speed_details},
            "quality": {"rows": quality_rows, **quality_details},
        },
    )
    print(f"\nwrote {RESULTS / 'predict_speed.json'} and {RESULTS / 'predict_speed.png'}")


if __name__ == "__main__":
    main()
