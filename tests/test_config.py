from pathlib import Path

import pytest
import yaml

from titlegen import TitlegenError, cli
from titlegen.config import (
    parse_args,
    resolved_config,
    save_config,
)
from titlegen.corpus import expand_data_dir
from titlegen.modeling import build_model
from titlegen.recipes import compare, predict, predict_ray, serve, train
from titlegen.rl import config as rl_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN_TYPES = train.settings()
RL_TYPES = rl_config.settings()  # trainer_args/rl_*.yaml configure titlegen-rl
CONFIGS = sorted((ROOT / "trainer_args").glob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"mt5_small_full.yaml", "tiny_offline.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    instances = parse_args(RL_TYPES if path.name.startswith("rl_") else TRAIN_TYPES, ["--config", str(path)])
    values = yaml.safe_load(path.read_text())
    for name, value in values.items():
        obj = next(o for o in instances if hasattr(o, name))
        got = getattr(obj, name)
        value = expand_data_dir(value)  # ${TITLEGEN_DATA} stands for the data folder
        assert getattr(got, "value", got) == value or got == value, name
    assert path.read_text().startswith("#"), "a config starts with a comment saying what it is for"
    assert "titlegen-" in path.read_text().split("\n\n")[0], "its header names the command that runs it"


def test_command_line_overrides_config():
    *_, training_args = parse_args(
        TRAIN_TYPES,
        ["--config", str(ROOT / "trainer_args/tiny_offline.yaml"), "--learning_rate", "5e-4", "--seed", "7"],
    )
    assert training_args.learning_rate == 5e-4
    assert training_args.seed == 7
    assert training_args.per_device_train_batch_size == 16  # from the YAML


def test_given_defaults_sit_below_config_and_command_line():
    defaults = {"max_source_length": 100, "max_target_length": 10, "source_prefix": "x: "}
    argv = ["--config", str(ROOT / "trainer_args/tiny_offline.yaml"), "--max_target_length", "20"]
    _, _, data_args, *_ = parse_args(TRAIN_TYPES, argv, defaults=defaults)
    assert data_args.source_prefix == "x: "  # set nowhere else
    assert data_args.max_source_length == 64  # the YAML's
    assert data_args.max_target_length == 20  # the command line's


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learnig_rate: 0.1\noutput_dir: x\n")
    with pytest.raises(
        TitlegenError, match=r"bad\.yaml: unknown setting 'learnig_rate' \(did you mean 'learning_rate'"
    ):
        parse_args(TRAIN_TYPES, ["--config", str(path)])


def test_unknown_flag_fails():
    with pytest.raises(TitlegenError, match="command line: unknown setting 'learnig_rate' \\(did you mean"):
        parse_args(TRAIN_TYPES, ["--output_dir", "x", "--learnig_rate", "1"])


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(TitlegenError, match="broken.yaml: not valid YAML"):
        parse_args(TRAIN_TYPES, ["--config", str(path)])


def test_resolved_config_reproduces_the_run(tmp_path):
    argv = ["--config", str(ROOT / "trainer_args/tiny_offline.yaml"), "--learning_rate", "5e-4"]
    first = parse_args(TRAIN_TYPES, argv)
    save_config(tmp_path / "run_config.yaml", resolved_config(*first), header="test")
    again = parse_args(TRAIN_TYPES, ["--config", str(tmp_path / "run_config.yaml")])
    assert resolved_config(*again) == resolved_config(*first)
    assert again[4].learning_rate == 5e-4


def test_predict_flags_have_short_aliases():
    args, files, *_ = parse_args(predict.settings(), ["--model", "m", "--input", "a.jsonl", "--output", "b.jsonl"])
    assert (args.model_name_or_path, files.input_file, files.output_file) == ("m", "a.jsonl", "b.jsonl")


@pytest.mark.parametrize("name", ["mt5_small_lora.yaml", "tiny_lora_offline.yaml"])
def test_lora_configs_adapt_a_pretrained_model(name):
    model_args, lora_args, *_ = parse_args(TRAIN_TYPES, ["--config", str(ROOT / "trainer_args" / name)])
    assert lora_args.use_lora and model_args.model_name_or_path


def test_offline_lora_targets_layers_the_offline_model_has(tokenizer):
    (_, lora_args, *_), (offline_args, *_) = (
        parse_args(TRAIN_TYPES, ["--config", str(ROOT / "trainer_args" / name)])
        for name in ("tiny_lora_offline.yaml", "tiny_offline.yaml")
    )
    model = build_model(offline_args.model_type, tokenizer, offline_args.config_overrides)
    layer_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(lora_args.lora_target_modules) <= layer_names


def command_settings() -> dict[str, tuple[type, ...]]:
    """The settings of every command that takes a --config or flags."""

    return {
        "titlegen-train": train.settings(),
        "titlegen-rl": rl_config.settings(),
        "titlegen-predict": predict.settings(),
        "titlegen-predict-ray": predict_ray.settings(),
        "titlegen-compare": compare.settings(),
        "titlegen-serve": serve.settings(),
        "titlegen-eval": (cli.EvalArguments,),
        "titlegen-tokenizer": (cli.TokenizerFiles, cli.TextColumns),
        "titlegen-merge": (cli.MergeArguments,),
        "titlegen-prune-vocab": (cli.PruneArguments, cli.TextColumns),
        "titlegen-plot": (cli.PlotArguments,),
        "titlegen-export": (cli.ExportArguments,),
    }


# Settings that share a name but not a meaning: the model a training run starts from and the model that writes
# titles; what each command writes; and bf16 and seed, which transformers declares for training and the
# generating commands for generation.
SAME_NAME_OTHER_SETTING = {"model_name_or_path", "output_dir", "bf16", "seed"}


def test_each_setting_is_declared_once():
    """Wherever a setting appears, it has one type and one help text (`settings_from` may add a note to it)."""
    import dataclasses
    import types
    import typing

    def plain(kind) -> str:
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            return " | ".join(plain(k) for k in typing.get_args(kind) if k is not type(None))
        return getattr(kind, "__name__", str(kind))

    found: dict[str, set[tuple[str, str]]] = {}
    for settings in command_settings().values():
        for kind in settings:
            hints = typing.get_type_hints(kind)
            for f in dataclasses.fields(kind):
                found.setdefault(f.name, set()).add((plain(hints[f.name]), f.metadata.get("help", "")))
    for name, declarations in found.items():
        if name in SAME_NAME_OTHER_SETTING:
            continue
        shortest = min(declarations, key=lambda d: len(d[1]))
        assert all(kind == shortest[0] and text.startswith(shortest[1]) for kind, text in declarations), name


def test_no_evaluations_beside_settings_that_compare_them_is_one_line(capsys):
    config = str(ROOT / "trainer_args" / "mt5_small_full.yaml")
    with pytest.raises(TitlegenError) as raised:
        parse_args(TRAIN_TYPES, ["--config", config, "--eval_strategy", "no"])
    assert str(raised.value) == (
        f"command line: eval_strategy 'no' leaves no evaluations for load_best_model_at_end True ({config}), "
        f"early_stopping_patience 3 ({config}) to compare; turn them off as well, or choose an eval_strategy"
    )
    argv = ["--config", config, "--eval_strategy", "no", "--load_best_model_at_end", "false"]
    with pytest.raises(TitlegenError, match=rf"leaves no evaluations for early_stopping_patience 3 \({config}\)"):
        parse_args(TRAIN_TYPES, argv)  # transformers' EarlyStoppingCallback would assert, after the model loads
    with pytest.raises(TitlegenError) as raised:  # transformers' own check, in one line naming the file
        parse_args(TRAIN_TYPES, ["--config", config, "--save_strategy", "steps"])
    assert str(raised.value).startswith(f"{config}: --load_best_model_at_end requires the save and eval strategy")
    assert "\n" not in str(raised.value)
