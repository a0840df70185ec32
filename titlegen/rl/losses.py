"""Log-probabilities of sampled titles and the losses of an RL step: PPO's clipped objective and a KL penalty."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
