"""The settings of titlegen-rl: its own (`RLArguments`), and those it shares with titlegen-train (`settings`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

from titlegen import TitlegenError
from titlegen.arguments import DataArguments, DecodingArguments, LoraArguments, ModelArguments, RunArguments
from titlegen.config import settings_from
from titlegen.rl.reward import BASELINES

# What titlegen-rl takes of transformers' Seq2SeqTrainingArguments (the same names, types and help texts as in
# titlegen-train), with the defaults of an RL run.
TRAINING_SETTINGS = (
    "output_dir", "learning_rate", "weight_decay", "max_grad_norm", "lr_scheduler_type", "warmup_steps",
    "per_device_train_batch_size", "per_device_eval_batch_size", "max_steps", "eval_steps", "generation_num_beams",
    "seed", "bf16", "disable_tqdm",
)  # fmt: skip
TRAINING_DEFAULTS = {
    "output_dir": "outputs/rl",
    "learning_rate": 1e-5,
    "lr_scheduler_type": "constant",
    "max_steps": 200,
    "eval_steps": 50,
    "per_device_eval_batch_size": 32,
}
# The rollouts sample from the whole distribution unless told otherwise.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
# The reward scores every sampled title: a segmenter that loads a neural model (ckip) would dominate each step.
REWARD_SEGMENTERS = ("char", "jieba")


@dataclass
class RLArguments:
    """The settings of titlegen-rl's own: sampling, reward and loss. See `settings` for the others."""

    # Sampling
    num_return_sequences: int = field(default=4, metadata={"help": "K: titles sampled per article and step.", "min": 1})
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
    # Loss
    ppo_epochs: int = field(
        default=1, metadata={"help": "Passes over each batch of samples (1: SCST/REINFORCE).", "min": 1}
    )
    cliprange: float = field(
        default=0.2, metadata={"help": "PPO's ε: the ratio to the sampling policy is clipped.", "min": 0}
    )
    beta: float = field(default=0.02, metadata={"help": "Weight of the KL penalty to the starting model.", "min": 0})
    gamma: float = field(
        default=1.0, metadata={"help": "Weight of the RL loss; the supervised loss gets 1-gamma (Paulus et al.)."}
    )

    def __post_init__(self):
        # A YAML file's values bypass argparse's choices, so they are checked here too.
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.num_return_sequences < (2 if self.baseline == "leave_one_out" else 1):
            raise ValueError(f"num_return_sequences={self.num_return_sequences} is too small for {self.baseline}")
        if min(self.reward_weights) < 0 or sum(self.reward_weights) <= 0:
            raise ValueError("rouge_1_weight, rouge_2_weight and rouge_l_weight must be >= 0 and not all 0")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")

    @property
    def reward_weights(self) -> tuple[float, float, float]:
        return self.rouge_1_weight, self.rouge_2_weight, self.rouge_l_weight


@functools.cache
def settings() -> tuple[type, ...]:
    """The settings of titlegen-rl, in the order the recipe unpacks them.

    `RLArguments`; the sampling of the rollouts as titlegen-predict declares it; the starting model
    (``model_name_or_path``, alias ``--model``), LoRA, data and run settings as titlegen-train declares them;
    and the training-loop settings of `TRAINING_SETTINGS`.
    """
    from transformers import Seq2SeqTrainingArguments

    sampling = settings_from(DecodingArguments, ["temperature", "top_k", "top_p"], **SAMPLING_DEFAULTS)
    starting_model = settings_from(ModelArguments, ["model_name_or_path"])
    training = settings_from(Seq2SeqTrainingArguments, TRAINING_SETTINGS, **TRAINING_DEFAULTS)
    return RLArguments, sampling, starting_model, LoraArguments, DataArguments, RunArguments, training


def check_settings(model_args, data_args, run_args, training_args) -> None:
    """Refuses the combinations of shared settings that an RL run cannot honour."""
    if not model_args.model_name_or_path:
        raise TitlegenError("model_name_or_path is not set (pass --model DIR, a supervised model folder)")
    if run_args.segmenter not in REWARD_SEGMENTERS:
        choices = ", ".join(REWARD_SEGMENTERS)
        raise TitlegenError(f"segmenter {run_args.segmenter!r}: the reward needs a fast segmenter, one of {choices}")
    if run_args.generation_backend != "transformers":
        raise TitlegenError("generation_backend: titlegen-rl validates with transformers; leave it at transformers")
    if data_args.lead_pairs:
        raise TitlegenError("lead_pairs: RL trains on the reference titles only; set it to 0")
    if training_args.max_steps < 1:
        raise TitlegenError(f"max_steps must be at least 1 for an RL run, got {training_args.max_steps}")


def absolute_steps(steps: float, max_steps: int) -> int:
    """A number of steps given as transformers takes it: a fraction of max_steps when below 1, else a count."""
    return max(1, round(steps * max_steps)) if 0 < steps < 1 else int(steps)
