"""The reward of a title (weighted tw_rouge F1 against its reference, minus penalties) and its baselines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from titlegen.metrics import ROUGE_KEYS, repetition_rate, rouge_per_pair

if TYPE_CHECKING:
    import torch

BASELINES = ("greedy", "leave_one_out")


def repeated_bigram_share(words: Sequence[str]) -> float:
    """Share of a title's word bigrams that repeat an earlier one (0 for fewer than 3 words).

    Degenerate titles loop ("股市股市股市"); a repeated character is common in good Chinese titles, a
    repeated bigram is not. The reward penalises this share, which grows with every extra loop; the
    ``rouge`` package does not, as it counts n-gram sets.
    """
    bigrams = list(zip(words, words[1:], strict=False))
    return 1.0 - len(set(bigrams)) / len(bigrams) if len(bigrams) > 1 else 0.0


def rouge_rewards(
    titles: Sequence[str],
    references: Sequence[str],
    segmenter,
    weights: tuple[float, float, float] = (0.0, 0.0, 1.0),
    length_penalty: float = 0.0,
    repetition_penalty: float = 0.0,
) -> list[float]:
    """The reward of each title: weighted tw_rouge F1 against its reference, minus penalties.

    The ``rouge`` package scores a short title in a fraction of a millisecond, so the reward is
    exactly the reported metric, pair by pair.

    Args:
        titles: Generated titles.
        references: The reference title of each, in the same order.
        segmenter: A segmenter from `titlegen.metrics.get_segmenter` (called on whole lists).
        weights: Weights of ROUGE-1, ROUGE-2 and ROUGE-L F1 (each a fraction in [0, 1]).
        length_penalty: Subtracted times ``|len(title) - len(reference)| / len(reference)``, in words.
        repetition_penalty: Subtracted times the title's `repeated_bigram_share`.

    Returns:
        One float per title.
    """
    scores = rouge_per_pair(titles, references, segmenter)
    rewards = [sum(w * s[key]["f"] for w, key in zip(weights, ROUGE_KEYS, strict=True)) for s in scores]
    if length_penalty or repetition_penalty:
        title_words = segmenter([t.strip() for t in titles])
        reference_words = segmenter([r.strip() for r in references])
        for i, (words, ref) in enumerate(zip(title_words, reference_words, strict=True)):
            rewards[i] -= length_penalty * abs(len(words) - len(ref)) / max(len(ref), 1)
            rewards[i] -= repetition_penalty * repeated_bigram_share(words)
    return rewards


def title_statistics(titles: Sequence[str], segmenter) -> dict[str, float]:
    """Mean length in words, and the share of titles that repeat a character bigram of their own.

    This is where a reward hack (long, looping titles) shows.
    """
    words = segmenter([t.strip() for t in titles])
    return {
        "title_length": sum(len(w) for w in words) / max(len(words), 1),
        "repetition_rate": repetition_rate(titles, 2),
    }


# Baselines and advantages ---------------------------------------------------------------------------------------------


def compute_advantages(
    rewards: torch.Tensor, baseline: str, greedy_rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """Advantage = reward - baseline, for rewards of shape [B, K] (K samples of each of B articles).

    Args:
        rewards: The sampled titles' rewards.
        baseline: ``greedy`` subtracts each article's `greedy_rewards` (shape [B]); ``leave_one_out``
            subtracts the mean reward of the article's other K-1 samples.
        greedy_rewards: The greedy title's reward per article, for ``greedy``.
    """
    if baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("the greedy baseline needs greedy_rewards")
        return rewards - greedy_rewards[:, None]
    if baseline == "leave_one_out":
        k = rewards.shape[1]
        if k < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per article")
        return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
