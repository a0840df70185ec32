"""PNG charts of results: learning curves of a training run, and a comparison of decoding settings.

matplotlib draws with its Agg backend, so no display is needed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import atomic_write_bytes
from titlegen.metrics import ROUGE_KEYS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def read_log_history(run_dir: str | Path) -> list[dict]:
    """The ``log_history`` of a training run (or checkpoint) folder's ``trainer_state.json``."""
    path = Path(run_dir) / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TitlegenError(f"{path}: no such file (is {run_dir} a training run's output_dir?)") from None
    except json.JSONDecodeError as err:
        raise TitlegenError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise TitlegenError(f"{path}: has no 'log_history' list")
    return state["log_history"]


def _series(log_history: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """The steps at which `key` was logged, and its values."""
    entries = [e for e in log_history if key in e and "step" in e]
    return [e["step"] for e in entries], [e[key] for e in entries]


def plot_learning_curves(log_history: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Training (and evaluation) loss, and evaluation ROUGE-1/2/L, against the training step.

    Args:
        log_history: ``Trainer.state.log_history`` (see `read_log_history`).
        path: PNG file to write.
        title: Figure title, e.g. the run's folder.
    """
    plt = _pyplot()
    fig, (loss_ax, rouge_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss")):
        steps, values = _series(log_history, key)
        if steps:
            loss_ax.plot(steps, values, "-" if key == "loss" else "o-", label=label)
    for key, style in zip(ROUGE_KEYS, ("o-", "s-", "^--"), strict=True):  # markers tell apart curves that coincide
        steps, values = _series(log_history, f"eval_{key}")
        if steps:
            rouge_ax.plot(steps, values, style, label=key.upper())
    loss_ax.set(xlabel="step", ylabel="loss", title="Loss")
    rouge_ax.set(xlabel="step", ylabel="f×100", title="Evaluation ROUGE")
    for ax, missing in ((loss_ax, "no loss logged"), (rouge_ax, "no evaluation with ROUGE in this run")):
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, missing, ha="center", transform=ax.transAxes)
    for ax in (loss_ax, rouge_ax):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_comparison(rows: Sequence[dict], path: str | Path, best: str, title: str = "") -> None:
    """ROUGE-1/2/L and titles per second of each decoding setting, as horizontal bars.

    Args:
        rows: Rows of `titlegen.comparison.score_titles`, each with its ``setting`` name.
        path: PNG file to write.
        best: The name of the best setting, marked in the chart.
        title: Figure title.
    """
    import numpy as np

    plt = _pyplot()
    names = [("★ " if r["setting"] == best else "") + r["setting"] for r in rows]
    y = np.arange(len(rows))
    height = 0.8 / len(ROUGE_KEYS)
    fig, (rouge_ax, speed_ax) = plt.subplots(
        1, 2, figsize=(12, 1.2 + 0.45 * len(rows)), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    for i, key in enumerate(ROUGE_KEYS):
        rouge_ax.barh(y + (i - 1) * height, [r[key] for r in rows], height, label=key.upper())
    rouge_ax.set(yticks=y, yticklabels=names, xlabel="tw_rouge f×100")
    rouge_ax.invert_yaxis()
    rouge_ax.legend(ncol=len(ROUGE_KEYS), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    speed = [r["titles/s"] for r in rows]
    speed_ax.barh(y, speed, 0.6, color="tab:gray")
    for yi, value in zip(y, speed, strict=True):
        speed_ax.text(value, yi, f" {value:.1f}", va="center", fontsize=8)
    speed_ax.set(xlabel="titles/s", xlim=(0, 1.25 * max(speed)))
    for ax in (rouge_ax, speed_ax):
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_rl_curves(history: Sequence[dict], path: str | Path, title: str = "") -> None:
    """The mean reward per RL step (sampled and greedy titles), and validation ROUGE, against the step.

    Args:
        history: The records of a titlegen-rl run's ``rl_log.jsonl``.
        path: PNG file to write.
        title: Figure title, e.g. the starting model.
    """
    plt = _pyplot()
    steps = [h for h in history if "reward" in h]
    window = max(1, len(steps) // 20)
    fig, (reward_ax, rouge_ax) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for key, label, color in (
        ("reward", "sampled titles", "tab:blue"),
        ("greedy_reward", "greedy titles", "tab:orange"),
    ):
        x, y = _series(steps, key)
        if x:
            reward_ax.plot(x, y, color=color, alpha=0.25, lw=1)
            reward_ax.plot(x, _moving_average(y, window), color=color, lw=2, label=f"{label} ({window}-step mean)")
    for key in ROUGE_KEYS:
        rouge_ax.plot(*_series(history, f"eval_{key}"), "o-", label=key.upper())
    reward_ax.set(ylabel="mean reward", title="Reward")
    rouge_ax.set(xlabel="RL step", ylabel="f×100", title="Validation ROUGE")
    for ax in (reward_ax, rouge_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title or "RL fine-tuning")
    _save(fig, path)


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))]
