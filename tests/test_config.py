from pathlib import Path

import pytest
import yaml
from transformers import Seq2SeqTrainingArguments

from recipes.predict import PredictArguments
from titlegen import TitlegenError
from titlegen.config import (
    DataArguments,
    ModelArguments,
    RunArguments,
    parse_args,
    resolved_config,
    save_config,
)
from titlegen.corpus import expand_data_dir
from titlegen.modeling import build_model
from titlegen.rl import RLArguments

ROOT = Path(__file__).resolve().parents[1]
TRAIN_TYPES = (ModelArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments)
RL_TYPES = (RLArguments, DataArguments)  # trainer_args/rl_*.yaml configure titlegen-rl
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
    _, data_args, *_ = parse_args(TRAIN_TYPES, argv, defaults=defaults)
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
    assert again[3].learning_rate == 5e-4


def test_predict_flags_have_short_aliases():
    (args,) = parse_args((PredictArguments,), ["--model", "m", "--input", "a.jsonl", "--output", "b.jsonl"])
    assert (args.model_name_or_path, args.input_file, args.output_file) == ("m", "a.jsonl", "b.jsonl")


@pytest.mark.parametrize("name", ["mt5_small_lora.yaml", "tiny_lora_offline.yaml"])
def test_lora_configs_adapt_a_pretrained_model(name):
    model_args, *_ = parse_args(TRAIN_TYPES, ["--config", str(ROOT / "trainer_args" / name)])
    assert model_args.use_lora and model_args.model_name_or_path


def test_offline_lora_targets_layers_the_offline_model_has(tokenizer):
    (lora_args, *_), (offline_args, *_) = (
        parse_args(TRAIN_TYPES, ["--config", str(ROOT / "trainer_args" / name)])
        for name in ("tiny_lora_offline.yaml", "tiny_offline.yaml")
    )
    model = build_model(offline_args.model_type, tokenizer, offline_args.config_overrides)
    layer_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(lora_args.lora_target_modules) <= layer_names
