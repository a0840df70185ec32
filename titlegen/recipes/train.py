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
from pathlib import Path

from titlegen import TitlegenError
from titlegen.arguments import train_settings
from titlegen.checkpoints import lock_run_dir, prepare_run_dir, releases_run_dir_locks
from titlegen.config import parse_args, save_run_config
from titlegen.cpu import configure_process
from titlegen.data import read_training_data, write_jsonl
from titlegen.distributed import check_fsdp, fsdp_version, shut_down, wait_for_everyone
from titlegen.generation import decode_titles, title_decoding
from titlegen.lifecycle import run_command, start_logging
from titlegen.lora import merge_adapter
from titlegen.memory_advice import out_of_memory_advice, training_advice
from titlegen.modeling import adapt_for_training, log_parameters, starting_model
from titlegen.plotting import plot_learning_curves
from titlegen.preprocessing import training_features
from titlegen.spans import encode_articles, uses_slots
from titlegen.trainer import title_trainer

logger = logging.getLogger("titlegen.train")
settings = train_settings  # titlegen-train's settings, in the order `train` unpacks them


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = run_command(train, argv)
        if code == 0:
            # A process that tears its group down while another still saves aborts ("terminate called without
            # an active exception", seen with FSDP2 on gloo); after an error, the launcher ends the others.
            wait_for_everyone()
        return code
    finally:
        shut_down()


@releases_run_dir_locks
def train(argv: Sequence[str] | None = None, callbacks: Sequence = ()) -> dict:
    """Runs the recipe; `callbacks` are extra ``TrainerCallback`` objects (e.g. a benchmark's timers)."""
    model_args, lora_args, data_args, run_args, training_args = parse_args(settings(), argv, description=__doc__)
    check_fsdp(training_args)
    if lora_args.use_lora and not model_args.model_name_or_path:
        raise TitlegenError(
            "use_lora adapts a pretrained model: set model_name_or_path (a hub id or a local model folder)"
        )

    # Set up: the run folder (a finished run is refused, an interrupted one resumed), logging, seeds.
    start_logging()
    output_dir = Path(training_args.output_dir)
    checkpoint = prepare_run_dir(output_dir, run_args.resume, training_args.should_save)
    wait_for_everyone()  # under a launcher, every process looks at output_dir before process 0 writes to it
    configure_process(training_args.seed, run_args.flush_denormal, run_args.keep_freed_memory)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(output_dir / "runs"))

    # Data: validated at the edge, with file and line in every error.
    train_records, eval_records = read_training_data(data_args, training_args.seed)

    # Tokenizer and model: pretrained, or built from a config with a tokenizer trained on this data; titles
    # decoded as the settings (or the starting model) say; frozen parts and LoRA as the settings say.
    columns = (data_args.text_column, data_args.summary_column)
    tokenizer, model = starting_model(
        model_args, training_args, lambda: (r[c] for r in train_records for c in columns), output_dir, bool(checkpoint)
    )
    generation_config = title_decoding(model, run_args, data_args, training_args.generation_num_beams)
    model.generation_config = generation_config  # before LoRA: the base model, which the adapters leave in place
    model = adapt_for_training(
        model, lora_args, model_args.freeze_encoder, model_args.freeze_embeddings, bool(fsdp_version(training_args))
    )
    log_parameters(model)

    # Features, and the trainer (which refuses an evaluation backend that cannot decode as the model does).
    with training_args.main_process_first(desc="tokenizing"):
        train_dataset, eval_dataset = training_features(
            tokenizer, data_args, train_records, eval_records, training_args.seed
        )
    eval_spans = encode_articles([r[data_args.text_column] for r in eval_records])[1] if uses_slots(tokenizer) else None
    trainer = title_trainer(model, tokenizer, training_args, run_args, train_dataset, eval_dataset, eval_spans,
                            callbacks)  # fmt: skip
    # Written once the inputs have proved valid, so that a run refused for bad input leaves no output_dir.
    if training_args.should_save:
        lock_run_dir(output_dir)  # no other run writes output_dir while this one does
        save_run_config(output_dir, "titlegen-train", model_args, lora_args, data_args, run_args, training_args)

    # Train, then save the model, its decoding settings, the state and the learning curves.
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
        records = zip(titles, eval_records, strict=True)
        write_jsonl(
            output_dir / "eval_predictions.jsonl", ({"title": t, "id": r[data_args.id_column]} for t, r in records)
        )
    return {**result.metrics, **prediction.metrics}


if __name__ == "__main__":
    raise SystemExit(main())
