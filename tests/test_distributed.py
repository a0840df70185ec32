"""Training under torchrun and accelerate launch: 2 CPU processes (gloo) match one process with the same batch, and
two machines (the multi-machine config started twice on this one, loopback only) match the two processes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from titlegen.recipes.train import train

from .conftest import ROOT, free_port, logged_losses, read_lines, subprocess_env, tiny_train_args

# Global batch 4 = 2 processes x 2 articles; 12 articles, 2 epochs: 6 steps, a checkpoint every 3.
RUN = ("--eval_strategy", "no", "--load_best_model_at_end", "false", "--save_strategy", "steps", "--save_steps", "3",
       "--bf16", "false")  # fmt: skip
SCRIPT = str(ROOT / "tests" / "record_writes.py")
ACCELERATE = ROOT / "trainer_args" / "accelerate"


def launcher(name: str) -> list[str]:
    """The launcher's arguments for 2 processes on this machine, meeting on 127.0.0.1 at a free port."""
    port = str(free_port())
    if name == "torchrun":
        return ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", port]  # fmt: skip
    return ["-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file",
            str(ACCELERATE / "ddp_multi_gpu.yaml"), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port]  # fmt: skip


LAUNCHERS = ("torchrun", "accelerate launch")


def assert_saved_once(writes_log: Path, output_dir: Path) -> None:
    """Every output was written by process 0 alone, and only once; one set of checkpoints."""
    writes = Counter(tuple(line.split(" ", 1)) for line in writes_log.read_text().splitlines())
    assert {rank for rank, _ in writes} == {"0"}, writes
    assert all(count == 1 for count in writes.values()), writes
    paths = {path for _, path in writes}
    for name in ("run_config.yaml", "tokenizer", "checkpoint-3", "checkpoint-6", "eval_predictions.jsonl"):
        assert any(path.startswith(str(output_dir / name)) for path in paths), name
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def assert_same_weights(got_dir: Path, expected_dir: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    expected, got = load_file(expected_dir / "model.safetensors"), load_file(got_dir / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol, msg=name)


pytestmark = pytest.mark.slow  # real launchers: a process per rank


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("one") / "run"
    train(tiny_train_args(output_dir, *RUN, "--per_device_train_batch_size", "4"))
    return output_dir


def launch(name: str, output_dir: Path, writes_log: Path, *extra: str) -> None:
    args = tiny_train_args(output_dir, *RUN, "--per_device_train_batch_size", "2", *extra)
    result = subprocess.run(
        [sys.executable, *launcher(name), SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**subprocess_env(), "TITLEGEN_WRITES_LOG": str(writes_log)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """A run of 2 processes on one machine under accelerate launch: (output_dir, writes log)."""
    folder = tmp_path_factory.mktemp("two")
    launch("accelerate launch", folder / "run", folder / "writes.log")
    return folder / "run", folder / "writes.log"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_two_processes_train_like_one_and_save_once(name, one_process, two_processes, tmp_path):
    if name == "accelerate launch":
        output_dir, writes_log = two_processes
    else:
        output_dir, writes_log = tmp_path / "run", tmp_path / "writes.log"
        launch(name, output_dir, writes_log)
    assert_saved_once(writes_log, output_dir)

    # Trains like one process with the same global batch, and scores the same titles.
    assert logged_losses(output_dir) == pytest.approx(logged_losses(one_process), rel=1e-4)
    assert read_lines(output_dir / "eval_predictions.jsonl") == read_lines(one_process / "eval_predictions.jsonl")
    rouge = {k: v for k, v in json.loads((one_process / "eval_results.json").read_text()).items() if "rouge" in k}
    assert rouge and json.loads((output_dir / "eval_results.json").read_text()).items() >= rouge.items()
    assert_same_weights(output_dir, one_process)


def start_two_machines(output_dir: Path, writes_log: Path, *extra: str, env: dict | None = None) -> list:
    """ddp_multi_node.yaml started twice on this machine, as machine 0 and machine 1 with one process each."""
    port, args = str(free_port()), tiny_train_args(output_dir, *RUN, "--per_device_train_batch_size", "2", *extra)
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(ACCELERATE / "ddp_multi_node.yaml"),
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                SCRIPT,
                *args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**subprocess_env(), "TITLEGEN_WRITES_LOG": str(writes_log), **(env or {})},
        )  # fmt: skip
        for rank in (0, 1)
    ]


def finish(machines: list) -> None:
    for rank, machine in enumerate(machines):
        output = machine.communicate(timeout=600)[0]
        assert machine.returncode == 0, f"machine {rank}:\n{output[-3000:]}"


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory):
    """A run of 2 machines with one process each: (output_dir, writes log)."""
    folder = tmp_path_factory.mktemp("machines")
    finish(start_two_machines(folder / "run", folder / "writes.log"))
    return folder / "run", folder / "writes.log"


def test_two_machines_train_like_two_processes_and_save_once(two_machines, two_processes):
    output_dir, writes_log = two_machines
    assert_saved_once(writes_log, output_dir)  # the tokenizer too: machine 1 waits for it, then reads it
    expected = logged_losses(two_processes[0])
    assert len(expected) == 6
    assert logged_losses(output_dir) == pytest.approx(expected, abs=1e-5)
    assert read_lines(output_dir / "eval_predictions.jsonl") == read_lines(two_processes[0] / "eval_predictions.jsonl")
    assert_same_weights(output_dir, two_processes[0])


@pytest.mark.slow
def test_two_machines_resume_after_both_are_killed(two_machines, tmp_path):
    output_dir, writes_log = tmp_path / "run", tmp_path / "writes.log"
    machines = start_two_machines(output_dir, writes_log, env={"TITLEGEN_HANG_AFTER_STEP": "3"})
    hung = [Path(f"{writes_log}.hung-{rank}") for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in hung):
        assert all(m.poll() is None for m in machines), "a machine ended before checkpoint-3"
        assert time.monotonic() < deadline, "no checkpoint-3 in 300 s"
        time.sleep(0.2)
    # Both machines die at once, between checkpoint 3 and 6: their workers (which the launchers start in sessions
    # of their own, and which ignore SIGTERM until the step ends) and the launchers.
    for pid in [int(p.read_text()) for p in hung] + [m.pid for m in machines]:
        os.kill(pid, signal.SIGKILL)
    for machine in machines:
        machine.communicate(timeout=60)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (output_dir / "model.safetensors").exists()

    finish(start_two_machines(output_dir, writes_log.with_name("resumed.log"), "--resume", "true"))
    # Steps 4 to 6 were trained after the restart, from checkpoint-3's weights, optimizer and data order.
    assert logged_losses(output_dir) == pytest.approx(logged_losses(two_machines[0]), abs=1e-5)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert_same_weights(output_dir, two_machines[0])


FSDP_SCRIPT = str(ROOT / "tests" / "fsdp_on_cpu.py")


def launch_fsdp(program: list[str], output_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """fsdp_mt5.yaml under accelerate launch with 2 CPU processes (gloo, loopback)."""
    args = tiny_train_args(output_dir, *RUN, "--per_device_train_batch_size", "2")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "fsdp_mt5.yaml"),
               "--num_processes", "2", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(free_port())]  # fmt: skip
    return subprocess.run(
        [*command, *program, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**subprocess_env(), **(env or {})},
    )  # fmt: skip


def test_fsdp_shards_mt5_and_trains_like_ddp(two_processes, tmp_path):
    """FSDP2 on 2 CPU processes, with accelerate's GPU-only switch to FSDP lifted by tests/fsdp_on_cpu.py (see
    there; test_fsdp_on_cpu_with_accelerate_as_it_is_is_refused shows the switch)."""
    output_dir, seen = tmp_path / "run", tmp_path / "fsdp.json"
    result = launch_fsdp([FSDP_SCRIPT], output_dir, {"TITLEGEN_FSDP_LOG": str(seen)})
    assert result.returncode == 0, result.stderr[-3000:]

    # Sharded, not replicated: one FSDP unit per MT5Block (1 encoder + 1 decoder block) under the root.
    units = json.loads(seen.read_text())
    assert units["fsdp_units"].count("FSDPMT5Block") == 2 and "FSDPMT5ForConditionalGeneration" in units["fsdp_units"]
    assert units["parameter_types"] == ["DTensor"]

    # Trains like DDP with the same global batch, and titles alike in the final evaluation (generate under FSDP2).
    assert logged_losses(output_dir) == pytest.approx(logged_losses(two_processes[0]), rel=1e-4)
    assert read_lines(output_dir / "eval_predictions.jsonl") == read_lines(two_processes[0] / "eval_predictions.jsonl")
    # Saved whole (FULL_STATE_DICT) as a model folder that from_pretrained loads.
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir)
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert_same_weights(output_dir, two_processes[0])
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert (output_dir / "checkpoint-3" / "model.safetensors").is_file()


def test_fsdp_on_cpu_with_accelerate_as_it_is_is_refused(tmp_path):
    """accelerate 1.16 turns an FSDP config into DDP on CPU without a word; titlegen-train says so and stops."""
    result = launch_fsdp(["-m", "titlegen.recipes.train"], tmp_path / "run")
    assert result.returncode != 0
    message = "FSDP was asked for, but accelerate runs this as MULTI_CPU (on CPU it does not shard)"
    assert message in result.stderr, result.stderr[-3000:]
    assert "'loss'" not in result.stdout + result.stderr  # refused before the first step


def test_fsdp_version_1_refuses_predict_with_generate_before_any_work(tmp_path, monkeypatch, capsys):
    from titlegen.recipes.train import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for an FSDP config
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert main(tiny_train_args(tmp_path / "run")) == 2
    assert "predict_with_generate fails under FSDP version 1 (transformers#21667)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


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


def test_accelerate_configs_cover_multi_gpu_multi_node_zero2_and_fsdp():
    names = {"ddp_multi_gpu.yaml", "ddp_multi_node.yaml", "deepspeed_zero2.yaml", "fsdp_mt5.yaml"}
    assert {p.name for p in ACCELERATE_CONFIGS} == names
