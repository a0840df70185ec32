"""Training under torchrun and accelerate launch: 2 CPU processes (gloo) match one process with the same batch."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from titlegen.recipes.train import train

from .conftest import ROOT, logged_losses, read_lines, subprocess_env, tiny_train_args

# Global batch 4 = 2 processes x 2 articles; 12 articles, 2 epochs: 6 steps, a checkpoint every 3.
RUN = ("--eval_strategy", "no", "--load_best_model_at_end", "false", "--save_strategy", "steps", "--save_steps", "3",
       "--bf16", "false")  # fmt: skip
SCRIPT = str(ROOT / "tests" / "record_writes.py")
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2"],
    "accelerate launch": ["-m", "accelerate.commands.launch", "--num_processes", "2",
                          "--config_file", str(ROOT / "trainer_args" / "accelerate" / "ddp_multi_gpu.yaml")],
}  # fmt: skip

pytestmark = pytest.mark.slow  # real launchers: a process per rank


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("one") / "run"
    train(tiny_train_args(output_dir, *RUN, "--per_device_train_batch_size", "4"))
    return output_dir


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_train_like_one_and_save_once(launcher, one_process, tmp_path):
    output_dir, writes_log = tmp_path / "run", tmp_path / "writes.log"
    args = tiny_train_args(output_dir, *RUN, "--per_device_train_batch_size", "2")
    result = subprocess.run(
        [sys.executable, *LAUNCHERS[launcher], SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**subprocess_env(), "TITLEGEN_WRITES_LOG": str(writes_log)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # Saves once: every output is written by process 0 alone, and only once.
    writes = Counter(tuple(line.split(" ", 1)) for line in writes_log.read_text().splitlines())
    assert {rank for rank, _ in writes} == {"0"}, writes
    assert all(count == 1 for count in writes.values()), writes
    paths = {path for _, path in writes}
    for name in ("run_config.yaml", "tokenizer", "checkpoint-3", "checkpoint-6", "eval_predictions.jsonl"):
        assert any(path.startswith(str(output_dir / name)) for path in paths), name
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    # Trains like one process with the same global batch, and scores the same titles.
    assert logged_losses(output_dir) == pytest.approx(logged_losses(one_process), rel=1e-4)
    assert read_lines(output_dir / "eval_predictions.jsonl") == read_lines(one_process / "eval_predictions.jsonl")
    rouge = {k: v for k, v in json.loads((one_process / "eval_results.json").read_text()).items() if "rouge" in k}
    assert rouge and json.loads((output_dir / "eval_results.json").read_text()).items() >= rouge.items()
    expected, got = load_file(one_process / "model.safetensors"), load_file(output_dir / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


ACCELERATE_CONFIGS = sorted((ROOT / "trainer_args" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load_and_their_commands_are_in_the_readme(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(path)  # raises on unknown keys
    assert config.mixed_precision is None, "precision comes from the training config (bf16), not from here"
    header = path.read_text().split("\n\n")[0]
    commands = [line.lstrip("# ").strip() for line in header.splitlines() if "accelerate launch" in line]
    assert commands and all(f"--config_file trainer_args/accelerate/{path.name}" in c for c in commands)
    readme = (ROOT / "README.md").read_text()
    for command in commands:
        assert command in readme, command
    if config.distributed_type == "DEEPSPEED":
        settings = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert settings["zero_optimization"]["stage"] == 2
        # "auto" lets transformers fill them from the training config, so they cannot disagree with it.
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert settings[key] == "auto", key
        assert settings["bf16"]["enabled"] == "auto"


def test_accelerate_configs_cover_multi_gpu_multi_node_and_zero2():
    assert {p.name for p in ACCELERATE_CONFIGS} == {"ddp_multi_gpu.yaml", "ddp_multi_node.yaml", "deepspeed_zero2.yaml"}
