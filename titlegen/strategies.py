"""Decoding strategies: named presets of generate arguments, and grids of settings to compare.

A preset fixes every search argument, starting from transformers' own defaults, so that nothing leaks in
from a model's generation_config.json: a model trained with ``generation_num_beams: 4`` still decodes
greedily under ``greedy``. The title guards are not search arguments and stay as the model was saved
(``article_tokens_only``, ``no_loops``; whole characters always hold): a preset changes how titles are
searched, not what a title may be, so a model trained to copy its article's tokens keeps doing so under
``beam``. Any generate argument can be set on top of a preset, a guard turned off by name
(``decoding_arguments("beam", num_beams=8, no_loops=False)``).

A setting of a comparison grid is a mapping with a ``strategy`` and its overrides, e.g.
``{"strategy": "top_p", "top_p": 0.5}``; a grid file is a YAML list of them.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

from titlegen import TitlegenError
from titlegen.arguments import DecodingArguments
from titlegen.config import check_range, setting_range
from titlegen.data import atomic_write_text
from titlegen.generation import ARTICLE_TOKENS_ONLY, DEFAULT_TOP_K
from titlegen.loops import NO_LOOPS

# titlegen's own decoding settings, beside transformers' GenerationConfig arguments.
TITLEGEN_ARGUMENTS = (ARTICLE_TOKENS_ONLY, NO_LOOPS)

# transformers' defaults for the arguments the presets use: one beam, no sampling, no penalties.
# Sampling keeps only the DEFAULT_TOP_K likeliest tokens unless told otherwise, so the sampling presets set top_k.
NEUTRAL: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "top_k": DEFAULT_TOP_K,
    "top_p": 1.0,
    "temperature": 1.0,
    "no_repeat_ngram_size": 0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
}
# titlegen's title guards, off where a model's generation config does not say: a preset leaves them as saved.
GUARDS_OFF: dict[str, Any] = {ARTICLE_TOKENS_ONLY: False, NO_LOOPS: False}

STRATEGIES: dict[str, dict[str, Any]] = {
    # The likeliest token at every step.
    "greedy": {},
    # The likeliest whole title among num_beams partial titles kept at every step.
    "beam": {"num_beams": 4},
    # Beam search that may not repeat any n-gram of tokens, against "台灣台灣..." loops.
    "beam_no_repeat": {"num_beams": 4, "no_repeat_ngram_size": 2},
    # Sampling from the k likeliest tokens.
    "top_k": {"do_sample": True, "top_k": 50},
    # Sampling from the fewest tokens that hold probability top_p (nucleus sampling).
    "top_p": {"do_sample": True, "top_k": 0, "top_p": 0.9},
    # Sampling from the whole distribution sharpened (<1) or flattened (>1) by a temperature.
    "temperature": {"do_sample": True, "top_k": 0, "temperature": 0.7},
}

# At least two settings of each strategy, as the course's report asks.
DEFAULT_GRID: tuple[dict[str, Any], ...] = (
    {"strategy": "greedy"},
    {"strategy": "beam", "num_beams": 4},
    {"strategy": "beam", "num_beams": 8},
    {"strategy": "beam_no_repeat", "num_beams": 4, "no_repeat_ngram_size": 2},
    {"strategy": "beam_no_repeat", "num_beams": 4, "no_repeat_ngram_size": 3},
    {"strategy": "beam", "num_beams": 4, ARTICLE_TOKENS_ONLY: True},
    {"strategy": "top_k", "top_k": 10},
    {"strategy": "top_k", "top_k": 50},
    {"strategy": "top_p", "top_p": 0.5},
    {"strategy": "top_p", "top_p": 0.9},
    {"strategy": "temperature", "temperature": 0.7},
    {"strategy": "temperature", "temperature": 1.3},
)


def decoding_arguments(strategy: str | None = None, source: str = "command line", **overrides) -> dict[str, Any]:
    """The generate arguments of a strategy, with `overrides` on top.

    Args:
        strategy: A name from `STRATEGIES`, or None to set only `overrides` (the model's own
            generation config then decides the rest). A preset sets no title guard: the model's own hold.
        source: Where the settings come from, for error messages.
        **overrides: Any ``GenerationConfig`` argument, or ``article_tokens_only``; None values are ignored.

    Raises:
        TitlegenError: for an unknown strategy or argument, or a contradictory combination such as
            ``top_p`` without sampling.
    """
    from transformers import GenerationConfig

    known, ranges = _argument_rules()
    if strategy is not None and strategy not in STRATEGIES:
        raise TitlegenError(f"{source}: unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    arguments = {**NEUTRAL, **STRATEGIES[strategy]} if strategy else {}
    arguments.update({name: value for name, value in overrides.items() if value is not None})
    for name, value in arguments.items():
        if name not in known and name not in TITLEGEN_ARGUMENTS:
            raise TitlegenError(f"{source}: '{name}' is not an argument of transformers' GenerationConfig")
        check_range(name, value, ranges.get(name, {}), source)
    transformers_arguments = {k: v for k, v in arguments.items() if k not in TITLEGEN_ARGUMENTS}
    try:
        GenerationConfig(**transformers_arguments).validate(strict=True)
    except ValueError as err:
        # transformers lists the problems on separate lines after a heading; the first one is enough.
        problems = [line.lstrip("- ") for line in str(err).splitlines() if line.startswith("- ")]
        raise TitlegenError(f"{source}: {problems[0] if problems else str(err).strip()}") from err
    return arguments


@functools.cache
def _argument_rules() -> tuple[frozenset[str], dict[str, dict]]:
    """The names of transformers' GenerationConfig arguments, and the declared ranges of `DecodingArguments`
    (worked out once: a server checks every request's settings)."""
    from transformers import GenerationConfig

    known = frozenset(GenerationConfig().to_dict())
    return known, {f.name: setting_range(f) for f in dataclasses.fields(DecodingArguments)}


def setting_name(setting: dict[str, Any]) -> str:
    """A readable, unique name of a grid setting: ``greedy``, ``beam num_beams=8``, ``top_p=0.9``.

    The strategy's name is left out when the first argument repeats it.
    """
    overrides = [f"{k}={v}" for k, v in setting.items() if k != "strategy"]
    if overrides and overrides[0].startswith(f"{setting['strategy']}="):
        return " ".join(overrides)
    return " ".join([setting["strategy"], *overrides])


def setting_filename(setting: dict[str, Any]) -> str:
    """A file name for a setting's predictions, e.g. ``beam_num_beams=8.jsonl``."""
    return re.sub(r"[^\w.=-]+", "_", setting_name(setting)) + ".jsonl"


def check_grid(settings: list[Any], source: str) -> list[dict[str, Any]]:
    """Checks every setting of a grid (strategy and arguments) and that no two share a name."""
    if not isinstance(settings, list) or not settings:
        raise TitlegenError(f"{source}: a grid is a non-empty list of settings, e.g. '- {{strategy: greedy}}'")
    names: set[str] = set()
    for number, setting in enumerate(settings, start=1):
        where = f"{source}: setting {number}"
        if not isinstance(setting, dict) or "strategy" not in setting:
            raise TitlegenError(f"{where}: expected a mapping with a 'strategy' key, got {setting!r}")
        overrides = {k: v for k, v in setting.items() if k != "strategy"}
        decoding_arguments(setting["strategy"], source=where, **overrides)
        name = setting_name(setting)
        if name in names:
            raise TitlegenError(f"{where}: '{name}' appears twice")
        names.add(name)
    return settings


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """Reads a grid of settings from a YAML list, checking every setting."""
    import yaml

    try:
        settings = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise TitlegenError(f"{path}: cannot read grid ({err.strerror})") from err
    except yaml.YAMLError as err:  # PyYAML's message spans several lines, with the text it stopped at
        raise TitlegenError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    return check_grid(settings, str(path))


def save_grid(path: str | Path, settings: list[dict[str, Any]]) -> None:
    """Writes a grid as a YAML list, one setting a line, atomically; `load_grid` reads it back."""
    import yaml

    atomic_write_text(
        path, yaml.safe_dump(list(settings), allow_unicode=True, sort_keys=False, default_flow_style=None)
    )
