"""Shared fixtures: a tokenizer trained on the fixture articles and a tiny model trained by the recipe."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from titlegen.corpus import data_dir
from titlegen.recipes.train import train
from titlegen.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
ARTICLES = ASSETS / "articles.jsonl"
# The real data, found as every command finds it: $TITLEGEN_DATA, else ../shared/data, else titlegen-data's folder.
DATA = data_dir().absolute()

# A model small enough to train in seconds, with mT5's real architecture.
TINY_MODEL = "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1,num_decoder_layers=1,dropout_rate=0.0"


def real_data(relative: str) -> Path:
    """A file of the real data folder (`DATA`); the test that asks for it is skipped, with the reason, without it.

    ``make test`` gets the folder with ``titlegen-data`` first when it is missing; only where that cannot be
    done (no network) do these tests skip.
    """
    path = DATA / relative
    if not path.exists():
        pytest.skip(
            f"no {relative} in the data folder {DATA}: get it with 'titlegen-data' (make data) or set TITLEGEN_DATA"
        )
    return path


def f1(precision: float, recall: float) -> float:
    """The F1 of a hand-counted precision and recall, for checking ROUGE scores."""
    return 2 * precision * recall / (precision + recall)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tiny_train_args(output_dir: Path, *extra: str) -> list[str]:
    """Arguments for a few-second training run of the offline config on the fixture articles."""
    return [
        "--config", str(ROOT / "trainer_args" / "tiny_offline.yaml"),
        "--train_file", str(ARTICLES),
        "--validation_file", str(ARTICLES),
        "--output_dir", str(output_dir),
        "--tokenizer_vocab_size", "1000",
        "--config_overrides", TINY_MODEL,
        "--num_train_epochs", "2",
        "--per_device_train_batch_size", "4",
        "--max_target_length", "16",
        "--generation_max_new_tokens", "16",
        "--learning_rate", "1e-2",
        "--lead_pairs", "0",  # the tests count steps of the 12 fixture pairs
        "--generation_num_beams", "1",  # plain greedy: the tests compare titles with greedy generation
        "--generation_article_tokens_only", "false",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--logging_steps", "1",
        *extra,
    ]  # fmt: skip


# Skips the per-epoch generation and best-model selection that a test of training mechanics does not need.
NO_EVAL = ("--eval_strategy", "no", "--load_best_model_at_end", "false", "--predict_with_generate", "false")


def logged_losses(run_dir: Path) -> dict[int, float]:
    """The training loss logged at each step of a run, from its trainer_state.json."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


# Launched processes meet on the loopback interface only: the rendezvous on 127.0.0.1, and gloo's sockets on
# `lo` (left unset, gloo binds the address the host name resolves to, which may face a network).
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def subprocess_env() -> dict[str, str]:
    """The environment for recipes run as real subprocesses: this checkout first on the path, one thread per
    process (the tiny model gains nothing from more, and tests share few cores), and loopback only."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **LOOPBACK,
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a launcher's rendezvous (a fixed one collides with other runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    records = read_lines(ARTICLES)
    texts = [r[c] for r in records for c in ("maintext", "title")]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tokenizer"), vocab_size=1000)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    """A model folder written by the training recipe (2 epochs on the fixture articles)."""

    output_dir = tmp_path_factory.mktemp("run") / "tiny"
    train(tiny_train_args(output_dir))
    return output_dir
