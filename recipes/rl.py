"""Improve a supervised title model with reinforcement learning: sampled titles, a ROUGE reward, PPO.

    titlegen-rl --config trainer_args/rl_scst.yaml --model outputs/tiny_offline [--key value ...]

Each step samples K titles for each article of a batch, rewards each with tw_rouge F1 against the
reference title, subtracts a baseline (the greedy title's reward, or the mean of the other samples)
and takes PPO steps with a KL penalty to the starting model (see titlegen/rl.py). Every eval_steps it
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
    from titlegen.cli import run

    return run(rl, argv)


def rl(argv: Sequence[str] | None = None) -> dict:
    from titlegen.config import DataArguments, parse_args
    from titlegen.modeling import trained_settings
    from titlegen.rl import RLArguments

    args, data_args = parse_args((RLArguments, DataArguments), argv, description=__doc__)
    if args.model_name_or_path:
        # Articles and titles as the starting model was trained on them, unless the config says otherwise.
        trained = trained_settings(args.model_name_or_path)
        defaults = {key: trained[key] for key in TRAINED_DATA_SETTINGS}
        args, data_args = parse_args((RLArguments, DataArguments), argv, description=__doc__, defaults=defaults)
    # Heavy imports after parsing, so that --help answers at once.
    import functools

    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm
    from transformers import DataCollatorForSeq2Seq, get_scheduler, set_seed

    from titlegen import TitlegenError, __version__
    from titlegen.config import resolved_config, save_config
    from titlegen.data import normalize_text, read_jsonl, split_records, write_json, write_jsonl
    from titlegen.generation import is_article_tokens_only, title_generation_config
    from titlegen.loops import is_no_loops
    from titlegen.lora import add_lora
    from titlegen.metrics import get_segmenter
    from titlegen.modeling import configure_cpu, count_parameters, load_model, load_tokenizer
    from titlegen.plotting import plot_rl_curves
    from titlegen.preprocessing import make_tokenize_fn
    from titlegen.rl import (
        batch_indices,
        evaluate_titles,
        frozen_copy,
        load_checkpoint,
        load_trainable_state,
        ppo_update,
        rollout_statistics,
        rouge_rewards,
        sample_rollout,
        save_checkpoint,
        trainable_state,
    )
    from titlegen.spans import encode_articles, encode_title, uses_slots

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    if not args.model_name_or_path:
        raise TitlegenError("model_name_or_path is not set (pass --model DIR, a supervised model folder)")
    output_dir = Path(args.output_dir)
    checkpoint = _checkpoint_to_resume(output_dir, args.resume)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        configure_cpu(args.flush_denormal, args.keep_freed_memory)
    set_seed(args.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(
        output_dir / "run_config.yaml",
        resolved_config(args, data_args),
        header=f"Resolved settings of this run (titlegen {__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}).\nReproduce it with: titlegen-rl --config {output_dir}/run_config.yaml",
    )

    # Data: the training format, validated at the edge.
    text, summary = data_args.text_column, data_args.summary_column
    columns = (data_args.id_column, text, summary)
    if not data_args.train_file:
        raise TitlegenError("train_file is not set (in the config or as --train_file)")
    train_records = read_jsonl(data_args.train_file, fields=columns, id_field=data_args.id_column)
    if data_args.validation_file:
        eval_records = read_jsonl(data_args.validation_file, fields=columns, id_field=data_args.id_column)
    else:
        train_records, eval_records = split_records(train_records, data_args.validation_split_percentage, args.seed)
    train_records = train_records[: data_args.max_train_samples]
    eval_records = eval_records[: data_args.max_eval_samples]

    # The policy, and the frozen reference of the KL penalty (with LoRA: the policy without adapters).
    tokenizer = load_tokenizer(args.model_name_or_path)
    policy = load_model(args.model_name_or_path)
    # Exactly max_new_tokens per title, in sampling, evaluation and the saved model's defaults. Validation and
    # the saved model decode as the starting model does unless the config says otherwise: a model trained to be
    # decoded with beams is selected, and later used, with beams.
    num_beams = args.generation_num_beams or policy.generation_config.num_beams
    # The restriction to the article's tokens applies there too; the titles sampled for training are not restricted,
    # so that their log-probabilities are the policy's own.
    restrict = args.generation_article_tokens_only
    if restrict is None:
        restrict = is_article_tokens_only(policy.generation_config)
    policy.generation_config = title_generation_config(
        policy, data_args.max_target_length, num_beams, restrict, no_loops=is_no_loops(policy.generation_config)
    )
    reference = None
    if args.use_lora:
        policy = add_lora(policy, args.lora_r, args.lora_alpha, dropout=0.0)  # no dropout in RL (titlegen/rl.py)
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
        spans = encode_articles([normalize_text(r[text]) for r in train_records])[1]
        references = [encode_title(t, s) for t, s in zip(references, spans, strict=True)]
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, args.warmup_steps, args.max_steps)
    state = {"step": 0, "best_step": None, "best_rouge_l": None, "history": []}
    if checkpoint:
        state = load_checkpoint(checkpoint, policy, optimizer, scheduler)
        logger.info("resumed from %s", checkpoint)

    segmenter = get_segmenter(args.segmenter)
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
            max_new_tokens=data_args.max_target_length, num_beams=num_beams, article_tokens_only=restrict,
            batch_size=args.per_device_eval_batch_size, max_source_length=data_args.max_source_length,
            source_prefix=data_args.source_prefix, bf16=args.bf16, progress=not args.disable_tqdm,
        )  # fmt: skip
        state["history"].append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
        logger.info("step %d: validation %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if state["best_rouge_l"] is None or metrics["rouge-l"] > state["best_rouge_l"]:
            state["best_step"], state["best_rouge_l"] = step, metrics["rouge-l"]
            best_path.parent.mkdir(exist_ok=True)
            tmp = best_path.with_suffix(".tmp")
            save_file(trainable_state(policy), tmp)
            tmp.replace(best_path)

    def write_progress() -> None:
        write_jsonl(output_dir / "rl_log.jsonl", state["history"])
        plot_rl_curves(state["history"], output_dir / "rl_curves.png", title=f"RL from {args.model_name_or_path}")

    if state["step"] == 0:
        evaluate(0)  # the starting model: the number RL has to beat
    bar = tqdm(range(state["step"], args.max_steps), desc="RL", unit="step", disable=args.disable_tqdm)
    for step in bar:
        indices = batch_indices(len(train_records), args.per_device_train_batch_size, step, args.seed)
        batch = collate([{k: features[k][i] for k in ("input_ids", "attention_mask", "labels")} for i in indices])
        batch = {k: v.to(device) for k, v in batch.items()}
        rollout = sample_rollout(
            policy, tokenizer, batch, [references[i] for i in indices], reward_fn,
            num_return_sequences=args.num_return_sequences, baseline=args.baseline,
            max_new_tokens=data_args.max_target_length, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, with_reference=args.beta > 0, reference_model=reference, bf16=args.bf16,
        )  # fmt: skip
        losses = ppo_update(
            policy, optimizer, batch, rollout, ppo_epochs=args.ppo_epochs, cliprange=args.cliprange,
            beta=args.beta, gamma=args.gamma, temperature=args.temperature, max_grad_norm=args.max_grad_norm,
            bf16=args.bf16,
        )  # fmt: skip
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        record = {"step": step + 1, **rollout_statistics(rollout), **losses, "learning_rate": learning_rate}
        state["history"].append(record)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl']:.4f}", loss=f"{record['loss']:.4f}")
        if (step + 1) % args.eval_steps == 0 or step + 1 == args.max_steps:
            evaluate(step + 1)
            state["step"] = step + 1
            save_checkpoint(output_dir, policy, optimizer, scheduler, state)
            write_progress()

    # The best weights become the run's model, as one full model (LoRA adapters merged).
    load_trainable_state(policy, load_file(best_path))
    if args.use_lora:
        policy = policy.merge_and_unload()
    policy.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    evals = [h for h in state["history"] if "eval_rouge-l" in h]
    results = {
        "segmenter": args.segmenter,
        "start": evals[0],
        "best": next(h for h in evals if h["step"] == state["best_step"]),
        "last": evals[-1],
    }
    write_json(output_dir / "eval_results.json", results)
    write_progress()
    logger.info("best validation rouge-l %.3f at step %d (start %.3f); model in %s", results["best"]["eval_rouge-l"],
                state["best_step"], results["start"]["eval_rouge-l"], output_dir)  # fmt: skip
    return results


def _checkpoint_to_resume(output_dir: Path, resume: bool) -> Path | None:
    """The latest checkpoint when resuming; refuses to write over an earlier run otherwise."""
    from titlegen import TitlegenError
    from titlegen.rl import latest_checkpoint

    if not output_dir.is_dir():
        return None
    last = latest_checkpoint(output_dir)
    if resume:
        if last is None:
            logger.info("no checkpoint in %s: starting from the beginning", output_dir)
        return last
    if any(output_dir.iterdir()):
        raise TitlegenError(
            f"{output_dir} already holds a run; pass --resume to continue it, or choose another --output_dir"
        )
    return None


if __name__ == "__main__":
    raise SystemExit(main())
