"""Reading settings: a YAML file and command-line flags into the dataclasses that declare them.

The settings themselves are declared once, as dataclass fields (`titlegen.arguments`, or by transformers in
``Seq2SeqTrainingArguments``). Commands compose those dataclasses; a command that needs only some settings of a
declaration takes them with `settings_from`. A YAML file gives the defaults, flags override them, and an unknown
key or flag, an out-of-range number or an unreadable file is a one-line `TitlegenError` naming it. A run's
settings are saved beside its outputs (`save_run_config`), so that it can be run again from them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import math
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from titlegen import TitlegenError, __version__
from titlegen.arguments import MAX_NEW_TOKENS, MAX_NUM_BEAMS, MAX_SEED
from titlegen.corpus import expand_data_dir
from titlegen.data import atomic_write_text


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
    "generation_num_beams": {"min": 1, "max": MAX_NUM_BEAMS},
    "generation_max_length": {"min": 1, "max": MAX_NEW_TOKENS},
    "seed": {"min": 0, "max": MAX_SEED},
    "data_seed": {"min": 0, "max": MAX_SEED},
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
    """Raises `TitlegenError` when a number is not finite (NaN, infinity) or lies outside `bounds` (``min``,
    ``min_exclusive``, ``max``).

    Every comparison with NaN is false, so a NaN would pass any range; an infinity is no setting either.
    """
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise TitlegenError(f"{source}: {name} must be a finite number, got {value}")
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


def read_yaml(path: str) -> dict[str, Any]:
    """A YAML file's mapping; an unreadable file, bad YAML or anything but a mapping is a `TitlegenError`."""
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
    values = read_yaml(path)
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

    body = yaml.safe_dump(config, allow_unicode=True, sort_keys=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + body)


def save_run_config(output_dir: str | Path, command: str, *settings) -> None:
    """Writes output_dir/run_config.yaml: the run's settings that differ from the defaults, and how to rerun it."""
    import torch
    import transformers

    path = Path(output_dir) / "run_config.yaml"
    save_config(
        path,
        resolved_config(*settings),
        header=f"Resolved settings of this run (titlegen {__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}).\nReproduce it with: {command} --config {path}",
    )
