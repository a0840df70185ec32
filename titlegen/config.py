"""Settings: every command's settings as dataclasses, read from a YAML file and command-line flags.

Each setting is declared once, as a dataclass field (or by transformers, in ``Seq2SeqTrainingArguments``):
one name, one type, one help text, whichever command reads it. A YAML key, a command-line flag and the
field share that name, and the names are the ones transformers or its summarization example already use.
Commands compose these dataclasses; a command that needs only some settings of a declaration takes them
with `settings_from`. A YAML file gives the defaults, flags override them, and an unknown key or flag, an
out-of-range number or an unreadable file is a one-line `TitlegenError` naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from titlegen import TitlegenError
from titlegen.engines import BACKENDS


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from: a pretrained one, or (without model_name_or_path) a new one."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. google/mt5-small) or local folder of the seq2seq model to start from.",
            "aliases": ["--model"],
        },
    )
    model_type: str = field(
        default="mt5",
        metadata={"help": "Architecture of a model built from scratch (any seq2seq model_type)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value settings for a model built from scratch (model_name_or_path "
            "empty), e.g. 'd_model=256,num_layers=4,num_heads=4'."
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
        default=8000, metadata={"help": "Vocabulary size of a tokenizer trained on the training text.", "min": 16}
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
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "After a use_lora run, also write output_dir/merged: the adapter merged into the pretrained "
            "weights, a plain model that loads without peft."
        },
    )


@dataclass
class LoraArguments:
    """Low-rank adapters (LoRA, with peft) in place of full fine-tuning: titlegen-train and titlegen-rl."""

    use_lora: bool = field(
        default=False,
        metadata={
            "help": "Train low-rank adapters and keep the pretrained weights fixed. A titlegen-train output_dir "
            "then holds the adapter (titlegen-predict and titlegen-merge accept it); titlegen-rl merges it."
        },
    )
    lora_r: int = field(
        default=8, metadata={"help": "Rank of the adapters: higher adapts more, with more parameters.", "min": 1}
    )
    lora_alpha: int = field(
        default=16, metadata={"help": "Adapter scale: updates are multiplied by lora_alpha/lora_r.", "min": 1}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input.", "min": 0})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q", "k", "v", "o"],
        metadata={
            "help": "Layers to adapt, by name. Default: mT5's attention projections. Add wi_0 wi_1 wo for its "
            "feed-forward layers, or give all-linear for every linear layer but the output layer."
        },
    )


@dataclass
class DataArguments:
    """Where the data is and how it is cut to length."""

    train_file: str | None = field(default=None, metadata={"help": "Training jsonl (course format)."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation jsonl. Without it, a seeded split of train_file is used."}
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Share of train_file held out when no validation_file is given.", "min": 0, "max": 100},
    )
    text_column: str = field(default="maintext", metadata={"help": "Field holding the article."})
    summary_column: str = field(default="title", metadata={"help": "Field holding the title."})
    id_column: str = field(default="id", metadata={"help": "Field holding the record id."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every article (e.g. 'summarize: ')."})
    max_source_length: int = field(
        default=256, metadata={"help": "Articles are truncated to this many tokens.", "min": 1}
    )
    max_target_length: int = field(default=64, metadata={"help": "Titles are truncated to this many tokens.", "min": 1})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs.", "min": 1}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation pairs.", "min": 1}
    )
    lead_pairs: float = field(
        default=0.0,
        metadata={
            "help": "Also train on article-lead pairs (the article's first max_target_length tokens as its "
            "title), this many per training pair (0-1). Teaches a model trained from scratch to copy from "
            "the article; 0 for pretrained models.",
            "min": 0,
            "max": 1,
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
    """titlegen's own settings of a training run: titlegen-train and titlegen-rl."""

    segmenter: str = field(
        default="char",
        metadata={
            "help": "Word segmenter of the ROUGE computed during training (and of titlegen-rl's reward).",
            "choices": ["char", "jieba", "ckip", "auto"],
        },
    )
    generation_article_tokens_only: bool | None = field(
        default=None,
        metadata={
            "help": "Titles use only tokens of their own article (and end-of-title), in evaluation and as the "
            "saved model's default: fewer miscopied characters for a small model trained from scratch. "
            "Default: as the starting model's generation config says (off for a new model)."
        },
    )
    generation_backend: str = field(
        default="transformers",
        metadata={
            "help": "What writes the titles of each evaluation: transformers' generate, or ct2 (the model exported "
            "to CTranslate2 at each evaluation, int8 on CPU; README, CTranslate2).",
            "choices": [backend for backend in BACKENDS if backend != "auto"],
        },
    )
    generation_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "The longest title generated, in tokens, in evaluation and as the saved model's default "
            "(default: max_target_length).",
            "min": 1,
        },
    )
    generation_no_loops: bool | None = field(
        default=None,
        metadata={
            "help": "Titles never hold a unit of 1-4 tokens three times in a row unless their article does "
            "(titlegen/loops.py), in evaluation and as the saved model's default: a guard against titles that loop. "
            "Default: as the starting model's generation config says (off for a new model)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of the best metric.", "min": 1},
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the latest complete checkpoint in output_dir."}
    )
    flush_denormal: bool = field(
        default=True,
        metadata={"help": "On CPU, flush denormal floats to zero: arithmetic on them is many times slower."},
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On CPU with glibc, keep freed memory in the process for the next step instead of handing "
            "large blocks back to the system, which zeroes them again at their next use (bench/README.md)."
        },
    )


@dataclass
class GenerationArguments:
    """The model, the engine that runs it, and the batches of a command that writes titles: titlegen-predict,
    titlegen-compare, titlegen-serve."""

    model_name_or_path: str = field(
        metadata={
            "help": "Model folder to write titles with: one titlegen-train wrote (full, pruned or LoRA adapter), "
            "or a hub id.",
            "aliases": ["--model"],
        }
    )
    batch_size: int = field(default=16, metadata={"help": "Articles per generate call.", "min": 1})
    bf16: bool = field(default=False, metadata={"help": "Generate under bfloat16 autocast (transformers backend)."})
    seed: int = field(
        default=42, metadata={"help": "Seed of sampling; a sampled title depends only on it and its article."}
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": "transformers, ct2 (a titlegen-export folder, decoded by CTranslate2), or auto: by the folder.",
            "choices": list(BACKENDS),
        },
    )
    compute_type: str | None = field(
        default=None,
        metadata={"help": "ct2 backend: CTranslate2's compute type (default: the export's weight type on CPU)."},
    )
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads for the model (default: the library's choice).", "min": 1}
    )


@dataclass
class DecodingArguments:
    """How titles are decoded: a named preset (titlegen.strategies), and generate arguments on top of it."""

    strategy: str | None = field(
        default=None,
        metadata={"help": "Decoding preset: greedy, beam, beam_no_repeat, top_k, top_p or temperature (default: "
                  "the model's generation config)."},
    )  # fmt: skip
    num_beams: int | None = field(default=None, metadata={"help": "Beam width (1 = greedy).", "min": 1})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Longest title, in tokens.", "min": 1})
    do_sample: bool | None = field(default=None, metadata={"help": "Sample instead of searching."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k likeliest tokens (0: all).", "min": 0})
    top_p: float | None = field(
        default=None, metadata={"help": "Sample from the smallest set of tokens of mass p.", "min": 0, "max": 1}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Softmax temperature for sampling.", "min_exclusive": 0}
    )
    no_repeat_ngram_size: int | None = field(
        default=None, metadata={"help": "Forbid repeating n-grams of this size (0: allow).", "min": 0}
    )
    repetition_penalty: float | None = field(
        default=None, metadata={"help": "Penalty on tokens already in the title (1: none).", "min_exclusive": 0}
    )
    length_penalty: float | None = field(default=None, metadata={"help": "Beam score length exponent."})
    article_tokens_only: bool | None = field(
        default=None, metadata={"help": "Titles use only tokens of their own article (and end-of-title)."}
    )
    no_loops: bool | None = field(
        default=None,
        metadata={"help": "Titles never hold a unit of 1-4 tokens three times in a row unless their article does."},
    )

    def generate_arguments(self) -> dict[str, Any]:
        """The generate arguments set here (None: not set), without the strategy."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "strategy"}


def settings_from(source: type, names: Sequence[str], note: str = "", **defaults) -> type:
    """A dataclass of some settings of `source`, for a command that takes only those.

    The settings keep their name, type and help text; `defaults` replace their defaults for this command
    (a default of None also makes the type optional), and `note` is added to each help text.
    """
    fields = {f.name: f for f in dataclasses.fields(source)}
    hints = typing.get_type_hints(source)
    made = []
    for name in names:
        old = fields[name]
        metadata = dict(old.metadata)
        if note:
            metadata["help"] = f"{metadata.get('help', '').rstrip()} {note}".strip()
        if name in defaults:
            default = defaults[name]
            new = field(default=default, metadata=metadata)
            kind = hints[name] | None if default is None else hints[name]
        else:
            kwargs = {"default": old.default} if old.default is not dataclasses.MISSING else {}
            if old.default_factory is not dataclasses.MISSING:
                kwargs = {"default_factory": old.default_factory}
            new, kind = field(metadata=metadata, **kwargs), hints[name]
        made.append((name, kind, new))
    made.sort(key=lambda item: _has_default(item[2]))  # a dataclass lists its required fields first
    return dataclasses.make_dataclass(f"{source.__name__}Subset", made)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


# Ranges of the settings that transformers declares; titlegen's own carry theirs in their metadata.
TRANSFORMERS_RANGES: dict[str, dict[str, float]] = {
    "per_device_train_batch_size": {"min": 1},
    "per_device_eval_batch_size": {"min": 1},
    "gradient_accumulation_steps": {"min": 1},
    "generation_num_beams": {"min": 1},
    "generation_max_length": {"min": 1},
    "num_train_epochs": {"min_exclusive": 0},
    "learning_rate": {"min": 0},
    "weight_decay": {"min": 0},
    "warmup_steps": {"min": 0},
    "max_grad_norm": {"min": 0},
    "label_smoothing_factor": {"min": 0, "max": 1},
    "logging_steps": {"min_exclusive": 0},
    "eval_steps": {"min_exclusive": 0},
    "save_steps": {"min_exclusive": 0},
    "save_total_limit": {"min": 1},
}


def check_range(name: str, value: Any, bounds: Mapping[str, float], source: str) -> None:
    """Raises `TitlegenError` when a number lies outside `bounds` (``min``, ``min_exclusive``, ``max``)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if "min" in bounds and value < bounds["min"]:
        raise TitlegenError(f"{source}: {name} must be at least {bounds['min']}, got {value}")
    if "min_exclusive" in bounds and value <= bounds["min_exclusive"]:
        raise TitlegenError(f"{source}: {name} must be greater than {bounds['min_exclusive']}, got {value}")
    if "max" in bounds and value > bounds["max"]:
        raise TitlegenError(f"{source}: {name} must be at most {bounds['max']}, got {value}")


def check_ranges(instances: Sequence[Any], sources: Mapping[str, str] | None = None) -> None:
    """Raises `TitlegenError` for the first numeric setting out of its range, naming where it was set.

    Args:
        instances: Parsed settings (dataclass instances).
        sources: Where each setting was set (a config file), by name; the command line otherwise.
    """
    for obj in instances:
        for f in dataclasses.fields(obj):
            bounds = setting_range(f) or TRANSFORMERS_RANGES.get(f.name, {})
            source = (sources or {}).get(f.name, "command line")
            check_range(f.name, getattr(obj, f.name, None), bounds, source)


def setting_range(setting: dataclasses.Field) -> dict[str, float]:
    """The bounds a titlegen setting declares in its metadata."""
    return {k: v for k, v in setting.metadata.items() if k in _RANGE_KEYS}


_RANGE_KEYS = ("min", "min_exclusive", "max")
_TITLEGEN_METADATA = (*_RANGE_KEYS, "positional")


def _yaml_load(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise TitlegenError(f"{path}: cannot read config ({err.strerror})") from err
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise TitlegenError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
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


# Training settings that compare evaluations, and their value that turns them off.
NEEDS_EVALUATION = {"load_best_model_at_end": False, "early_stopping_patience": None}


def check_evaluation_needs(values, source: Callable[[str], str]) -> None:
    """Refuses ``eval_strategy: no`` beside a setting that compares evaluations, naming both and where each is set.

    Without this, transformers reports the first as three lines about save strategies, and the second as an
    AssertionError of its EarlyStoppingCallback once the model is loaded.

    Args:
        values: The parsed settings (an argparse namespace); commands without ``eval_strategy`` pass.
        source: Where a setting was given: ``command line`` or the config file's path.
    """
    strategy = getattr(values, "eval_strategy", None)
    if getattr(strategy, "value", strategy) != "no":
        return
    conflicts = [
        f"{name} {getattr(values, name)} ({source(name)})"
        for name, off in NEEDS_EVALUATION.items()
        if hasattr(values, name) and getattr(values, name) != off
    ]
    if conflicts:
        raise TitlegenError(
            f"{source('eval_strategy')}: eval_strategy 'no' leaves no evaluations for {', '.join(conflicts)} to "
            f"compare; turn {'them' if len(conflicts) > 1 else 'it'} off as well, or choose an eval_strategy"
        )


def _parser(types: Sequence[type], description: str | None):
    """transformers' HfArgumentParser with titlegen's conventions.

    A usage error is a `TitlegenError` (one line, exit status 2, as every other error), not argparse's
    usage text; a field with ``"positional": True`` in its metadata is a positional argument; titlegen's own
    metadata keys (ranges) are not passed on to argparse.
    """
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message: str):
            raise TitlegenError(f"command line: {message}")

        @staticmethod
        def _parse_dataclass_field(parser, dataclass_field: dataclasses.Field):
            metadata = dict(dataclass_field.metadata)
            if metadata.get("positional"):
                is_list = typing.get_origin(dataclass_field.type) is list or str(dataclass_field.type).startswith(
                    "list"
                )
                parser.add_argument(dataclass_field.name, nargs="+" if is_list else None, help=metadata.get("help"))
                return
            plain = copy.copy(dataclass_field)
            plain.metadata = MappingProxyType({k: v for k, v in metadata.items() if k not in _TITLEGEN_METADATA})
            HfArgumentParser._parse_dataclass_field(parser, plain)

    # allow_abbrev=False: a flag is a setting's full name, as in YAML; argparse would take --num_beam as --num_beams.
    return Parser(list(types), description=description, allow_abbrev=False)


def parse_args(
    types: Sequence[type],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    defaults: Mapping[str, Any] | None = None,
):
    """Parses ``[--config FILE] [--key value ...]`` into one instance of each dataclass in `types`.

    The YAML file gives defaults; command-line flags override them. Unknown keys and flags, values of the
    wrong type and numbers out of their range are `TitlegenError`s naming the setting and where it was set.
    `defaults`, when given, replace the dataclasses' own defaults, below the YAML file.

    Returns:
        A tuple with one instance per type, in the order of `types`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(types, description)
    parser.add_argument("--config", default=None, help="YAML file with default values for any setting below.")
    if defaults:
        parser.set_defaults(**defaults)
    known, unknown = parser.parse_known_args(argv)  # finds --config (and answers --help at once)
    if unknown:
        flags = [a[2:].split("=")[0] for a in unknown if a.startswith("--")]
        check_keys(flags, types, "command line")
        raise TitlegenError(f"command line: unexpected argument {unknown[0]!r}")
    from_file: dict[str, Any] = {}
    if known.config:
        from_file = load_config_file(known.config, types)
        parser.set_defaults(**from_file)
    if hasattr(known, "use_cpu") and not _has_accelerator():
        # transformers refuses `bf16: true` on a CPU-only machine unless use_cpu is set; setting it
        # there changes nothing else, and keeps bf16 one flag on every machine.
        parser.set_defaults(use_cpu=True)
    flags = {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    check_evaluation_needs(
        parser.parse_args(argv), lambda name: "command line" if name in flags else known.config or "default"
    )
    try:
        *instances, _namespace = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    except ValueError as err:  # raised by the dataclasses' own checks, e.g. TrainingArguments.__post_init__
        raise TitlegenError(f"{known.config or 'command line'}: {' '.join(str(err).split())}") from err
    check_ranges(instances, {name: known.config for name in from_file if name not in flags})
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


def trained_settings(model_dir: str | Path, overrides: Any = None) -> dict[str, Any]:
    """The data settings a model folder was trained with: its run_config.yaml over `DataArguments`' defaults.

    A hub id, or a folder without run_config.yaml, gets the defaults. `overrides`, a dataclass instance of a
    command's preprocessing settings, replaces each setting it gives (one that is None keeps the trained value).
    """
    settings = dataclasses.asdict(DataArguments())
    path = Path(model_dir) / "run_config.yaml"
    if path.is_file():
        settings.update(_yaml_load(str(path)))
    if overrides is not None:
        settings.update({k: v for k, v in vars(overrides).items() if v is not None})
    return settings
