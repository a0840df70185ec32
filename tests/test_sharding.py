"""Prediction shared between processes under torchrun and accelerate launch (2 CPU processes, gloo on loopback):
the same output, byte for byte, as one process, with either engine, and resumed after one process was killed."""

import json
import socket
import subprocess
import sys

import pytest

from titlegen import TitlegenError
from titlegen.generation import length_sorted_batches
from titlegen.recipes.predict import predict
from titlegen.sharding import Launch, balanced_shares, launched

from .conftest import ARTICLES, ROOT, read_lines, subprocess_env

# 12 fixture articles in batches of 2: 6 batches, dealt 3 and 3.
PREDICT = ("--batch_size", "2", "--threads", "1")
KILLER = str(ROOT / "tests" / "kill_rank.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(name: str) -> list[str]:
    """The launcher's command for 2 processes meeting on 127.0.0.1, at a free port (tests may run side by side)."""
    port = str(free_port())
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", port]  # fmt: skip
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
            "--main_process_ip", "127.0.0.1", "--main_process_port", port]  # fmt: skip


def loopback_env() -> dict[str, str]:
    return {**subprocess_env(), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def launch(name: str, *args: str, script: list[str] | None = None, env: dict | None = None):
    command = [*launcher(name), *(script or ["-m", "titlegen.recipes.predict"]), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env or loopback_env())


def test_shares_are_whole_batches_balanced_by_padded_tokens():
    lengths = [30, 5, 28, 6, 29, 7, 8, 31, 4, 3]
    batches = length_sorted_batches(lengths, 2)
    shares = balanced_shares(batches, lengths, 2)
    assert sorted(i for share in shares for i in share) == list(range(10))
    for share in shares:  # every batch goes whole to one process
        assert all(set(batch) <= set(share) or not set(batch) & set(share) for batch in batches)
    loads = [sum(len(b) * max(lengths[i] for i in b) for b in batches if set(b) <= set(s)) for s in shares]
    assert loads == [62 + 12 + 8, 58 + 16]  # costliest first, each to the least loaded (ties: the lowest rank)
    assert balanced_shares(batches, lengths, 3) == balanced_shares(batches, lengths, 3)
    assert balanced_shares(batches, lengths, 1) == [[i for b in batches for i in b]]


def test_the_launchers_variables_are_read_and_checked():
    assert launched({}) == Launch(0, 1, 0)
    assert launched({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)
    with pytest.raises(TitlegenError, match="RANK 4 is not a process of WORLD_SIZE 4"):
        launched({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(TitlegenError, match="must be integers"):
        launched({"RANK": "x"})


@pytest.fixture(scope="module")
def export_dir(trained_dir, tmp_path_factory):
    from titlegen.engines.export import export_model

    folder = tmp_path_factory.mktemp("export") / "int8"
    export_model(trained_dir, folder, quantization="int8")
    return folder


def one_process(model, tmp_path, *extra) -> bytes:
    out = tmp_path / "one.jsonl"
    predict(["--model", str(model), "--input", str(ARTICLES), "--output", str(out), *PREDICT, *extra])
    return out.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "name", "extra"),
    [("transformers", "torchrun", ()), ("transformers", "accelerate launch", ("--num_beams", "3")),
     ("ct2", "torchrun", ("--no_loops", "false"))],  # CTranslate2 cannot honour the loop guard
)  # fmt: skip
def test_two_processes_write_what_one_writes(engine, name, extra, trained_dir, export_dir, tmp_path):
    model = trained_dir if engine == "transformers" else export_dir
    out = tmp_path / "two.jsonl"
    result = launch(name, "--model", str(model), "--input", str(ARTICLES), "--output", str(out), *PREDICT, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_bytes() == one_process(model, tmp_path, *extra)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "two.jsonl"], "progress files are gone"


@pytest.mark.slow
def test_a_killed_process_is_resumed_with_only_its_missing_titles(trained_dir, tmp_path):
    out = tmp_path / "two.jsonl"
    args = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(out), *PREDICT]
    killed = launch("torchrun", *args, script=[KILLER], env={**loopback_env(), "TITLEGEN_KILL_RANK": "1"})
    assert killed.returncode != 0 and not out.exists()
    saved = read_lines(tmp_path / "two.jsonl.rank1.progress")[1:]
    assert len(saved) == 2, "rank 1 died after its first batch of 2"

    resumed = launch("torchrun", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing: 2 of 6 titles were generated before" in resumed.stdout + resumed.stderr
    assert out.read_bytes() == one_process(trained_dir, tmp_path)
    assert {json.dumps(r, ensure_ascii=False) for r in saved} <= set(out.read_text(encoding="utf-8").splitlines())


@pytest.mark.slow
def test_run_sh_takes_the_launcher_from_the_environment(trained_dir, tmp_path):
    out = tmp_path / "two.jsonl"
    env = {**loopback_env(), "TITLEGEN_MODEL": str(trained_dir), "PYTHON": sys.executable,
           "TITLEGEN_LAUNCHER": " ".join(launcher("torchrun"))}  # fmt: skip
    result = subprocess.run(["bash", str(ROOT / "run.sh"), str(ARTICLES), str(out), *PREDICT], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 12 titles" in result.stdout and out.read_bytes() == one_process(trained_dir, tmp_path)
