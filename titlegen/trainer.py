"""transformers' Seq2SeqTrainer, without its side effect on the model's generation config, and decoding in
evaluation as `titlegen.generation.generate_titles` does, or with CTranslate2 (``generation_backend: ct2``)."""

from __future__ import annotations

import contextlib
import copy
from functools import partial

from transformers import LogitsProcessorList, Seq2SeqTrainer

from titlegen import TitlegenError
from titlegen.callbacks import NonFiniteLossGuard, StopOnSignal
from titlegen.characters import byte_piece_ids
from titlegen.data import follow_umask
from titlegen.distributed import fsdp_version
from titlegen.engines.ct2 import padded
from titlegen.engines.export import training_engine
from titlegen.generation import is_article_tokens_only, title_guards
from titlegen.loops import is_no_loops
from titlegen.loss import title_loss
from titlegen.metrics import build_compute_metrics, get_segmenter


class TitleTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` that leaves the model's generation config as it was given, and keeps each title
    to its article's tokens when the config says ``article_tokens_only``, without loops when it says ``no_loops``, and
    its byte pieces in whole characters, decoding in float32 under mixed-precision training (as ``generate_titles``
    does by default; see `_full_precision`).

    ``Seq2SeqTrainer.prediction_step`` fills the model's generation config with generate's defaults in
    place (transformers 5.23), so after the first evaluation it carries ``max_length=20`` beside
    ``max_new_tokens``: every later ``generate`` warns, and checkpoints are saved with that config.

    Under FSDP and DeepSpeed, a saved model holds the tied embedding once (see `without_tied_copies`).
    """

    def __init__(self, *args, generation_backend: str = "transformers", **kwargs):
        super().__init__(*args, **kwargs)
        self.generation_backend = generation_backend
        self._engine = None  # the CTranslate2 engine of the evaluation under way
        tokenizer = self.processing_class
        self._byte_ids = byte_piece_ids(tokenizer) if tokenizer is not None else {}  # for the whole-character guard

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Saves the model as transformers does, the tied embedding once (`without_tied_copies`) and the weights
        readable as the umask says (`follow_umask`)."""
        if state_dict is not None:  # gathered by FSDP or DeepSpeed, a tensor per name
            state_dict = without_tied_copies(self.accelerator.unwrap_model(self.model), state_dict)
        super()._save(output_dir, state_dict)
        follow_umask(output_dir if output_dir is not None else self.args.output_dir)

    def evaluate(self, *args, **kwargs):
        with self._ct2_engine():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._ct2_engine():
            return super().predict(*args, **kwargs)

    @contextlib.contextmanager
    def _ct2_engine(self):
        """With ``generation_backend: ct2``, the model as it is now, exported to CTranslate2 for one evaluation."""
        if self.generation_backend != "ct2" or not self.args.predict_with_generate or self._engine is not None:
            yield
            return

        with training_engine(self.model, self.processing_class) as self._engine:
            try:
                yield
            finally:
                self._engine = None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self._engine is not None and not prediction_loss_only:
            return self._ct2_prediction_step(model, inputs, ignore_keys, **gen_kwargs)
        generation_config = self.model.generation_config
        chosen = copy.deepcopy(generation_config)
        generating = self.args.predict_with_generate and not prediction_loss_only
        if generating:
            processors = title_guards(  # self.model: `model` may be wrapped for distributed training
                self.model,
                inputs,
                restrict=is_article_tokens_only(generation_config),
                no_loops=is_no_loops(generation_config),
                byte_ids=self._byte_ids,
            )
            if processors:
                # Seq2SeqTrainer uses its own generate arguments only when given none.
                gen_kwargs = gen_kwargs or dict(getattr(self, "_gen_kwargs", {}))
                gen_kwargs["logits_processor"] = LogitsProcessorList(processors)
        try:
            with _full_precision(self.model) if generating else contextlib.nullcontext():
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
        finally:
            # In place: under LoRA, self.model is a PeftModel that reads the base model's config.
            vars(generation_config).update(vars(chosen))

    def _ct2_prediction_step(self, model, inputs, ignore_keys, **gen_kwargs):
        """The loss from the model, the titles from its CTranslate2 export (padded token ids, as generate's)."""
        import torch

        loss, _, _ = super().prediction_step(model, inputs, True, ignore_keys)
        # Seq2SeqTrainer uses its own generate arguments only when given none.
        gen_kwargs = {k: v for k, v in (gen_kwargs or getattr(self, "_gen_kwargs", {})).items() if v is not None}
        options, restrict = self._engine.decoding(None, **gen_kwargs)
        articles = [
            ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
        ]
        titles = padded(self._engine.generate_ids(articles, options, restrict), self.processing_class.pad_token_id)
        generated = torch.tensor(titles, dtype=torch.long, device=inputs["input_ids"].device)
        return loss, generated, inputs.get("labels")


@contextlib.contextmanager
def _full_precision(model):
    """`model` with its own forward for the duration, not the mixed-precision one that accelerate put in its place.

    Under ``bf16`` (or ``fp16``) accelerate's ``prepare_model`` replaces ``model.forward`` with one that runs under
    autocast, and ``generate`` calls that forward at every decoding step (the encoder it calls directly, in float32):
    evaluation then decoded in bfloat16 while ``generate_titles`` (titlegen-predict without ``--bf16``) decodes in
    float32, and where two tokens scored within bfloat16's rounding the two chose differently. Evaluation now
    decodes as titlegen-predict does by default; the loss of a batch evaluated with generation is computed in
    float32 too. A model without the replacement (no mixed precision) is left as it is.
    """
    original = vars(model).get("_original_forward")  # set by accelerate beside the forward it replaces
    if original is None or "forward" not in vars(model):
        yield
        return
    mixed = vars(model)["forward"]
    model.forward = original
    try:
        yield
    finally:
        model.forward = mixed


def title_trainer(model, tokenizer, training_args, run_args, train_dataset, eval_dataset, eval_spans, callbacks=()):
    """The `TitleTrainer` of a training run: titlegen's loss, tw_rouge on each evaluation, and its callbacks.

    Args:
        model: The model to train, its generation config set (`titlegen.generation.title_decoding`).
        tokenizer: Its tokenizer.
        training_args: ``Seq2SeqTrainingArguments``.
        run_args: `titlegen.arguments.RunArguments`: the segmenter, early stopping and evaluation backend.
        train_dataset: Tokenized training pairs.
        eval_dataset: Tokenized validation pairs.
        eval_spans: The validation articles' copy-slot spans (None without copy slots), which turn generated
            slots back into words and numbers.
        callbacks: Extra ``TrainerCallback`` objects (e.g. a benchmark's timers).
    """
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback

    if run_args.generation_backend == "ct2" and is_no_loops(model.generation_config):
        raise TitlegenError(
            "generation_backend ct2 cannot honour generation_no_loops (CTranslate2 has no per-title guard): "
            "set generation_no_loops false, or generation_backend transformers"
        )
    callbacks = [StopOnSignal(), NonFiniteLossGuard(), *callbacks]
    if run_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run_args.early_stopping_patience))
    compute_metrics = None
    if training_args.predict_with_generate:
        segmenter = get_segmenter(run_args.segmenter)
        compute_metrics = build_compute_metrics(tokenizer, segmenter, num_samples=len(eval_dataset), spans=eval_spans)
    trainer = TitleTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        # Per title token over the whole optimizer step, so that gradient accumulation equals a larger batch.
        compute_loss_func=partial(title_loss, label_smoothing=training_args.label_smoothing_factor),
        compute_metrics=compute_metrics,
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
    return trainer


def without_tied_copies(model, state_dict: dict) -> dict:
    """`state_dict` without the copies of tied weights (``lm_head`` and the look-ups tied to ``shared``).

    FSDP's full state dict and DeepSpeed's gather each name into a tensor of its own, so ``save_pretrained``, which
    finds tied weights by their shared storage, would write mT5's embedding four times (seen with both on CPU).
    ``from_pretrained`` ties them back.
    """
    import torch

    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {
        name: tensor
        for name, tensor in state_dict.items()
        if not (tied.get(name) in state_dict and torch.equal(tensor, state_dict[tied[name]]))
    }
