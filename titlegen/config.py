"""Run configuration: YAML files and command-line flags mapped onto dataclasses.

One name per setting everywhere: a YAML key, a command-line flag and a dataclass field share their
name, and the names are the ones transformers (``Seq2SeqTrainingArguments``) or its summarization
example already use. A YAML file gives the defaults, flags override them, and any unknown key or flag
is an error that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titlegen import TitlegenError


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. google/mt5-small) or local folder of a pretrained seq2seq model. "
            "Leave empty to build a new, randomly initialised model from model_type and config_overrides."
        },
    )
    model_type: str = field(
        default="mt5",
        metadata={"help": "Architecture of a model built from scratch (any seq2seq model_type)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value settings for a model built from scratch, "
            "e.g. 'd_model=256,num_layers=4,num_heads=4'."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer hub id or folder. Defaults to model_name_or_path; for a model built from "
            "scratch, a SentencePiece tokenizer is trained on the training text instead."
        },
    )
    tokenizer_vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary size of a tokenizer trained on the training text."}
    )
    tokenizer_type: str = field(
        default="unigram",
        metadata={
            "help": "Kind of tokenizer trained on the training text: unigram (as mT5) or char (one token per "
            "character; a model trained from scratch learns to copy from the article sooner).",
            "choices": ["unigram", "char"],
        },
    )
    tokenizer_copy_slots: bool = field(
        default=False,
        metadata={
            "help": "Train the tokenizer with copy slots: each distinct Latin word or number of an article becomes "
            "one token, in the article and its title alike, which the model copies whole (titlegen/spans.py)."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are cached."})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Train only the decoder: the encoder's parameters stay fixed."}
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the token embeddings fixed: the shared input embedding and the output layer."},
    )
    use_lora: bool = field(
        default=False,
        metadata={
            "help": "Train low-rank adapters (LoRA, with peft) and keep the pretrained weights fixed. "
            "output_dir then holds the adapter; titlegen-predict and titlegen-merge accept it."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "Rank of the adapters: higher adapts more, with more parameters."})
    lora_alpha: int = field(
        default=16, metadata={"help": "Adapter scale: updates are multiplied by lora_alpha/lora_r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q", "k", "v", "o"],
        metadata={
            "help": "Layers to adapt, by name. Default: mT5's attention projections. Add wi_0 wi_1 wo for its "
            "feed-forward layers, or give all-linear for every linear layer but the output layer."
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "After a use_lora run, also write output_dir/merged: the adapter merged into the pretrained "
            "weights, a plain model that loads without peft."
        },
    )

    def __post_init__(self):
        if self.use_lora and not self.model_name_or_path:
            raise ValueError(
                "use_lora adapts a pretrained model: set model_name_or_path (a hub id or a local model folder)"
            )


@dataclass
class DataArguments:
    """Where the data is and how it is cut to length."""

    train_file: str | None = field(default=None, metadata={"help": "Training jsonl (course format)."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation jsonl. Without it, a seeded split of train_file is used."}
    )
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Share of train_file held out when no validation_file is given."}
    )
    text_column: str = field(default="maintext", metadata={"help": "Field holding the article."})
    summary_column: str = field(default="title", metadata={"help": "Field holding the title."})
    id_column: str = field(default="id", metadata={"help": "Field holding the record id."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every article (e.g. 'summarize: ')."})
    max_source_length: int = field(default=256, metadata={"help": "Articles are truncated to this many tokens."})
    max_target_length: int = field(default=64, metadata={"help": "Titles are truncated to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation pairs."})
    lead_pairs: float = field(
        default=0.0,
        metadata={
            "help": "Also train on article-lead pairs (the article's first max_target_length tokens as its "
            "title), this many per training pair (0-1). Teaches a model trained from scratch to copy from "
            "the article; 0 for pretrained models."
        },
    )
    lead_pairs_clause_end: bool = field(
        default=False,
        metadata={
            "help": "End each lead pair's target before the last clause-ending mark (，。！？；： and their ASCII "
            "forms) within max_target_length, so that the model learns to end a title with a clause "
            "instead of at the length limit."
        },
    )


@dataclass
class RunArguments:
    """titlegen's own switches for a training run."""

    segmenter: str = field(
        default="char",
        metadata={"help": "Word segmenter for the ROUGE computed during training: char, jieba, ckip or auto."},
    )
    generation_article_tokens_only: bool = field(
        default=False,
        metadata={
            "help": "Titles use only tokens of their own article (and end-of-title), in evaluation and as the "
            "saved model's default: fewer miscopied characters for a small model trained from scratch."
        },
    )
    generation_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "The longest title generated, in tokens, in evaluation and as the saved model's default "
            "(default: max_target_length)."
        },
    )
    generation_no_loops: bool = field(
        default=False,
        metadata={
            "help": "Titles never hold a unit of 1-4 tokens three times in a row unless their article does "
            "(titlegen/loops.py), in evaluation and as the saved model's default: a guard against titles that loop."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of the best metric."},
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the latest complete checkpoint in output_dir."}
    )
    flush_denormal: bool = field(
        default=True,
        metadata={"help": "On CPU, flush denormal floats to zero (arithmetic on them is many times slower)."},
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On CPU with glibc, keep freed memory in the process for the next step instead of handing "
            "large blocks back to the system, which zeroes them again at their next use (epochs 7-10 per cent "
            "faster in bench/)."
        },
    )


def _yaml_load(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise TitlegenError(f"{path}: cannot read config ({err.strerror})") from err
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise TitlegenError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise TitlegenError(f"{path}: a config must be a mapping of setting names to values")
    return values


def _field_names(types: Sequence[type]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t) if f.init}


def check_keys(keys: Sequence[str], types: Sequence[type], source: str) -> None:
    """Raises `TitlegenError` naming the first key that no dataclass in `types` has."""
    known = _field_names(types)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TitlegenError(f"{source}: unknown setting '{key}'{hint}")


def load_config_file(path: str, types: Sequence[type]) -> dict[str, Any]:
    """Loads a YAML config and checks that every key is a field of one of `types`.

    ``${TITLEGEN_DATA}`` in a value stands for the data folder (`titlegen.corpus.data_dir`).
    """
    from titlegen.corpus import expand_data_dir

    values = _yaml_load(path)
    check_keys(list(values), types, path)
    return {key: expand_data_dir(value) for key, value in values.items()}


def parse_args(
    types: Sequence[type],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    defaults: Mapping[str, Any] | None = None,
):
    """Parses ``[--config FILE] [--key value ...]`` into one instance of each dataclass in `types`.

    The YAML file gives defaults; command-line flags override them. Unknown keys and flags are errors.
    `defaults`, when given, replace the dataclasses' own defaults, below the YAML file.

    Returns:
        A tuple with one instance per type, in the order of `types`.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: a flag is a setting's full name, as in YAML; argparse would take --num_beam as --num_beams.
    parser = HfArgumentParser(list(types), description=description, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML file with default values for any setting below.")
    if defaults:
        parser.set_defaults(**defaults)
    known, unknown = parser.parse_known_args(argv)  # finds --config (and answers --help at once)
    if unknown:
        flags = [a[2:].split("=")[0] for a in unknown if a.startswith("--")]
        check_keys(flags, types, "command line")
        raise TitlegenError(f"command line: unexpected argument {unknown[0]!r}")
    if known.config:
        parser.set_defaults(**load_config_file(known.config, types))
    if hasattr(known, "use_cpu") and not _has_accelerator():
        # transformers refuses `bf16: true` on a CPU-only machine unless use_cpu is set; setting it
        # there changes nothing else, and keeps bf16 one flag on every machine.
        parser.set_defaults(use_cpu=True)
    try:
        *instances, _namespace = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    except ValueError as err:  # raised by the dataclasses' own checks, e.g. TrainingArguments.__post_init__
        raise TitlegenError(str(err)) from err
    return tuple(instances)


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_config(*instances) -> dict[str, Any]:
    """The settings of a run that differ from the defaults, as one flat mapping.

    Passing the result back as ``--config`` reproduces the run.
    """
    out: dict[str, Any] = {}
    for obj in instances:
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = _plain(getattr(obj, f.name))
            if f.default is not dataclasses.MISSING:
                default = _plain(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = _plain(f.default_factory())
            else:
                default = dataclasses.MISSING
            if value != default:
                out[f.name] = value
    return out


def save_config(path: str | Path, config: dict[str, Any], header: str = "") -> None:
    """Writes a config mapping as YAML (atomically), with an optional comment header."""
    import yaml

    from titlegen.data import atomic_write_text

    body = yaml.safe_dump(config, allow_unicode=True, sort_keys=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + body)
