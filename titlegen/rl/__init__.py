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

The package's rooms: `titlegen.rl.config` (settings), `titlegen.rl.reward` (reward and baselines),
`titlegen.rl.losses` (log-probabilities, PPO and KL terms) and `titlegen.rl.rollout` (the two halves of a step,
and validation); checkpoints are `titlegen.checkpoints`' and the loop is the recipe, `titlegen.recipes.rl`.

Written in plain PyTorch: TRL, the maintained RL library for transformers, no longer trains
encoder-decoder models with PPO. Dropout stays off throughout (the model is in eval mode): with it, the
same title would get different log-probs in the sampling and the update passes, and the PPO ratio
would measure dropout noise rather than the change of the policy.
"""
