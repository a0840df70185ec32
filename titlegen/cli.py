"""The tools beside the recipes: scoring, tokenizers, merging, pruning, plotting, memory estimates, export,
the data download and the demo's table.

Each is a command (``titlegen-eval``, ...) with the same settings parser, errors and exit statuses as the recipes
(`titlegen.lifecycle`); the recipes themselves are in ``titlegen/recipes/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from titlegen import TitlegenError
from titlegen.arguments import DataArguments, ModelArguments, RunArguments, train_settings
from titlegen.backends import DEFAULT_QUANTIZATION, QUANTIZATIONS
from titlegen.config import parse_args, settings_from
from titlegen.corpus import DATA_ENV, default_download_dir, download
from titlegen.data import read_jsonl
from titlegen.engines.export import export_model
from titlegen.lifecycle import run_command
from titlegen.lora import merge_adapter
from titlegen.memory import estimate_training_memory, format_bytes, format_value, memory_settings, meta_model
from titlegen.metrics import get_segmenter, tw_rouge
from titlegen.model_folder import trained_settings
from titlegen.outputs import check_output_file, check_writable_folder
from titlegen.plotting import plot_learning_curves, read_log_history
from titlegen.prune import prune_vocabulary
from titlegen.showcase import showcase
from titlegen.tokenizer import train_tokenizer


def _evaluate(argv: Sequence[str] | None) -> dict:

    segmenter = settings_from(RunArguments, ["segmenter"], segmenter="auto")
    args, scoring = parse_args(
        (EvalArguments, segmenter),
        argv,
        description="Score predicted titles against reference titles with tw_rouge (the course's metric). "
        "The course's segmenter is ckip; auto takes ckip when its data is present, else jieba with a warning. "
        "ckip's model data is never downloaded implicitly: get it once with `pip install -e .[ckip]` and "
        "`python -c \"from ckiptagger import data_utils; data_utils.download_data_gdown('DIR')\"`, then pass "
        "--ckip_data DIR/data or set TITLEGEN_CKIP_DATA.",
    )

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
    segmenter = get_segmenter(scoring.segmenter, args.ckip_data)
    scores = tw_rouge([predictions[r["id"]] for r in references], [r["title"] for r in references], segmenter)
    print(json.dumps(scores, indent=2))
    return scores


@dataclass
class EvalArguments:
    """The files of titlegen-eval."""

    reference: str = field(metadata={"help": "jsonl with id and title (the answers).", "aliases": ["-r"]})
    submission: str = field(metadata={"help": "jsonl with id and title (the predictions).", "aliases": ["-s"]})
    ckip_data: str | None = field(default=None, metadata={"help": "ckiptagger's model data folder."})


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-eval -r REF.jsonl -s PRED.jsonl [--segmenter ckip|jieba|char|auto]``."""
    return run_command(_evaluate, argv)


@dataclass
class TextColumns:
    """Which fields of the jsonl records a command reads text from."""

    columns: list[str] = field(
        default_factory=lambda: ["maintext", "title"], metadata={"help": "Fields whose text is read."}
    )


def _corpus(files: Sequence[str], columns: Sequence[str]) -> list[str]:

    return [r[c] for path in files for r in read_jsonl(path, fields=columns) for c in columns]


@dataclass
class TokenizerFiles:
    """The files of titlegen-tokenizer."""

    files: list[str] = field(metadata={"help": "jsonl files to learn from.", "positional": True})
    output_dir: str = field(metadata={"help": "Tokenizer folder to write.", "aliases": ["-o"]})


def _train_tokenizer(argv: Sequence[str] | None) -> None:

    tokenizer_settings = settings_from(ModelArguments, ["tokenizer_vocab_size", "tokenizer_type"])
    files, text, settings = parse_args(
        (TokenizerFiles, TextColumns, tokenizer_settings),
        argv,
        description="Train a SentencePiece tokenizer (mT5 conventions, byte fallback) on jsonl text.",
    )

    check_writable_folder(files.output_dir, files.output_dir)
    texts = _corpus(files.files, text.columns)
    tokenizer = train_tokenizer(
        texts, files.output_dir, vocab_size=settings.tokenizer_vocab_size, model_type=settings.tokenizer_type
    )
    print(f"wrote {files.output_dir} ({len(tokenizer)} tokens)")


def tokenizer_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-tokenizer FILE.jsonl ... -o DIR [--tokenizer_vocab_size N] [--tokenizer_type unigram|char]``."""
    return run_command(_train_tokenizer, argv)


@dataclass
class MergeArguments:
    """The folders of titlegen-merge."""

    adapter_dir: str = field(
        metadata={"help": "Adapter folder (adapter_config.json names its base model).", "positional": True}
    )
    output_dir: str = field(metadata={"help": "Model folder to write.", "aliases": ["-o"]})


def _merge(argv: Sequence[str] | None) -> None:

    (args,) = parse_args(
        (MergeArguments,),
        argv,
        description="Merge a LoRA adapter (the output_dir of a use_lora run) into its base model, writing a plain "
        "checkpoint that loads with AutoModelForSeq2SeqLM.from_pretrained without peft.",
    )

    merge_adapter(args.adapter_dir, args.output_dir)
    print(f"wrote {args.output_dir}")


def merge_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-merge ADAPTER_DIR -o OUT``."""
    return run_command(_merge, argv)


@dataclass
class PruneArguments:
    """The folders and corpus of titlegen-prune-vocab."""

    model_name_or_path: str = field(
        metadata={"help": "Model folder (or hub id) with its tokenizer.", "positional": True}
    )
    corpus: list[str] = field(metadata={"help": "jsonl files whose text the model must handle."})
    output_dir: str = field(metadata={"help": "Model folder to write.", "aliases": ["-o"]})


def _prune_vocab(argv: Sequence[str] | None) -> dict:

    prefix = settings_from(
        DataArguments, ["source_prefix"], note="Default: as the model was trained.", source_prefix=None
    )
    args, text, preprocessing = parse_args(
        (PruneArguments, TextColumns, prefix),
        argv,
        description="Shrink a T5/mT5 model and its SentencePiece tokenizer to the tokens a corpus uses. Text "
        "segmented with kept tokens only gets the same tokens and the same logits as with the original model.",
    )

    texts = _corpus(args.corpus, text.columns)
    source_prefix = trained_settings(args.model_name_or_path, preprocessing).source_prefix
    sizes = prune_vocabulary(args.model_name_or_path, texts, args.output_dir, source_prefix)
    (vocab_before, vocab_after), (params_before, params_after) = sizes["vocab_size"], sizes["parameters"]
    print(
        f"wrote {args.output_dir}: {vocab_after:,} of {vocab_before:,} tokens kept; "
        f"parameters {params_before:,} -> {params_after:,} ({params_after / params_before:.1%})"
    )
    return sizes


def prune_vocab_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-prune-vocab MODEL_DIR --corpus FILE.jsonl ... -o OUT``."""
    return run_command(_prune_vocab, argv)


@dataclass
class PlotArguments:
    """The files of titlegen-plot."""

    run_dir: str = field(
        metadata={"help": "A titlegen-train output_dir (or a checkpoint) with trainer_state.json.", "positional": True}
    )
    output: str | None = field(
        default=None, metadata={"help": "PNG to write (default: RUN_DIR/learning_curves.png).", "aliases": ["-o"]}
    )


def _plot(argv: Sequence[str] | None) -> None:

    (args,) = parse_args(
        (PlotArguments,),
        argv,
        description="Plot a training run's learning curves (loss, and evaluation ROUGE-1/2/L) against the step.",
    )

    output = args.output or str(Path(args.run_dir) / "learning_curves.png")
    check_output_file(output)
    plot_learning_curves(read_log_history(args.run_dir), output, title=str(args.run_dir))
    print(f"wrote {output}")


def plot_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-plot RUN_DIR [-o OUT.png]``."""
    return run_command(_plot, argv)


def _estimate(argv: Sequence[str] | None) -> None:
    model_args, lora_args, data_args, _, training_args = parse_args(
        train_settings(),
        argv,
        description="Estimate the peak memory of one training step of a config, per device, without "
        "loading the model's weights. Takes the same --config and flags as titlegen-train.",
    )
    settings = memory_settings(training_args, data_args)
    model = meta_model(model_args, lora_args)
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
    return run_command(_estimate, argv)


@dataclass
class ExportArguments:
    """The folders and weight type of titlegen-export."""

    model_name_or_path: str = field(
        metadata={"help": "Model folder (or hub id), or LoRA adapter folder, to export.", "positional": True}
    )
    output_dir: str = field(metadata={"help": "Folder to write (must not exist).", "aliases": ["-o"]})
    quantization: str = field(
        default=DEFAULT_QUANTIZATION,
        metadata={
            "help": "Weight type: int8 (the fastest on CPU), int8_float32, int8_float16, float16 or bfloat16 "
            "(for GPUs), or float32.",
            "choices": list(QUANTIZATIONS),
        },
    )


def _export(argv: Sequence[str] | None) -> dict:

    (args,) = parse_args(
        (ExportArguments,),
        argv,
        description="Export a model folder (or a LoRA adapter, merged first) to CTranslate2, with its tokenizer, "
        "generation settings and run_config.yaml: titlegen-predict, titlegen-compare, titlegen-serve and run.sh "
        "decode the folder with CTranslate2. The export's log-probabilities are checked against the model's "
        "before it is written.",
    )

    info = export_model(args.model_name_or_path, args.output_dir, args.quantization)
    print(
        f"wrote {args.output_dir}: {info['model_type']} in {info['quantization']}, log-probabilities within "
        f"{info['log_prob_error']:.2g} of the model's per token"
    )
    return info


def export_main(argv: Sequence[str] | None = None) -> int:
    """``titlegen-export MODEL_DIR -o OUT [--quantization int8|...]``: a CTranslate2 model titlegen can decode."""
    return run_command(_export, argv)


@dataclass
class DataCommandArguments:
    """The folders of titlegen-data."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": f"Folder to write (default: ${DATA_ENV}, else {default_download_dir()}).", "aliases": ["-o"]},
    )
    source: str | None = field(
        default=None,
        metadata={
            "help": "Folder or URL with the original files (train.tsv, val.tsv, test.tsv, sample_test.jsonl, "
            "sample_submission.jsonl), e.g. a local copy; default: their public repositories at pinned commits."
        },
    )


def data_main(argv: Sequence[str] | None = None) -> int:
    """titlegen-data: LCSTS and the course sample (`titlegen.corpus`)."""
    return run_command(_data, argv)


def _data(argv: Sequence[str] | None) -> None:
    (args,) = parse_args(
        (DataCommandArguments,),
        argv,
        description="Download LCSTS PART_II and the course's sample articles, check them against pinned SHA-256 "
        "sums and write the data folder that the configs and `make demo` read (lcsts/*.jsonl, adl-news/*.jsonl). "
        f"Then point titlegen at it: export {DATA_ENV}=OUTPUT_DIR (or make ... DATA=OUTPUT_DIR); the default "
        "output folder is also where titlegen looks when neither is set.",
    )
    output_dir = Path(args.output_dir or os.environ.get(DATA_ENV) or default_download_dir())
    try:
        written = download(output_dir, args.source)
    except OSError as err:
        raise TitlegenError(f"{err.filename or output_dir}: cannot write ({err.strerror})") from err
    for path in written:
        print(path)


@dataclass
class ShowcaseArguments:
    """The files and the size of the demo's table."""

    articles: str = field(metadata={"help": "jsonl with id and maintext."})
    references: str = field(metadata={"help": "jsonl with id and title (the answers)."})
    predictions: str = field(metadata={"help": "jsonl with id and title (the model's)."})
    rows: int = field(default=5, metadata={"help": "Articles shown in the table.", "min": 1})
    segmenters: list[str] = field(
        default_factory=lambda: ["char", "auto"], metadata={"help": "tw_rouge segmenters to score with."}
    )


def showcase_main(argv: Sequence[str] | None = None) -> int:
    """titlegen-showcase: the demo's table (`titlegen.showcase`)."""
    return run_command(_showcase, argv)


def _showcase(argv: Sequence[str] | None) -> None:
    (args,) = parse_args(
        (ShowcaseArguments,),
        argv,
        description="What a run's titles look like next to their references: the end of `make demo`.",
    )
    articles = read_jsonl(args.articles, fields=("id", "maintext"))
    references = read_jsonl(args.references, fields=("id", "title"))
    predictions = read_jsonl(args.predictions, fields=("id", "title"), may_be_empty=("title",))
    print(showcase(articles, references, predictions, args.rows, args.segmenters))
