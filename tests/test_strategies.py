import dataclasses
import re

import pytest
from transformers import GenerationConfig
from transformers.generation.configuration_utils import GenerationMode

from titlegen import TitlegenError
from titlegen.arguments import DecodingArguments
from titlegen.strategies import (
    DEFAULT_GRID,
    STRATEGIES,
    check_grid,
    decoding_arguments,
    load_grid,
    save_grid,
    setting_filename,
    setting_name,
)

EXPECTED = {
    "greedy": (GenerationMode.GREEDY_SEARCH, {"num_beams": 1, "do_sample": False}),
    "beam": (GenerationMode.BEAM_SEARCH, {"num_beams": 4, "do_sample": False, "no_repeat_ngram_size": 0}),
    "beam_no_repeat": (GenerationMode.BEAM_SEARCH, {"num_beams": 4, "no_repeat_ngram_size": 2}),
    "top_k": (GenerationMode.SAMPLE, {"num_beams": 1, "top_k": 50, "top_p": 1.0, "temperature": 1.0}),
    "top_p": (GenerationMode.SAMPLE, {"num_beams": 1, "top_k": 0, "top_p": 0.9, "temperature": 1.0}),
    "temperature": (GenerationMode.SAMPLE, {"num_beams": 1, "top_k": 0, "top_p": 1.0, "temperature": 0.7}),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_presets_map_to_generation_arguments(strategy):
    mode, expected = EXPECTED[strategy]
    arguments = decoding_arguments(strategy)
    assert {k: arguments[k] for k in expected} == expected
    assert GenerationConfig(**arguments).get_generation_mode() == mode


def test_the_strategy_help_names_every_preset():
    """config.py cannot import the presets (strategies.py imports config), so its help lists them by hand."""
    (strategy,) = [f for f in dataclasses.fields(DecodingArguments) if f.name == "strategy"]
    listed = re.search(r"preset: (.*) \(default", strategy.metadata["help"]).group(1)
    assert re.split(r", | or ", listed) == list(STRATEGIES)


def test_a_preset_overrides_the_model_generation_config():
    """A model trained with beam search in its generation_config.json still decodes greedily under 'greedy'."""
    model_config = GenerationConfig(num_beams=4, no_repeat_ngram_size=3, max_new_tokens=32)
    model_config.update(**decoding_arguments("greedy"))
    assert model_config.get_generation_mode() == GenerationMode.GREEDY_SEARCH
    assert model_config.no_repeat_ngram_size == 0 and model_config.max_new_tokens == 32


def test_command_line_arguments_override_a_preset():
    arguments = decoding_arguments("beam", num_beams=8, no_repeat_ngram_size=3, top_p=None)
    assert (arguments["num_beams"], arguments["no_repeat_ngram_size"], arguments["top_p"]) == (8, 3, 1.0)
    assert decoding_arguments(None, num_beams=2) == {"num_beams": 2}, "without a preset, only what was given"
    # titlegen's own guards go beside transformers' arguments: a preset leaves them to the model, unless named.
    assert "article_tokens_only" not in decoding_arguments("beam") and "no_loops" not in decoding_arguments("greedy")
    assert decoding_arguments("beam", article_tokens_only=True)["article_tokens_only"] is True
    assert decoding_arguments("greedy", no_loops=False)["no_loops"] is False


def test_bad_strategies_and_arguments_are_reported():
    with pytest.raises(TitlegenError, match="unknown strategy 'nucleus'; choose one of greedy, beam"):
        decoding_arguments("nucleus")
    with pytest.raises(TitlegenError, match="'num_beam' is not an argument of transformers' GenerationConfig"):
        decoding_arguments("beam", num_beam=4)
    with pytest.raises(TitlegenError, match="command line: `top_p`: `do_sample` is not set to `True`"):
        decoding_arguments("greedy", top_p=0.9)


def test_the_default_grid_has_two_settings_of_every_strategy():
    check_grid(list(DEFAULT_GRID), "default grid")
    for strategy in set(STRATEGIES) - {"greedy"}:  # greedy has nothing to set
        assert sum(s["strategy"] == strategy for s in DEFAULT_GRID) >= 2, strategy
    names = [setting_name(s) for s in DEFAULT_GRID]
    assert "greedy" in names and "beam num_beams=4" in names and "top_p=0.9" in names
    assert len({setting_filename(s) for s in DEFAULT_GRID}) == len(DEFAULT_GRID)


def test_a_saved_grid_loads_back(tmp_path):
    save_grid(tmp_path / "grid.yaml", list(DEFAULT_GRID))
    assert load_grid(tmp_path / "grid.yaml") == list(DEFAULT_GRID)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy: beam\n", "a grid is a non-empty list of settings"),
        ("- {num_beams: 4}\n", "setting 1: expected a mapping with a 'strategy' key"),
        ("- {strategy: greedy}\n- {strategy: beam, num_beam: 4}\n", "setting 2: 'num_beam' is not an argument"),
        ("- {strategy: greedy}\n- {strategy: greedy}\n", "setting 2: 'greedy' appears twice"),
        ("- [strategy: greedy\n", "not valid YAML"),
    ],
)
def test_a_bad_grid_file_names_the_setting(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(TitlegenError, match=f"grid.yaml: {message}"):
        load_grid(path)
