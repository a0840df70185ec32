"""Command-line entry points that live in the library (the training recipes are in ``recipes/``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from titlegen import TitlegenError


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Runs an entry point; a `TitlegenError` becomes a one-line message and exit status 2."""
    try:
        main(argv)
    except TitlegenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or `titlegen.callbacks.Interrupted` after a checkpoint
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "exit_status", 130)
    return 0


def _evaluate(argv: Sequence[str] | None) -> dict:
    from titlegen.data import read_jsonl
    from titlegen.metrics import SEGMENTERS, get_segmenter, tw_rouge

    parser = argparse.ArgumentParser(
        prog="titlegen-eval",
        allow_abbrev=False,  # a misspelled flag is an error, not a guess
        description="Score predicted titles against reference titles with tw_rouge (the course's metric).",
        epilog="The course's segmenter is ckip. Its model data is never downloaded implicitly; get it once with "
        '`pip install -e .[ckip]` and `python -c "from ckiptagger import data_utils; '
        "data_utils.download_data_gdown('DIR')\"`, then pass --ckip_data DIR/data or set TITLEGEN_CKIP_DATA.",
    )
    parser.add_argument("-r", "--reference", required=True, help="jsonl with id and title (the answers)")
    parser.add_argument("-s", "--submission", required=True, help="jsonl with id and title (the predictions)")
    parser.add_argument(
        "--segmenter",
        choices=SEGMENTERS,
        default="auto",
        help="word segmenter; auto = ckip when its data is present, else jieba with a warning (default: auto)",
    )
    parser.add_argument("--ckip_data", default=None, help="ckiptagger's model data folder")
    args = parser.parse_args(argv)

    references = read_jsonl(args.reference, fields=("id", "title"))
    predictions = {
        r["id"]: r["title"] for r in read_jsonl(args.submission, fields=("id", "title"), may_be_empty=("title",))
    }
    missing = [r["id"] for r in references if r["id"] not in predictions]
    if missing:
        raise TitlegenError(
            f"{args.submission}: {len(missing)} of {len(references)} reference ids have no prediction "
            f"(e.g. {', '.join(map(repr, missing[:5]))})"
        )
    segmenter = get_segmenter(args.segmenter, args.ckip_data)
    scores = tw_rouge([predictions[r["id"]] for r in references], [r["title"] for r in references], segmenter)
    print(json.dumps(scores, indent=2))
    return scores


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-eval -r REF.jsonl -s PRED.jsonl [--segmenter ckip|jieba|char|auto]``."""
    return run(_evaluate, argv)


def _train_tokenizer(argv: Sequence[str] | None) -> None:
    from titlegen.data import read_jsonl
    from titlegen.tokenizer import MODEL_TYPES, train_tokenizer

    parser = argparse.ArgumentParser(
        prog="titlegen-tokenizer",
        description="Train a SentencePiece tokenizer (mT5 conventions, byte fallback) on jsonl text.",
    )
    parser.add_argument("files", nargs="+", help="jsonl files to learn from")
    parser.add_argument("-o", "--output_dir", required=True, help="tokenizer folder to write")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--type", default="unigram", choices=MODEL_TYPES, help="unigram (as mT5) or char")
    parser.add_argument("--columns", nargs="+", default=["maintext", "title"], help="fields to learn from")
    args = parser.parse_args(argv)

    texts = [r[c] for path in args.files for r in read_jsonl(path, fields=args.columns) for c in args.columns]
    tokenizer = train_tokenizer(texts, args.output_dir, vocab_size=args.vocab_size, model_type=args.type)
    print(f"wrote {args.output_dir} ({len(tokenizer)} tokens)")


def tokenizer_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-tokenizer FILE.jsonl ... -o DIR [--vocab_size N] [--type unigram|char]``."""
    return run(_train_tokenizer, argv)


def _merge(argv: Sequence[str] | None) -> None:
    from titlegen.lora import merge_adapter

    parser = argparse.ArgumentParser(
        prog="titlegen-merge",
        allow_abbrev=False,
        description="Merge a LoRA adapter (the output_dir of a use_lora run) into its base model, writing a plain "
        "checkpoint that loads with AutoModelForSeq2SeqLM.from_pretrained without peft.",
    )
    parser.add_argument("adapter_dir", help="adapter folder (adapter_config.json names its base model)")
    parser.add_argument("-o", "--output_dir", required=True, help="model folder to write")
    args = parser.parse_args(argv)

    merge_adapter(args.adapter_dir, args.output_dir)
    print(f"wrote {args.output_dir}")


def merge_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-merge ADAPTER_DIR -o OUT``."""
    return run(_merge, argv)


def _prune_vocab(argv: Sequence[str] | None) -> dict:
    from titlegen.data import read_jsonl
    from titlegen.modeling import trained_settings
    from titlegen.prune import prune_vocabulary

    parser = argparse.ArgumentParser(
        prog="titlegen-prune-vocab",
        allow_abbrev=False,
        description="Shrink a T5/mT5 model and its SentencePiece tokenizer to the tokens a corpus uses. Text "
        "segmented with kept tokens only gets the same tokens and the same logits as with the original model.",
    )
    parser.add_argument("model_dir", help="model folder (or hub id) with its tokenizer")
    parser.add_argument("--corpus", nargs="+", required=True, help="jsonl files whose text the model must handle")
    parser.add_argument("-o", "--output_dir", required=True, help="model folder to write")
    parser.add_argument("--columns", nargs="+", default=["maintext", "title"], help="fields whose text to keep")
    parser.add_argument(
        "--source_prefix", default=None, help="prefix the articles get (default: the model's run_config.yaml)"
    )
    args = parser.parse_args(argv)

    texts = [r[c] for path in args.corpus for r in read_jsonl(path, fields=args.columns) for c in args.columns]
    prefix = trained_settings(args.model_dir)["source_prefix"] if args.source_prefix is None else args.source_prefix
    sizes = prune_vocabulary(args.model_dir, texts, args.output_dir, prefix)
    (vocab_before, vocab_after), (params_before, params_after) = sizes["vocab_size"], sizes["parameters"]
    print(
        f"wrote {args.output_dir}: {vocab_after:,} of {vocab_before:,} tokens kept; "
        f"parameters {params_before:,} -> {params_after:,} ({params_after / params_before:.1%})"
    )
    return sizes


def prune_vocab_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-prune-vocab MODEL_DIR --corpus FILE.jsonl ... -o OUT``."""
    return run(_prune_vocab, argv)


def _plot(argv: Sequence[str] | None) -> None:
    from pathlib import Path

    from titlegen.plotting import plot_learning_curves, read_log_history

    parser = argparse.ArgumentParser(
        prog="titlegen-plot",
        description="Plot a training run's learning curves (loss, and evaluation ROUGE-1/2/L) against the step.",
    )
    parser.add_argument("run_dir", help="a titlegen-train output_dir (or a checkpoint) with trainer_state.json")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: RUN_DIR/learning_curves.png)")
    args = parser.parse_args(argv)

    output = args.output or str(Path(args.run_dir) / "learning_curves.png")
    plot_learning_curves(read_log_history(args.run_dir), output, title=str(args.run_dir))
    print(f"wrote {output}")


def plot_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-plot RUN_DIR [-o OUT.png]``."""
    return run(_plot, argv)


def _estimate(argv: Sequence[str] | None) -> None:
    from transformers import Seq2SeqTrainingArguments

    from titlegen.config import DataArguments, ModelArguments, RunArguments, parse_args
    from titlegen.memory import estimate_training_memory, format_bytes, format_value, memory_settings, meta_model

    model_args, data_args, _, training_args = parse_args(
        (ModelArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments),
        argv,
        description="Estimate the peak memory of one training step of a config, per device, without "
        "loading the model's weights. Takes the same --config and flags as titlegen-train.",
    )
    settings = memory_settings(training_args, data_args)
    model = meta_model(model_args)
    estimate = estimate_training_memory(model, **settings)
    print(
        f"One training step of {model.config.model_type} on one device, every batch full length (the worst case):\n"
        + ", ".join(f"{k} {format_value(v)}" for k, v in settings.items())
        + "\n"
    )
    print(estimate.table())
    sizes = [2**i for i in range(8)]
    peaks = {b: estimate_training_memory(model, **{**settings, "per_device_train_batch_size": b}).peak for b in sizes}
    print("\npeak by per_device_train_batch_size: " + ", ".join(f"{b}: {format_bytes(p)}" for b, p in peaks.items()))


def estimate_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-estimate --config FILE [--key value ...]``: the memory a training config needs."""
    return run(_estimate, argv)


def _export(argv: Sequence[str] | None) -> dict:
    from titlegen.engines.ct2 import DEFAULT_QUANTIZATION, QUANTIZATIONS

    parser = argparse.ArgumentParser(
        prog="titlegen-export",
        allow_abbrev=False,
        description="Export a model folder (or a LoRA adapter, merged first) to CTranslate2, with its tokenizer, "
        "generation settings and run_config.yaml: titlegen-predict, titlegen-compare and run.sh decode the folder "
        "with CTranslate2. The export's log-probabilities are checked against the model's before it is written.",
    )
    parser.add_argument("model_dir", help="model folder (or hub id), or LoRA adapter folder")
    parser.add_argument("-o", "--output_dir", required=True, help="folder to write (must not exist)")
    parser.add_argument(
        "--quantization",
        default=DEFAULT_QUANTIZATION,
        choices=QUANTIZATIONS,
        help=f"weight type (default: {DEFAULT_QUANTIZATION}, the fastest on CPU; float16 or bfloat16 for GPUs)",
    )
    args = parser.parse_args(argv)

    from titlegen.engines.ct2 import export_model

    info = export_model(args.model_dir, args.output_dir, args.quantization)
    print(
        f"wrote {args.output_dir}: {info['model_type']} in {info['quantization']}, log-probabilities within "
        f"{info['log_prob_error']:.2g} of the model's per token"
    )
    return info


def export_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-export MODEL_DIR -o OUT [--quantization int8|...]``: a CTranslate2 model titlegen can decode."""
    return run(_export, argv)
