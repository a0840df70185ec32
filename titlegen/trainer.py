"""transformers' Seq2SeqTrainer, without its side effect on the model's generation config."""

from __future__ import annotations

import copy

from transformers import Seq2SeqTrainer


class TitleTrainer(Seq2SeqTrainer):
    """A ``Seq2SeqTrainer`` that leaves the model's generation config as it was given.

    ``Seq2SeqTrainer.prediction_step`` fills the model's generation config with generate's defaults in
    place (transformers 5.23), so after the first evaluation it carries ``max_length=20`` beside
    ``max_new_tokens``: every later ``generate`` warns, and checkpoints are saved with that config.
    """

    def prediction_step(self, *args, **kwargs):
        generation_config = self.model.generation_config
        chosen = copy.deepcopy(generation_config)
        try:
            return super().prediction_step(*args, **kwargs)
        finally:
            # In place: under LoRA, self.model is a PeftModel that reads the base model's config.
            vars(generation_config).update(vars(chosen))
