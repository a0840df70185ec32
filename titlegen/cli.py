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
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _evaluate(argv: Sequence[str] | None) -> dict:
    from titlegen.data import read_jsonl
    from titlegen.metrics import SEGMENTERS, get_segmenter, tw_rouge

    parser = argparse.ArgumentParser(
        prog="titlegen-eval",
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
    from titlegen.tokenizer import train_tokenizer

    parser = argparse.ArgumentParser(
        prog="titlegen-tokenizer",
        description="Train a SentencePiece tokenizer (mT5 conventions, byte fallback) on jsonl text.",
    )
    parser.add_argument("files", nargs="+", help="jsonl files to learn from")
    parser.add_argument("-o", "--output_dir", required=True, help="tokenizer folder to write")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--columns", nargs="+", default=["maintext", "title"], help="fields to learn from")
    args = parser.parse_args(argv)

    texts = [r[c] for path in args.files for r in read_jsonl(path, fields=args.columns) for c in args.columns]
    tokenizer = train_tokenizer(texts, args.output_dir, vocab_size=args.vocab_size)
    print(f"wrote {args.output_dir} ({len(tokenizer)} tokens)")


def tokenizer_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-tokenizer FILE.jsonl ... -o DIR [--vocab_size N]``."""
    return run(_train_tokenizer, argv)


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
