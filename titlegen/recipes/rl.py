"""Improve a supervised title model with reinforcement learning: sampled titles, a ROUGE reward, PPO.

    titlegen-rl --config trainer_args/rl_scst.yaml --model outputs/tiny_offline [--key value ...]

Each step samples K titles for each article of a batch, rewards each with tw_rouge F1 against the
reference title, subtracts a baseline (the greedy title's reward, or the mean of the other samples)
and takes PPO steps with a KL penalty to the starting model (see titlegen/rl/). Every eval_steps it
scores the validation file (decoded as the starting model is), keeps the best weights and saves a resumable
checkpoint. output_dir gets the best model and tokenizer (titlegen-predict loads them),
run_config.yaml, rl_log.jsonl (one line per step and per evaluation), eval_results.json and
rl_curves.png.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("titlegen.rl")

# Taken from the starting model's run_config.yaml when the RL config does not set them.
TRAINED_DATA_SETTINGS = ("source_prefix", "max_source_length", "max_target_length")


def main(argv: Sequence[str] | None = None) -> int:
    from titlegen.lifecycle import run_command

    return run_command(rl, argv)


def rl(argv: Sequence[str] | None = None) -> dict:
    """Runs the recipe."""
    from titlegen.lifecycle import run_dir_locks

    with run_dir_locks():  # no other run writes output_dir while this one does
        return _rl(argv)


def _rl(argv: Sequence[str] | None) -> dict:
    from titlegen.config import parse_args, trained_settings
    from titlegen.rl.config import check_settings, settings

    parsed = parse_args(settings(), argv, description=__doc__)
    starting_model = parsed[2].model_name_or_path
    if starting_model:
        # Articles and titles as the starting model was trained on them, unless the config says otherwise.
        trained = trained_settings(starting_model)
        defaults = {key: trained[key] for key in TRAINED_DATA_SETTINGS}
        parsed = parse_args(settings(), argv, description=__doc__, defaults=defaults)
    args, sampling, model_args, lora_args, data_args, run_args, training_args = parsed
    check_settings(model_args, data_args, run_args, training_args)
    # Heavy imports after parsing, so that --help answers at once.
    import functools

    import torch
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm
    from transformers import DataCollatorForSeq2Seq, get_scheduler

    from titlegen import lifecycle
    from titlegen.checkpoints import load_checkpoint, load_trainable_state, save_checkpoint, trainable_state
    from titlegen.data import follow_umask, normalize_text, write_json, write_jsonl
    from titlegen.lora import add_lora
    from titlegen.metrics import get_segmenter
    from titlegen.modeling import count_parameters
    from titlegen.plotting import plot_rl_curves
    from titlegen.preprocessing import make_tokenize_fn
    from titlegen.rl.config import absolute_steps
    from titlegen.rl.reward import rouge_rewards
    from titlegen.rl.rollout import (
        batch_indices,
        evaluate_titles,
        frozen_copy,
        ppo_update,
        rollout_statistics,
        sample_rollout,
    )
    from titlegen.spans import encode_articles, encode_title, uses_slots

    lifecycle.start_logging()
    output_dir = Path(training_args.output_dir)
    checkpoint = lifecycle.prepare_run_dir(output_dir, run_args.resume)
    device = lifecycle.configure_process(training_args.seed, run_args.flush_denormal, run_args.keep_freed_memory)
    train_records, eval_records = lifecycle.read_training_data(data_args, training_args.seed)
    text, summary = data_args.text_column, data_args.summary_column
    start = lifecycle.load_model_folder(model_args.model_name_or_path)
    tokenizer, policy = start.tokenizer, start.model
    lifecycle.lock_run_dir(output_dir)
    lifecycle.save_run_config(
        output_dir, "titlegen-rl", args, sampling, model_args, lora_args, data_args, run_args, training_args
    )

    # The policy, and the frozen reference of the KL penalty (with LoRA: the policy without adapters).
    # Exactly max_new_tokens per title, in sampling, evaluation and the saved model's defaults. Validation and
    # the saved model decode as the starting model does unless the settings say otherwise: a model trained to be
    # decoded with beams, or with a guard, is selected, and later used, so. The restriction to the article's tokens
    # applies there too; the titles sampled for training are not restricted, so that their log-probabilities are
    # the policy's own.
    policy.generation_config = lifecycle.title_decoding(policy, run_args, data_args, training_args.generation_num_beams)
    max_new_tokens = policy.generation_config.max_new_tokens
    reference = None
    if lora_args.use_lora:  # the policy stays in eval mode, so the adapters' dropout is off (titlegen/rl/)
        policy = add_lora(
            policy, lora_args.lora_r, lora_args.lora_alpha, lora_args.lora_dropout, lora_args.lora_target_modules
        )
    elif args.beta:
        reference = frozen_copy(policy).to(device)
    policy.to(device)
    trainable, total = count_parameters(policy)
    logger.info("parameters: %d trainable of %d (%.1f%%)", trainable, total, 100 * trainable / total)

    tokenize = make_tokenize_fn(tokenizer, text, summary, data_args.max_source_length, data_args.max_target_length,
                                data_args.source_prefix)  # fmt: skip
    features = tokenize({text: [r[text] for r in train_records], summary: [r[summary] for r in train_records]})
    references = [normalize_text(r[summary]) for r in train_records]
    if uses_slots(tokenizer):  # rewards compare titles as sampled, with their copy slots (titlegen/spans.py)
        spans = encode_articles([r[text] for r in train_records])[1]
        references = [encode_title(t, s) for t, s in zip(references, spans, strict=True)]
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad],
        lr=training_args.learning_rate,
        weight_decay=training_args.weight_decay,
    )
    max_steps = training_args.max_steps
    warmup_steps = absolute_steps(training_args.warmup_steps, max_steps)
    scheduler = get_scheduler(training_args.lr_scheduler_type, optimizer, warmup_steps, max_steps)
    eval_steps = absolute_steps(training_args.eval_steps, max_steps)
    state = {"step": 0, "best_step": None, "best_rouge_l": None, "history": []}
    if checkpoint:
        state = load_checkpoint(checkpoint, policy, optimizer, scheduler)
        logger.info("resumed from %s", checkpoint)

    segmenter = get_segmenter(run_args.segmenter)
    reward_fn = functools.partial(
        rouge_rewards,
        segmenter=segmenter,
        weights=args.reward_weights,
        length_penalty=args.reward_length_penalty,
        repetition_penalty=args.reward_repetition_penalty,
    )
    best_path = output_dir / "best" / "trainable.safetensors"

    def evaluate(step: int) -> None:
        """Validation ROUGE with the configured decoding; the best weights so far are kept."""
        metrics, _ = evaluate_titles(
            policy, tokenizer, [r[text] for r in eval_records], [r[summary] for r in eval_records], segmenter,
            generation_config=policy.generation_config, batch_size=training_args.per_device_eval_batch_size,
            max_source_length=data_args.max_source_length,
            source_prefix=data_args.source_prefix, bf16=training_args.bf16, progress=not training_args.disable_tqdm,
        )  # fmt: skip
        state["history"].append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        logger.info("step %d: validation %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if state["best_rouge_l"] is None or metrics["rouge-l"] > state["best_rouge_l"]:
            state["best_step"], state["best_rouge_l"] = step, metrics["rouge-l"]
            best_path.parent.mkdir(exist_ok=True)
            tmp = best_path.with_suffix(".tmp")
            save_file(trainable_state(policy), tmp)
            tmp.replace(best_path)
            follow_umask(best_path.parent)

    def write_progress() -> None:
        write_jsonl(output_dir / "rl_log.jsonl", state["history"])
        plot_rl_curves(state["history"], output_dir / "rl_curves.png", title=f"RL from {model_args.model_name_or_path}")

    if state["step"] == 0:
        evaluate(0)  # the starting model: the number RL has to beat
    bar = tqdm(range(state["step"], max_steps), desc="RL", unit="step", disable=training_args.disable_tqdm)
    for step in bar:
        indices = batch_indices(len(train_records), training_args.per_device_train_batch_size, step, training_args.seed)
        batch = collate([{k: features[k][i] for k in ("input_ids", "attention_mask", "labels")} for i in indices])
        batch = {k: v.to(device) for k, v in batch.items()}
        rollout = sample_rollout(
            policy, tokenizer, batch, [references[i] for i in indices], reward_fn,
            num_return_sequences=args.num_return_sequences, baseline=args.baseline,
            max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
            top_p=sampling.top_p, with_reference=args.beta > 0, reference_model=reference, bf16=training_args.bf16,
        )  # fmt: skip
        losses = ppo_update(
            policy, optimizer, batch, rollout, ppo_epochs=args.ppo_epochs, cliprange=args.cliprange,
            beta=args.beta, gamma=args.gamma, temperature=sampling.temperature,
            max_grad_norm=training_args.max_grad_norm, bf16=training_args.bf16,
        )  # fmt: skip
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        record = {"step": step + 1, **rollout_statistics(rollout), **losses, "learning_rate": learning_rate}
        state["history"].append(record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.4f}", loss=f"{record['loss']:.4f}")
        if (step + 1) % eval_steps == 0 or step + 1 == max_steps:
            evaluate(step + 1)
            state["step"] = step + 1
            save_checkpoint(output_dir, policy, optimizer, scheduler, state)
            write_progress()
            evaluations_since_best = sum(
                1 for h in state["history"] if h["step"] > state["best_step"] and "eval_rouge-l" in h
            )
            if run_args.early_stopping_patience and evaluations_since_best >= run_args.early_stopping_patience:
                logger.info("no better validation rouge-l in %d evaluations: stopping", evaluations_since_best)
                break

    # The best weights become the run's model, as one full model (LoRA adapters merged).
    load_trainable_state(policy, load_file(best_path))
    if lora_args.use_lora:
        policy = policy.merge_and_unload()
    policy.save_pretrained(output_dir)
    follow_umask(output_dir)
    tokenizer.save_pretrained(output_dir)
    evals = [h for h in state["history"] if "eval_rouge-l" in h]
    results = {
        "segmenter": run_args.segmenter,
        "start": evals[0],
        "best": next(h for h in evals if h["step"] == state["best_step"]),
        "last": evals[-1],
    }
    write_json(output_dir / "eval_results.json", results)
    write_progress()
    logger.info("best validation rouge-l %.3f at step %d (start %.3f); model in %s", results["best"]["eval_rouge-l"],
                state["best_step"], results["start"]["eval_rouge-l"], output_dir)  # fmt: skip
    return results


if __name__ == "__main__":
    raise SystemExit(main())
