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

from titlegen.checkpoints import load_checkpoint, lock_run_dir, prepare_run_dir, releases_run_dir_locks, save_checkpoint
from titlegen.config import save_run_config
from titlegen.cpu import configure_process
from titlegen.data import follow_umask, read_training_data, write_json
from titlegen.generation import title_decoding
from titlegen.lifecycle import run_command, start_logging
from titlegen.metrics import get_segmenter
from titlegen.model_folder import load_model_folder
from titlegen.modeling import adapt_for_training, log_parameters
from titlegen.rl.config import absolute_steps, check_settings
from titlegen.rl.rollout import batch_indices, frozen_copy, ppo_update, rollout_statistics, sample_rollout
from titlegen.rl.run import (
    BEST_WEIGHTS,
    RLState,
    Validation,
    load_trainable_weights,
    optimizer_and_scheduler,
    parse_rl_args,
    reward_function,
    save_trainable_weights,
    training_examples,
)

logger = logging.getLogger("titlegen.rl")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(rl, argv)


@releases_run_dir_locks
def rl(argv: Sequence[str] | None = None) -> dict:
    args, sampling, model_args, lora_args, data_args, run_args, training_args = parse_rl_args(argv, __doc__)
    check_settings(model_args, data_args, run_args, training_args)
    # Heavy imports after parsing, so that --help answers at once.
    from tqdm.auto import tqdm
    from transformers import DataCollatorForSeq2Seq

    # Set up: the run folder (a finished run is refused, an interrupted one resumed), logging, seeds, data, model.
    start_logging()
    output_dir = Path(training_args.output_dir)
    checkpoint = prepare_run_dir(output_dir, run_args.resume)
    device = configure_process(training_args.seed, run_args.flush_denormal, run_args.keep_freed_memory)
    train_records, eval_records = read_training_data(data_args, training_args.seed)
    start = load_model_folder(model_args.model_name_or_path)
    tokenizer, policy = start.tokenizer, start.model
    lock_run_dir(output_dir)  # no other run writes output_dir while this one does
    save_run_config(output_dir, "titlegen-rl", *(args, sampling, model_args, lora_args, data_args, run_args),
                    training_args)  # fmt: skip

    # The policy, and the frozen reference of the KL penalty (with LoRA: the policy without adapters).
    # Exactly max_new_tokens per title, in sampling, evaluation and the saved model's defaults. Validation and
    # the saved model decode as the starting model does unless the settings say otherwise: a model trained to be
    # decoded with beams, or with a guard, is selected, and later used, so. The restriction to the article's tokens
    # applies there too; the titles sampled for training are not restricted, so that their log-probabilities are
    # the policy's own.
    policy.generation_config = title_decoding(policy, run_args, data_args, training_args.generation_num_beams)
    max_new_tokens = policy.generation_config.max_new_tokens
    reference = frozen_copy(policy).to(device) if args.beta and not lora_args.use_lora else None
    policy = adapt_for_training(policy, lora_args).to(device)  # stays in eval mode: no adapter dropout (rl/)
    log_parameters(policy)

    # Examples, rewards, optimizer, validation, and the state a checkpoint resumes.
    features, references = training_examples(tokenizer, train_records, data_args)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
    optimizer, scheduler = optimizer_and_scheduler(policy, training_args)
    segmenter = get_segmenter(run_args.segmenter)
    reward_fn = reward_function(args, segmenter)
    validate = Validation(eval_records, data_args, training_args, segmenter)
    max_steps, eval_steps = training_args.max_steps, absolute_steps(training_args.eval_steps, training_args.max_steps)
    state = RLState(**load_checkpoint(checkpoint, policy, optimizer, scheduler)) if checkpoint else RLState()
    if state.step == 0 and state.log_evaluation(0, validate(policy, tokenizer)):  # the number RL has to beat
        save_trainable_weights(policy, output_dir / BEST_WEIGHTS)

    bar = tqdm(range(state.step, max_steps), desc="RL", unit="step", disable=training_args.disable_tqdm)
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
        state.log_step(record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.4f}", loss=f"{record['loss']:.4f}")
        if (step + 1) % eval_steps == 0 or step + 1 == max_steps:
            if state.log_evaluation(step + 1, validate(policy, tokenizer)):
                save_trainable_weights(policy, output_dir / BEST_WEIGHTS)
            state.step = step + 1
            save_checkpoint(output_dir, policy, optimizer, scheduler, state.as_dict())
            state.write_log(output_dir, title=f"RL from {model_args.model_name_or_path}")
            if run_args.early_stopping_patience and state.evaluations_since_best() >= run_args.early_stopping_patience:
                logger.info("no better validation rouge-l in %d evaluations: stopping", state.evaluations_since_best())
                break

    # The best weights become the run's model, as one full model (LoRA adapters merged).
    load_trainable_weights(policy, output_dir / BEST_WEIGHTS)
    if lora_args.use_lora:
        policy = policy.merge_and_unload()
    policy.save_pretrained(output_dir)
    follow_umask(output_dir)
    tokenizer.save_pretrained(output_dir)
    results = state.results(run_args.segmenter)
    write_json(output_dir / "eval_results.json", results)
    state.write_log(output_dir, title=f"RL from {model_args.model_name_or_path}")
    logger.info("best validation rouge-l %.3f at step %d (start %.3f); model in %s", results["best"]["eval_rouge-l"],
                state.best_step, results["start"]["eval_rouge-l"], output_dir)  # fmt: skip
    return results


if __name__ == "__main__":
    raise SystemExit(main())
