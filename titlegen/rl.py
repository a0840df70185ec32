"""Reinforcement learning for title generation: policy optimisation with a ROUGE reward.

One step, for a batch of B articles:

1. Rollout (`sample_rollout`, no gradients): sample K titles per article with the current policy, score
   each with the reward (weighted tw_rouge F1 against the reference title), and subtract a baseline:
   the reward of the greedy title (self-critical sequence training, Rennie et al. 2017) or the mean
   reward of the article's other K-1 samples (leave-one-out, Kool et al. 2019).
2. Update (`ppo_update`, ``ppo_epochs`` passes over the rollout): the per-token PPO clipped objective
   (Schulman et al. 2017) on the sampled titles, plus β times a KL penalty to the frozen reference
   model, plus the supervised loss of the reference titles with weight 1-γ (Paulus et al. 2018):
   ``loss = γ·ppo + β·kl + (1-γ)·mle``. With one pass the ratio is 1 and this is REINFORCE with a
   baseline (SCST).

Written in plain PyTorch: TRL, the maintained RL library for transformers, no longer trains
encoder-decoder models with PPO. Dropout stays off throughout (the model is in eval mode): with it, the
same title would get different log-probs in the sampling and the update passes, and the PPO ratio
would measure dropout noise rather than the change of the policy.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from titlegen.metrics import ROUGE_KEYS, repetition_rate, rouge_per_pair

if TYPE_CHECKING:
    import torch

BASELINES = ("greedy", "leave_one_out")
REWARD_SEGMENTERS = ("char", "jieba")


@dataclass
class RLArguments:
    """Settings of an RL run; the data settings are `titlegen.config.DataArguments`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Supervised model folder to start from (e.g. one titlegen-train wrote).",
            "aliases": ["--model"],
        },
    )
    output_dir: str = field(default="outputs/rl", metadata={"help": "Where the run and the final model go."})
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters on the attention projections; the reference is the model without them."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha/r)."})

    # Sampling
    num_return_sequences: int = field(default=4, metadata={"help": "K: titles sampled per article and step."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature for sampling."})
    top_k: int = field(default=0, metadata={"help": "Sample from the k likeliest tokens (0: all)."})
    top_p: float = field(default=1.0, metadata={"help": "Sample from the smallest set of tokens of mass p."})
    baseline: Literal["greedy", "leave_one_out"] = field(
        default="greedy",
        metadata={"help": "greedy: the greedy title's reward (SCST); leave_one_out: mean reward of the other K-1."},
    )

    # Reward
    rouge_1_weight: float = field(default=0.0, metadata={"help": "Weight of ROUGE-1 F1 in the reward."})
    rouge_2_weight: float = field(default=0.0, metadata={"help": "Weight of ROUGE-2 F1 in the reward."})
    rouge_l_weight: float = field(default=1.0, metadata={"help": "Weight of ROUGE-L F1 in the reward."})
    reward_length_penalty: float = field(
        default=0.0, metadata={"help": "Subtracted times |len(title) - len(reference)| / len(reference), in words."}
    )
    reward_repetition_penalty: float = field(
        default=0.0, metadata={"help": "Subtracted times the share of the title's word bigrams that repeat."}
    )
    segmenter: Literal["char", "jieba"] = field(
        default="char", metadata={"help": "Word segmenter of the reward and of the validation ROUGE."}
    )

    # Loss
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over each batch of samples (1: SCST/REINFORCE)."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO's ε: the ratio to the sampling policy is clipped."})
    beta: float = field(default=0.02, metadata={"help": "Weight of the KL penalty to the starting model."})
    gamma: float = field(
        default=1.0, metadata={"help": "Weight of the RL loss; the supervised loss gets 1-gamma (Paulus et al.)."}
    )

    # Optimisation
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradients are clipped to this norm."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    warmup_steps: int = field(default=0, metadata={"help": "Steps of linear learning-rate warmup."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "B: articles per step."})
    max_steps: int = field(default=200, metadata={"help": "RL steps (one rollout and its update passes each)."})

    # Evaluation, checkpoints, logging
    eval_steps: int = field(
        default=50, metadata={"help": "Validation ROUGE every N steps; a resumable checkpoint is saved with it."}
    )
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Articles per generate call in evaluation."})
    generation_num_beams: int | None = field(
        default=None,
        metadata={"help": "Beam width of validation decoding and of the saved model (default: the starting model's)."},
    )
    generation_article_tokens_only: bool | None = field(
        default=None,
        metadata={
            "help": "Validation and the saved model's titles use only tokens of their article (default: as the "
            "starting model's generation config says)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of batch order, sampling and LoRA initialisation."})
    bf16: bool = field(default=False, metadata={"help": "Run under bfloat16 autocast."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    flush_denormal: bool = field(default=True, metadata={"help": "On CPU, flush denormal floats to zero."})
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On CPU with glibc, keep freed memory for the next step instead of handing large blocks back to "
            "the system (steps 12 per cent faster for an mT5-small shape)."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})

    def __post_init__(self):
        # The YAML's values bypass argparse's choices, so they are checked here too.
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.segmenter not in REWARD_SEGMENTERS:
            raise ValueError(f"segmenter must be one of {', '.join(REWARD_SEGMENTERS)}, got {self.segmenter!r}")
        if self.num_return_sequences < (2 if self.baseline == "leave_one_out" else 1):
            raise ValueError(f"num_return_sequences={self.num_return_sequences} is too small for {self.baseline}")
        if min(self.reward_weights) < 0 or sum(self.reward_weights) <= 0:
            raise ValueError("rouge_1_weight, rouge_2_weight and rouge_l_weight must be >= 0 and not all 0")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("ppo_epochs", "max_steps", "eval_steps", "per_device_train_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def reward_weights(self) -> tuple[float, float, float]:
        return self.rouge_1_weight, self.rouge_2_weight, self.rouge_l_weight


# Reward ---------------------------------------------------------------------------------------------------------------


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


# Log-probabilities of titles ------------------------------------------------------------------------------------------


def completion_mask(titles: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True for each title's tokens up to and including its first EOS; the padding after it is False."""
    is_eos = (titles == eos_token_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos
    return eos_before == 0


def encode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The encoder's last hidden states, [B, S, d]; computed once and shared by all of an article's titles."""
    return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _decoder_logits(model, encoder_hidden, attention_mask, labels) -> torch.Tensor:
    k = labels.shape[0] // encoder_hidden.shape[0]
    return model(
        encoder_outputs=(encoder_hidden.repeat_interleave(k, dim=0),),
        attention_mask=attention_mask.repeat_interleave(k, dim=0),
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels=labels),
    ).logits


def title_logprobs(
    model, encoder_hidden: torch.Tensor, attention_mask: torch.Tensor, titles: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of every token of `titles` under `model`, by one teacher-forced decoder pass.

    Args:
        model: A seq2seq model (or a peft model around one).
        encoder_hidden: `encode` of the B articles.
        attention_mask: The articles' attention mask, [B, S].
        titles: [B*K, T] token ids, K titles per article in article order, without the decoder start
            token (what ``generate`` returns, minus its first column).
        temperature: The sampling temperature; logits are divided by it, as they were for sampling.

    Returns:
        [B*K, T] float32 log-probs; positions after a title's EOS hold meaningless values (see
        `completion_mask`).
    """
    import torch

    logits = _decoder_logits(model, encoder_hidden, attention_mask, titles).float() / temperature
    # gather - logsumexp, rather than log_softmax: no second [N, T, vocab] tensor.
    return torch.gather(logits, -1, titles[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def supervised_loss(model, encoder_hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """Mean cross-entropy of the reference titles (labels padded with -100): the maximum-likelihood term."""
    return model(encoder_outputs=(encoder_hidden,), attention_mask=attention_mask, labels=labels).loss


# Losses ---------------------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the positions where `mask` is True (0 when there are none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate objective, negated, per token, averaged over the titles' tokens.

    ``-min(ratio·A, clip(ratio, 1-ε, 1+ε)·A)`` with ``ratio = exp(logprobs - old_logprobs)``; every token
    of a title shares the title's advantage A.

    Args:
        logprobs: [N, T] log-probs under the policy being trained (with gradients).
        old_logprobs: [N, T] log-probs under the policy that sampled the titles (no gradients).
        advantages: [N] one advantage per title.
        mask: [N, T] `completion_mask` of the titles.
        cliprange: ε.

    Returns:
        The loss and the fraction of tokens whose ratio lies outside [1-ε, 1+ε].
    """
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    advantages = advantages[:, None].to(logprobs)  # same dtype and device
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1.0 - cliprange, 1.0 + cliprange) * advantages)
    clipped = ((ratio - 1.0).abs() > cliprange).float()
    return -masked_mean(surrogate, mask), masked_mean(clipped, mask).detach()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(policy ‖ reference) per token, estimated on the sampled tokens, averaged over the titles' tokens.

    Schulman's k3 estimator ``exp(r) - r - 1`` with ``r = ref_logprobs - logprobs``: unbiased for tokens
    sampled from the policy, never negative, and 0 with a zero gradient where the two models agree.
    The exact KL would need the reference's full [N, T, vocab] distribution.
    """
    import torch

    log_ratio = ref_logprobs - logprobs
    return masked_mean(torch.exp(log_ratio) - log_ratio - 1.0, mask)


# Rollout and update ---------------------------------------------------------------------------------------------------


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

    from titlegen.generation import decode_titles, title_generation_config

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
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    article_tokens_only: bool = False,
    **generate_titles_kwargs,
) -> tuple[dict[str, float], list[str]]:
    """Generates a title per article and scores them against the references.

    Args:
        model: The model to evaluate.
        tokenizer: Its tokenizer.
        articles: Article texts.
        references: Their reference titles.
        segmenter: The segmenter of tw_rouge.
        max_new_tokens: Longest title, in tokens.
        num_beams: 1 for greedy decoding.
        article_tokens_only: Titles use only tokens of their article (`titlegen.generation.ArticleTokensOnly`).
        **generate_titles_kwargs: Passed to `titlegen.generation.generate_titles` (``batch_size``,
            ``max_source_length``, ``source_prefix``, ``bf16``, ``progress``).

    Returns:
        ``{"rouge-1", "rouge-2", "rouge-l"}`` (F1 ×100) with ``title_length`` and ``repetition_rate``
        (see `title_statistics`), and the titles.
    """
    from titlegen.generation import generate_titles, title_generation_config
    from titlegen.metrics import f100, tw_rouge

    config = title_generation_config(model, max_new_tokens, num_beams, article_tokens_only)
    titles = generate_titles(model, tokenizer, articles, generation_config=config, **generate_titles_kwargs)
    metrics = {**f100(tw_rouge(titles, references, segmenter)), **title_statistics(titles, segmenter)}
    return metrics, titles


# Models ---------------------------------------------------------------------------------------------------------------


def frozen_copy(model):
    """A copy of `model` with gradients off and dropout off: the reference of full fine-tuning."""
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def trainable_state(model) -> dict:
    """The trainable tensors by name (all weights, or only the LoRA adapters), detached and contiguous."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    """Loads tensors saved by `trainable_state` into `model`."""
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"weights that the model does not have: {result.unexpected_keys[:3]}")


# Batches, checkpoints, curves -----------------------------------------------------------------------------------------


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


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-STEP`` folder with the highest step in `output_dir`, if any (each is written whole)."""
    from titlegen.checkpoints import checkpoint_step

    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return max(found, key=checkpoint_step, default=None)


def save_checkpoint(output_dir: str | Path, model, optimizer, scheduler, state: dict) -> Path:
    """Writes everything a run needs to continue to ``checkpoint-STEP``, atomically, and removes older ones.

    Args:
        output_dir: The run's folder.
        model: The policy; only its trainable tensors are saved.
        optimizer: Its optimizer.
        scheduler: Its learning-rate scheduler.
        state: JSON-serialisable run state with at least ``step``.
    """
    import shutil

    import torch
    from safetensors.torch import save_file

    from titlegen.checkpoints import checkpoint_step
    from titlegen.data import atomic_output_dir, write_json

    final = Path(output_dir) / f"checkpoint-{state['step']}"
    with atomic_output_dir(final) as tmp:  # the folder appears complete or not at all
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        write_json(tmp / "state.json", state)
    for old in Path(output_dir).glob("checkpoint-*"):
        if old != final and checkpoint_step(old) is not None:
            shutil.rmtree(old)
    return final


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restores a `save_checkpoint` folder into the model, optimizer, scheduler and torch's RNG.

    Returns:
        The run state saved with it.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    load_trainable_state(model, load_file(path / "trainable.safetensors"))
    saved = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))
