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
    from titlegen.distributed import shut_down, wait_for_everyone
    from titlegen.lifecycle import run_command

    try:
        code = run_command(train, argv)
        if code == 0:
            # A process that tears its group down while another still saves aborts ("terminate called without
            # an active exception", seen with FSDP2 on gloo); after an error, the launcher ends the others.
            wait_for_everyone()
        return code
    finally:
        shut_down()


def settings() -> tuple[type, ...]:
    """The settings of titlegen-train, in the order `train` unpacks them."""
    from transformers import Seq2SeqTrainingArguments

    from titlegen.config import DataArguments, LoraArguments, ModelArguments, RunArguments

    return ModelArguments, LoraArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments


def train(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> dict:
    """Runs the recipe; `callbacks` are extra ``TrainerCallback`` objects (e.g. a benchmark's timers)."""
    from titlegen.config import parse_args

    model_args, lora_args, data_args, run_args, training_args = parse_args(settings(), argv, description=__doc__)
    # Heavy imports after parsing, so that --help answers at once.
    from datasets import concatenate_datasets
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback

    from titlegen import TitlegenError, lifecycle
    from titlegen.callbacks import NonFiniteLossGuard, StopOnSignal
    from titlegen.data import write_jsonl
    from titlegen.distributed import fsdp_version, wait_for_everyone
    from titlegen.generation import decode_titles
    from titlegen.loops import is_no_loops
    from titlegen.lora import add_lora, merge_adapter
    from titlegen.loss import title_loss
    from titlegen.memory import out_of_memory_advice, training_advice
    from titlegen.metrics import build_compute_metrics, get_segmenter
    from titlegen.modeling import (
        build_model,
        count_parameters,
        freeze_embeddings,
        freeze_encoder,
        load_tokenizer,
        share_embedding_module,
    )
    from titlegen.plotting import plot_learning_curves
    from titlegen.preprocessing import clause_end_arguments, lead_pairs, make_tokenize_fn, to_features
    from titlegen.spans import encode_articles, uses_slots
    from titlegen.tokenizer import train_tokenizer
    from titlegen.trainer import TitleTrainer

    if training_args.predict_with_generate and fsdp_version(training_args) == 1:
        # FSDP2 gathers each block's weights as generate reaches it (tested: the same titles as DDP).
        raise TitlegenError(
            "predict_with_generate fails under FSDP version 1 (transformers#21667): use fsdp_version 2 "
            "(trainer_args/accelerate/fsdp_mt5.yaml), or set predict_with_generate false"
        )
    if lora_args.use_lora and not model_args.model_name_or_path:
        raise TitlegenError(
            "use_lora adapts a pretrained model: set model_name_or_path (a hub id or a local model folder)"
        )
    lifecycle.start_logging()
    output_dir = Path(training_args.output_dir)
    checkpoint = lifecycle.prepare_run_dir(output_dir, run_args.resume, training_args.should_save)
    wait_for_everyone()  # under a launcher, every process looks at output_dir before process 0 writes to it
    lifecycle.configure_process(training_args.seed, run_args.flush_denormal, run_args.keep_freed_memory)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(output_dir / "runs"))

    # Data: validated at the edge, with file and line in every error.
    columns = (data_args.id_column, data_args.text_column, data_args.summary_column)
    train_records, eval_records = lifecycle.read_training_data(data_args, training_args.seed)

    # Tokenizer and model: pretrained, or built from a config with a tokenizer trained on this data.
    if model_args.model_name_or_path:
        start = lifecycle.load_model_folder(
            model_args.model_name_or_path, model_args.cache_dir, model_args.tokenizer_name
        )
        tokenizer, model = start.tokenizer, start.model
    else:
        tokenizer_dir = output_dir / "tokenizer"
        if model_args.tokenizer_name:
            tokenizer = load_tokenizer(model_args.tokenizer_name, model_args.cache_dir)
        elif checkpoint and tokenizer_dir.is_dir():  # the tokenizer the interrupted run trained
            tokenizer = load_tokenizer(str(tokenizer_dir))
        else:
            # Under a launcher, the process that saves trains it and the others wait, then load it: process 0
            # alone when output_dir is shared by the machines (the default), process 0 of each machine with
            # save_on_each_node, as transformers saves checkpoints. Two machines writing one shared folder at
            # once would race.
            with training_args.main_process_first(local=training_args.save_on_each_node, desc="training the tokenizer"):
                if not training_args.should_save:
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
                        texts = encode_articles(list(texts))[0]
                    tokenizer = train_tokenizer(
                        texts,
                        tokenizer_dir,
                        model_args.tokenizer_vocab_size,
                        model_type=model_args.tokenizer_type,
                        copy_slots=model_args.tokenizer_copy_slots,
                    )
        model = build_model(model_args.model_type, tokenizer, model_args.config_overrides)
    # Titles decoded as the settings (or the starting model) say.
    generation_config = lifecycle.title_decoding(model, run_args, data_args, training_args.generation_num_beams)
    model.generation_config = generation_config  # before LoRA: the base model, which the adapters leave in place
    if model_args.freeze_encoder:
        logger.info("froze %d encoder parameters", freeze_encoder(model))
    if model_args.freeze_embeddings:
        logger.info("froze %d embedding parameters", freeze_embeddings(model))
    if fsdp_version(training_args):
        share_embedding_module(model)  # one FSDP group for the embedding's one weight (see the function)
    if lora_args.use_lora:
        model = add_lora(
            model, lora_args.lora_r, lora_args.lora_alpha, lora_args.lora_dropout, lora_args.lora_target_modules
        )
    trainable, total = count_parameters(model)
    logger.info("parameters: %d trainable of %d (%.1f%%)", trainable, total, 100 * trainable / total)
    if run_args.generation_backend == "ct2" and is_no_loops(generation_config):
        raise TitlegenError(
            "generation_backend ct2 cannot honour generation_no_loops (CTranslate2 has no per-title guard): "
            "set generation_no_loops false, or generation_backend transformers"
        )

    # Written once the inputs have proved valid, so that a run refused for bad input leaves no output_dir.
    if training_args.should_save:
        lifecycle.save_run_config(
            output_dir, "titlegen-train", model_args, lora_args, data_args, run_args, training_args
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
        eval_spans = encode_articles([r[data_args.text_column] for r in eval_records])[1]
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
        generation_backend=run_args.generation_backend,
    )

    if fsdp_version(training_args) and not trainer.is_fsdp_enabled:
        # accelerate shards with FSDP on GPUs (and other accelerators) only; elsewhere it trains with DDP
        # instead, without a word, and every process holds the whole model.
        raise TitlegenError(
            f"FSDP was asked for, but accelerate runs this as {trainer.accelerator.distributed_type.value} "
            "(on CPU it does not shard): launch with trainer_args/accelerate/ddp_multi_gpu.yaml, or on GPUs"
        )
    with out_of_memory_advice(training_advice, trainer, data_args):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model()
    if training_args.should_save:
        generation_config.save_pretrained(output_dir)  # a LoRA adapter is saved without it
        if lora_args.use_lora and model_args.merge_lora:
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


if __name__ == "__main__":
    raise SystemExit(main())
