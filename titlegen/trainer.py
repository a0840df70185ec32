"""transformers' Seq2SeqTrainer, without its side effect on the model's generation config, and decoding in
evaluation as `titlegen.generation.generate_titles` does, or with CTranslate2 (``generation_backend: ct2``)."""

from __future__ import annotations

import contextlib
import copy

from transformers import LogitsProcessorList, Seq2SeqTrainer

from titlegen.characters import byte_piece_ids
from titlegen.generation import is_article_tokens_only, title_guards
from titlegen.loops import is_no_loops


class TitleTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` that leaves the model's generation config as it was given, and keeps each title
    to its article's tokens when the config says ``article_tokens_only``, without loops when it says ``no_loops``, and
    its byte pieces in whole characters (as ``generate_titles`` does).

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
        from titlegen.engines.ct2 import training_engine

        with training_engine(self.model, self.processing_class) as self._engine:
            try:
                yield
            finally:
                self._engine = None

    def _save(self, output_dir=None, state_dict=None):
        if state_dict is not None:  # gathered by FSDP or DeepSpeed, a tensor per name
            state_dict = without_tied_copies(self.accelerator.unwrap_model(self.model), state_dict)
        return super()._save(output_dir, state_dict)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self._engine is not None and not prediction_loss_only:
            return self._ct2_prediction_step(model, inputs, ignore_keys, **gen_kwargs)
        generation_config = self.model.generation_config
        chosen = copy.deepcopy(generation_config)
        if self.args.predict_with_generate and not prediction_loss_only:
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
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
        finally:
            # In place: under LoRA, self.model is a PeftModel that reads the base model's config.
            vars(generation_config).update(vars(chosen))

    def _ct2_prediction_step(self, model, inputs, ignore_keys, **gen_kwargs):
        """The loss from the model, the titles from its CTranslate2 export (padded token ids, as generate's)."""
        import torch

        from titlegen.engines.ct2 import padded

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
