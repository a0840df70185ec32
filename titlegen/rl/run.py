"""The parts of an RL run that the recipe (`titlegen.recipes.rl`) puts together: its settings as the starting model
was trained, its state, its examples, its validation and its best weights."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from titlegen.checkpoints import load_trainable_state, trainable_state
from titlegen.config import parse_args
from titlegen.data import follow_umask, normalize_text, write_jsonl
from titlegen.model_folder import trained_settings
from titlegen.plotting import plot_rl_curves
from titlegen.preprocessing import run_tokenize_fn
from titlegen.rl.config import absolute_steps, settings
from titlegen.rl.reward import rouge_rewards
from titlegen.rl.rollout import evaluate_titles
from titlegen.spans import encode_articles, encode_title, uses_slots

logger = logging.getLogger("titlegen.rl")

# Taken from the starting model's run_config.yaml when the RL config does not set them.
TRAINED_DATA_SETTINGS = ("source_prefix", "max_source_length", "max_target_length")
# The best weights so far, under the run's folder.
BEST_WEIGHTS = Path("best") / "trainable.safetensors"


def parse_rl_args(argv: Sequence[str] | None, description: str | None) -> tuple:
    """titlegen-rl's settings (`titlegen.rl.config.settings`), in that order; the articles and titles as the
    starting model was trained on them (`TRAINED_DATA_SETTINGS`), unless the config or the flags say otherwise."""
    parsed = parse_args(settings(), argv, description=description)
    starting_model = parsed[2].model_name_or_path
    if not starting_model:
        return parsed
    trained = trained_settings(starting_model)
    defaults = {key: getattr(trained, key) for key in TRAINED_DATA_SETTINGS}
    return parse_args(settings(), argv, description=description, defaults=defaults)


@dataclass
class RLState:
    """Where an RL run is: the last step saved, every step's and evaluation's log line, and the best evaluation.

    Saved whole in every checkpoint (`titlegen.checkpoints.save_checkpoint`), so that a resumed run goes on from
    exactly here.
    """

    step: int = 0
    best_step: int | None = None
    best_rouge_l: float | None = None
    history: list[dict] = field(default_factory=list)

    def log_step(self, record: dict) -> None:
        """Adds a training step's log line (``step`` and its statistics)."""
        self.history.append(record)

    def log_evaluation(self, step: int, metrics: dict[str, float]) -> bool:
        """Adds an evaluation at `step`; returns whether its ROUGE-L is the best so far."""
        self.history.append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        logger.info("step %d: validation %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if self.best_rouge_l is not None and metrics["rouge-l"] <= self.best_rouge_l:
            return False
        self.best_step, self.best_rouge_l = step, metrics["rouge-l"]
        return True

    def evaluations(self) -> list[dict]:
        return [h for h in self.history if "eval_rouge-l" in h]

    def evaluations_since_best(self) -> int:
        return sum(1 for h in self.evaluations() if h["step"] > self.best_step)

    def results(self, segmenter: str) -> dict:
        """The starting model's, the best and the last evaluation (eval_results.json)."""
        evaluations = self.evaluations()
        best = next(h for h in evaluations if h["step"] == self.best_step)
        return {"segmenter": segmenter, "start": evaluations[0], "best": best, "last": evaluations[-1]}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write_log(self, output_dir: Path, title: str) -> None:
        """rl_log.jsonl and rl_curves.png."""
        write_jsonl(output_dir / "rl_log.jsonl", self.history)
        plot_rl_curves(self.history, output_dir / "rl_curves.png", title=title)


def training_examples(tokenizer, records: list[dict], data_args) -> tuple[dict, list[str]]:
    """The tokenized training pairs, and the reference titles their rewards compare with.

    With copy slots, references are compared as titles are sampled, with their slots (titlegen/spans.py).
    """
    text, summary = data_args.text_column, data_args.summary_column
    tokenize = run_tokenize_fn(tokenizer, data_args)
    features = tokenize({text: [r[text] for r in records], summary: [r[summary] for r in records]})
    references = [normalize_text(r[summary]) for r in records]
    if uses_slots(tokenizer):
        spans = encode_articles([r[text] for r in records])[1]
        references = [encode_title(t, s) for t, s in zip(references, spans, strict=True)]
    return features, references


def reward_function(args, segmenter):
    """The reward of a batch of titles against their references, as `args` (`titlegen.rl.config.RLArguments`) set it."""
    return functools.partial(
        rouge_rewards,
        segmenter=segmenter,
        weights=args.reward_weights,
        length_penalty=args.reward_length_penalty,
        repetition_penalty=args.reward_repetition_penalty,
    )


def optimizer_and_scheduler(policy, training_args):
    """AdamW over the trainable parameters, and the learning-rate schedule of ``training_args``."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad],
        lr=training_args.learning_rate,
        weight_decay=training_args.weight_decay,
    )
    warmup_steps = absolute_steps(training_args.warmup_steps, training_args.max_steps)
    scheduler = get_scheduler(training_args.lr_scheduler_type, optimizer, warmup_steps, training_args.max_steps)
    return optimizer, scheduler


@dataclass
class Validation:
    """Validation ROUGE of a policy, decoded as its generation config says (the configured decoding)."""

    records: list[dict]
    data_args: object
    training_args: object
    segmenter: object

    def __call__(self, policy, tokenizer) -> dict[str, float]:
        text, summary = self.data_args.text_column, self.data_args.summary_column
        metrics, _ = evaluate_titles(
            policy,
            tokenizer,
            [r[text] for r in self.records],
            [r[summary] for r in self.records],
            self.segmenter,
            generation_config=policy.generation_config,
            batch_size=self.training_args.per_device_eval_batch_size,
            max_source_length=self.data_args.max_source_length,
            source_prefix=self.data_args.source_prefix,
            bf16=self.training_args.bf16,
            progress=not self.training_args.disable_tqdm,
        )
        return metrics


def save_trainable_weights(policy, path: Path) -> None:
    """The policy's trainable tensors, written atomically (the best weights so far)."""
    from safetensors.torch import save_file

    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(policy), tmp)
    tmp.replace(path)
    follow_umask(path.parent)


def load_trainable_weights(policy, path: Path) -> None:
    """Puts the tensors `save_trainable_weights` wrote back into the policy."""
    from safetensors.torch import load_file

    load_trainable_state(policy, load_file(path))
