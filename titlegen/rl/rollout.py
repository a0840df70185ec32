"""One RL step: sample and score titles (`sample_rollout`), then update the policy on them (`ppo_update`).

Also the validation of a policy (`evaluate_titles`), its frozen reference (`frozen_copy`) and the order of the
training batches (`batch_indices`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from titlegen.generation import decode_titles, generate_titles, title_generation_config
from titlegen.metrics import f100, tw_rouge
from titlegen.rl.losses import (
    completion_mask,
    encode,
    kl_penalty,
    masked_mean,
    ppo_clip_loss,
    supervised_loss,
    title_logprobs,
)
from titlegen.rl.reward import compute_advantages, title_statistics

if TYPE_CHECKING:
    import torch


@dataclass
class Rollout:
    """K sampled titles for each of B articles, scored, with what the update needs."""

    titles: torch.Tensor  # [B*K, T] token ids, without the decoder start token
    mask: torch.Tensor  # [B*K, T] completion_mask(titles)
    texts: list[str]  # the decoded titles
    rewards: torch.Tensor  # [B, K]
    advantages: torch.Tensor  # [B, K]
    ref_logprobs: torch.Tensor | None  # [B*K, T] under the reference model (when β > 0)
    greedy_rewards: torch.Tensor | None  # [B] the greedy titles' rewards (greedy baseline)


def autocast(model, bf16: bool):
    """bfloat16 autocast on the model's device when `bf16`, else nothing."""
    import torch

    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@contextlib.contextmanager
def reference_policy(model, reference_model=None):
    """Yields the frozen reference: `reference_model`, or, when it is None, `model` with its LoRA adapters off.

    The LoRA policy is the reference model plus adapters, so disabling them gives the reference without
    a second copy of the weights in memory.
    """
    if reference_model is not None:
        yield reference_model
    else:
        with model.disable_adapter():
            yield model


def sample_rollout(
    model,
    tokenizer,
    batch: dict,
    references: Sequence[str],
    reward_fn: Callable[[Sequence[str], Sequence[str]], list[float]],
    *,
    num_return_sequences: int,
    baseline: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    with_reference: bool = False,
    reference_model=None,
    bf16: bool = False,
) -> Rollout:
    """Samples K titles per article, scores them and computes their advantages (no gradients).

    Args:
        model: The policy.
        tokenizer: Its tokenizer (to decode titles for the reward).
        batch: ``input_ids`` and ``attention_mask`` of B articles.
        references: The B reference titles.
        reward_fn: ``(titles, references) -> rewards``, e.g. `rouge_rewards` with its settings bound.
        num_return_sequences: K.
        baseline: ``greedy`` or ``leave_one_out`` (see `compute_advantages`).
        max_new_tokens: Longest title, in tokens.
        temperature: Sampling temperature.
        top_k: Sample from the k likeliest tokens (0: all).
        top_p: Nucleus sampling mass.
        with_reference: Also compute the reference model's log-probs of the samples (for the KL term).
        reference_model: The frozen reference; None means `model` with its LoRA adapters disabled.
        bf16: Sample under bfloat16 autocast.
    """
    import torch

    model.eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    sample_config = title_generation_config(model, max_new_tokens)
    sample_config.update(do_sample=True, num_return_sequences=num_return_sequences, temperature=temperature,
                         top_k=top_k, top_p=top_p)  # fmt: skip
    with torch.no_grad(), autocast(model, bf16):
        titles = model.generate(**inputs, generation_config=sample_config)[:, 1:]
        texts = decode_titles(tokenizer, titles.cpu())
        repeated_references = [r for r in references for _ in range(num_return_sequences)]
        rewards = torch.tensor(reward_fn(texts, repeated_references)).view(-1, num_return_sequences)
        greedy_rewards = None
        if baseline == "greedy":
            greedy = model.generate(**inputs, generation_config=title_generation_config(model, max_new_tokens))[:, 1:]
            greedy_rewards = torch.tensor(reward_fn(decode_titles(tokenizer, greedy.cpu()), list(references)))
        ref_logprobs = None
        if with_reference:
            with reference_policy(model, reference_model) as reference:
                hidden = encode(reference, **inputs)
                ref_logprobs = title_logprobs(reference, hidden, inputs["attention_mask"], titles, temperature)
    return Rollout(
        titles=titles,
        mask=completion_mask(titles, model.config.eos_token_id),
        texts=texts,
        rewards=rewards,
        advantages=compute_advantages(rewards, baseline, greedy_rewards),
        ref_logprobs=ref_logprobs,
        greedy_rewards=greedy_rewards,
    )


def ppo_update(
    model,
    optimizer,
    batch: dict,
    rollout: Rollout,
    *,
    ppo_epochs: int = 1,
    cliprange: float = 0.2,
    beta: float = 0.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    max_grad_norm: float = 1.0,
    bf16: bool = False,
) -> dict[str, float]:
    """``ppo_epochs`` optimizer steps on one rollout, each on the whole batch of samples.

    The first pass's log-probs are the sampling policy's (the weights have not changed since the
    samples were drawn, and dropout is off), so they become the PPO denominators: the ratio is exactly
    1 on the first pass, and no extra forward pass is needed.

    Args:
        model: The policy (its trainable parameters are in `optimizer`).
        optimizer: A torch optimizer.
        batch: ``input_ids``, ``attention_mask`` and ``labels`` (reference titles, -100 padded) of B articles.
        rollout: `sample_rollout` of the same batch.
        ppo_epochs: Passes over the rollout.
        cliprange: PPO's ε.
        beta: Weight of the KL penalty (needs ``rollout.ref_logprobs``).
        gamma: Weight of the PPO loss; the supervised loss gets ``1 - gamma``.
        temperature: The sampling temperature.
        max_grad_norm: Gradients are clipped to this norm.
        bf16: Compute under bfloat16 autocast.

    Returns:
        Means over the passes of ``loss``, ``ppo_loss``, ``kl``, ``clip_fraction``, ``ratio`` (mean
        per-token ratio) and ``supervised_loss``.
    """
    import torch

    if beta and rollout.ref_logprobs is None:
        raise ValueError("beta > 0 needs a rollout sampled with_reference=True")
    model.eval()
    advantages = rollout.advantages.flatten()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    old_logprobs = None
    totals: dict[str, float] = {}
    for _ in range(ppo_epochs):
        with autocast(model, bf16):
            hidden = encode(model, batch["input_ids"], batch["attention_mask"])
            logprobs = title_logprobs(model, hidden, batch["attention_mask"], rollout.titles, temperature)
            if old_logprobs is None:
                old_logprobs = logprobs.detach()
            ppo_loss, clip_fraction = ppo_clip_loss(logprobs, old_logprobs, advantages, rollout.mask, cliprange)
            kl = kl_penalty(logprobs, rollout.ref_logprobs, rollout.mask) if beta else torch.zeros(())
            mle = supervised_loss(model, hidden, batch["attention_mask"], batch["labels"]) if gamma < 1 else None
            loss = gamma * ppo_loss + beta * kl + ((1.0 - gamma) * mle if mle is not None else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        ratio = masked_mean(torch.exp(logprobs.detach() - old_logprobs), rollout.mask)
        stats = {"loss": loss, "ppo_loss": ppo_loss, "kl": kl, "clip_fraction": clip_fraction, "ratio": ratio}
        if mle is not None:
            stats["supervised_loss"] = mle
        stats = {name: value.detach() for name, value in stats.items()}
        for name, value in stats.items():
            totals[name] = totals.get(name, 0.0) + value.item() / ppo_epochs
    return totals


def rollout_statistics(rollout: Rollout) -> dict[str, float]:
    """What a step's samples looked like: mean reward, advantage, title length in tokens."""
    stats = {
        "reward": float(rollout.rewards.mean()),
        "advantage": float(rollout.advantages.mean()),
        "advantage_std": float(rollout.advantages.std()) if rollout.advantages.numel() > 1 else 0.0,
        "title_tokens": float(rollout.mask.sum(dim=1).float().mean()),
    }
    if rollout.greedy_rewards is not None:
        stats["greedy_reward"] = float(rollout.greedy_rewards.mean())
    return stats


def evaluate_titles(
    model,
    tokenizer,
    articles: Sequence[str],
    references: Sequence[str],
    segmenter,
    **generate_titles_kwargs,
) -> tuple[dict[str, float], list[str]]:
    """Generates a title per article and scores them against the references.

    Args:
        model: The model to evaluate; it decodes as its generation config says, unless `generate_titles_kwargs`
            give a ``generation_config`` or generate arguments.
        tokenizer: Its tokenizer.
        articles: Article texts.
        references: Their reference titles.
        segmenter: The segmenter of tw_rouge.
        **generate_titles_kwargs: Passed to `titlegen.generation.generate_titles` (``batch_size``,
            ``max_source_length``, ``source_prefix``, ``bf16``, ``progress``, ``generation_config``, ...).

    Returns:
        ``{"rouge-1", "rouge-2", "rouge-l"}`` (F1 ×100) with ``title_length`` and ``repetition_rate``
        (see `title_statistics`), and the titles.
    """

    titles = generate_titles(model, tokenizer, articles, **generate_titles_kwargs)
    metrics = {**f100(tw_rouge(titles, references, segmenter)), **title_statistics(titles, segmenter)}
    return metrics, titles


# Models ---------------------------------------------------------------------------------------------------------------


def frozen_copy(model):
    """A copy of `model` with gradients off and dropout off: the reference of full fine-tuning."""
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def batch_indices(num_records: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The records of the step-th batch: epochs of seeded shuffles, one after another.

    It depends on its arguments only, so a resumed run sees the batches an uninterrupted run would.
    """
    indices: list[int] = []
    while len(indices) < batch_size:
        epoch, offset = divmod(step * batch_size + len(indices), num_records)
        order = list(range(num_records))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        indices.extend(order[offset : offset + batch_size - len(indices)])
    return indices
