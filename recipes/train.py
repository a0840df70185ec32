"""Fine-tune a seq2seq model to write news titles from articles.

    titlegen-train --config trainer_args/tiny_offline.yaml [--key value ...]

Reads the course's jsonl (id, maintext, title), trains with transformers' Seq2SeqTrainer, scores
each evaluation with tw_rouge, and writes to output_dir: the final model and tokenizer (loadable with
``from_pretrained``), run_config.yaml (re-runnable with ``--config``), train/eval metrics JSON,
eval_predictions.jsonl, trainer_state.json, learning_curves.png and checkpoints.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

logger = logging.getLogger("titlegen.train")


def main(argv: Sequence[str] | None = None) -> int:
    from titlegen.cli import run
    from titlegen.distributed import shut_down

    try:
        return run(train, argv)
    finally:
        shut_down()


def train(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> dict:
    """Runs the recipe; `callbacks` are extra ``TrainerCallback`` objects (e.g. a benchmark's timers)."""
    from transformers import Seq2SeqTrainingArguments

    from titlegen.config import DataArguments, ModelArguments, RunArguments, parse_args

    model_args, data_args, run_args, training_args = parse_args(
        (ModelArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments), argv, description=__doc__
    )
    # Heavy imports after parsing, so that --help answers at once.
    import torch
    import transformers
    from datasets import concatenate_datasets
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, set_seed

    from titlegen import TitlegenError, __version__
    from titlegen.callbacks import NonFiniteLossGuard, StopOnSignal
    from titlegen.config import resolved_config, save_config
    from titlegen.data import normalize_text, read_jsonl, split_records, write_jsonl
    from titlegen.distributed import wait_for_everyone
    from titlegen.generation import decode_titles, title_generation_config
    from titlegen.lora import add_lora, merge_adapter
    from titlegen.loss import title_loss
    from titlegen.memory import out_of_memory_advice, training_advice
    from titlegen.metrics import build_compute_metrics, get_segmenter
    from titlegen.modeling import (
        build_model,
        configure_cpu,
        count_parameters,
        freeze_embeddings,
        freeze_encoder,
        load_model,
        load_tokenizer,
    )
    from titlegen.plotting import plot_learning_curves
    from titlegen.preprocessing import clause_end_arguments, lead_pairs, make_tokenize_fn, to_features
    from titlegen.spans import encode_articles, uses_slots
    from titlegen.tokenizer import train_tokenizer
    from titlegen.trainer import TitleTrainer

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    output_dir = Path(training_args.output_dir)
    checkpoint = _checkpoint_to_resume(output_dir, run_args.resume, training_args.should_save)
    wait_for_everyone()  # under a launcher, every process looks at output_dir before process 0 writes to it
    if not torch.cuda.is_available():
        configure_cpu(run_args.flush_denormal, run_args.keep_freed_memory)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(output_dir / "runs"))
    set_seed(training_args.seed)

    # Data: validated at the edge, with file and line in every error.
    columns = (data_args.id_column, data_args.text_column, data_args.summary_column)
    if not data_args.train_file:
        raise TitlegenError("train_file is not set (in the config or as --train_file)")
    train_records = read_jsonl(data_args.train_file, fields=columns, id_field=data_args.id_column)
    if data_args.validation_file:
        eval_records = read_jsonl(data_args.validation_file, fields=columns, id_field=data_args.id_column)
    else:
        train_records, eval_records = split_records(
            train_records, data_args.validation_split_percentage, training_args.seed
        )
    train_records = train_records[: data_args.max_train_samples]
    eval_records = eval_records[: data_args.max_eval_samples]

    # Tokenizer and model: pretrained, or built from a config with a tokenizer trained on this data.
    if model_args.model_name_or_path:
        tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.cache_dir)
        model = load_model(model_args.model_name_or_path, model_args.cache_dir)
    else:
        tokenizer_dir = output_dir / "tokenizer"
        if model_args.tokenizer_name:
            tokenizer = load_tokenizer(model_args.tokenizer_name, model_args.cache_dir)
        elif checkpoint and tokenizer_dir.is_dir():
            tokenizer = load_tokenizer(str(tokenizer_dir))
        else:
            # Under a launcher, process 0 of each machine trains it; the others wait, then load it.
            with training_args.main_process_first(desc="training the tokenizer"):
                if training_args.local_process_index > 0:
                    tokenizer = load_tokenizer(str(tokenizer_dir))
                else:
                    logger.info(
                        "training a %s SentencePiece tokenizer of at most %d tokens on %s",
                        model_args.tokenizer_type,
                        model_args.tokenizer_vocab_size,
                        data_args.train_file,
                    )
                    texts = (r[c] for r in train_records for c in (data_args.text_column, data_args.summary_column))
                    if model_args.tokenizer_copy_slots:
                        texts = encode_articles([normalize_text(t) for t in texts])[0]
                    tokenizer = train_tokenizer(
                        texts,
                        tokenizer_dir,
                        model_args.tokenizer_vocab_size,
                        model_type=model_args.tokenizer_type,
                        copy_slots=model_args.tokenizer_copy_slots,
                    )
        model = build_model(model_args.model_type, tokenizer, model_args.config_overrides)
    if model_args.freeze_encoder:
        logger.info("froze %d encoder parameters", freeze_encoder(model))
    if model_args.freeze_embeddings:
        logger.info("froze %d embedding parameters", freeze_embeddings(model))
    if model_args.use_lora:
        model = add_lora(
            model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
        )
    trainable, total = count_parameters(model)
    logger.info("parameters: %d trainable of %d (%.1f%%)", trainable, total, 100 * trainable / total)
    generation_config = title_generation_config(
        model,
        run_args.generation_max_new_tokens or data_args.max_target_length,
        training_args.generation_num_beams or 1,
        article_tokens_only=run_args.generation_article_tokens_only,
        no_loops=run_args.generation_no_loops,
    )
    model.generation_config = generation_config

    # Written once the inputs have proved valid, so that a run refused for bad input leaves no output_dir.
    if training_args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(
            output_dir / "run_config.yaml",
            resolved_config(model_args, data_args, run_args, training_args),
            header=f"Resolved settings of this run (titlegen {__version__}, transformers {transformers.__version__}, "
            f"torch {torch.__version__}).\nReproduce it with: titlegen-train --config {output_dir}/run_config.yaml",
        )

    tokenize = make_tokenize_fn(
        tokenizer,
        data_args.text_column,
        data_args.summary_column,
        data_args.max_source_length,
        data_args.max_target_length,
        data_args.source_prefix,
    )
    with training_args.main_process_first(desc="tokenizing"):
        train_dataset = to_features(train_records, columns, tokenize, desc="tokenizing train")
        eval_dataset = to_features(eval_records, columns, tokenize, desc="tokenizing validation")
        if data_args.lead_pairs:
            leads = lead_pairs(
                train_dataset,
                data_args.lead_pairs,
                max_target_length=data_args.max_target_length,
                eos_token_id=tokenizer.eos_token_id,
                seed=training_args.seed,
                **(clause_end_arguments(tokenizer) if data_args.lead_pairs_clause_end else {}),
            )
            logger.info("training on %d pairs and %d article-lead pairs", len(train_dataset), len(leads))
            train_dataset = concatenate_datasets([train_dataset, leads])

    # The evaluation articles' copy-slot spans, which turn generated slots back into words and numbers.
    eval_spans = None
    if uses_slots(tokenizer):
        eval_spans = encode_articles([normalize_text(r[data_args.text_column]) for r in eval_records])[1]
    callbacks = [StopOnSignal(), NonFiniteLossGuard(), *callbacks]
    if run_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run_args.early_stopping_patience))
    trainer = TitleTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        # Per title token over the whole optimizer step, so that gradient accumulation equals a larger batch.
        compute_loss_func=partial(title_loss, label_smoothing=training_args.label_smoothing_factor),
        compute_metrics=(
            build_compute_metrics(
                tokenizer, get_segmenter(run_args.segmenter), num_samples=len(eval_dataset), spans=eval_spans
            )
            if training_args.predict_with_generate
            else None
        ),
        callbacks=callbacks,
    )

    with out_of_memory_advice(training_advice, trainer, data_args):
        result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    if training_args.should_save:
        generation_config.save_pretrained(output_dir)  # a LoRA adapter is saved without it
        if model_args.use_lora and model_args.merge_lora:
            merge_adapter(output_dir, output_dir / "merged")
    trainer.save_state()
    if trainer.is_world_process_zero():
        plot_learning_curves(trainer.state.log_history, output_dir / "learning_curves.png", title=str(output_dir))
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)

    # Final evaluation, keeping the generated titles next to the model.
    with out_of_memory_advice(training_advice, trainer, data_args):
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
    trainer.log_metrics("eval", prediction.metrics)
    trainer.save_metrics("eval", prediction.metrics)
    if training_args.predict_with_generate and trainer.is_world_process_zero():
        titles = decode_titles(tokenizer, prediction.predictions[: len(eval_records)], eval_spans)  # as in the metric
        write_jsonl(
            output_dir / "eval_predictions.jsonl",
            ({"title": t, "id": r[data_args.id_column]} for t, r in zip(titles, eval_records, strict=True)),
        )
    return {**result.metrics, **prediction.metrics}


def _checkpoint_to_resume(output_dir: Path, resume: bool, is_main_process: bool) -> str | None:
    """The latest complete checkpoint when resuming; refuses to train over an earlier run otherwise."""
    from titlegen import TitlegenError
    from titlegen.checkpoints import last_complete_checkpoint, remove_incomplete_checkpoints

    if output_dir.exists() and not output_dir.is_dir():
        raise TitlegenError(f"{output_dir}: output_dir is a file; choose a folder for the run")
    if not output_dir.is_dir():
        return None
    if resume:
        last = last_complete_checkpoint(output_dir)
        if is_main_process:
            remove_incomplete_checkpoints(output_dir)
        if last is None:
            logger.info("no complete checkpoint in %s: starting from the beginning", output_dir)
            return None
        logger.info("resuming from %s", last)
        return str(last)
    if any(p.name != "runs" for p in output_dir.iterdir()):
        raise TitlegenError(
            f"{output_dir} already holds a run; pass --resume to continue it, or choose another --output_dir"
        )
    return None


if __name__ == "__main__":
    raise SystemExit(main())
