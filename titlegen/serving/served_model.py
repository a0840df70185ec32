"""What the server titles with: a loaded engine (`titlegen.engines`) and the preprocessing its model was trained with.

The server calls only `ServedModel.generate_titles` and `ServedModel.metadata`, whichever backend runs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from titlegen.modeling import count_parameters
from titlegen.strategies import GUARDS_OFF, NEUTRAL


class ServedModel:
    """An engine titling articles exactly as titlegen-predict does with the same settings.

    Args:
        name: The model folder or hub id, as given.
        engine: A loaded `titlegen.engines.Engine` (transformers or CTranslate2).
        max_source_length: Articles are truncated to this many tokens.
        source_prefix: Text put before each article.
    """

    def __init__(self, name: str, engine, *, max_source_length: int, source_prefix: str):
        self.name = name
        self.engine = engine
        self.max_source_length = max_source_length
        self.source_prefix = source_prefix

    def generate_titles(self, articles: Sequence[str], *, batch_size: int, seed: int, **decoding) -> list[str]:
        """One title per article, in the order of `articles`, as `titlegen.generation.generate_titles`."""
        return self.engine.generate_titles(
            articles,
            batch_size=batch_size,
            max_source_length=self.max_source_length,
            source_prefix=self.source_prefix,
            seed=seed,
            progress=False,
            **decoding,
        )

    def check_decoding(self, seed: int, **decoding) -> None:
        """Raises `TitlegenError` for decoding settings the engine cannot honour (`titlegen.engines.Engine`)."""
        self.engine.check_decoding(seed=seed, **decoding)

    def metadata(self) -> dict[str, Any]:
        """What the model is: name, backend, parameters, vocabulary, preprocessing, decoding defaults."""

        config = self.engine.generation_config
        # transformers' own default stands for a setting the config leaves unset.
        defaults = {**NEUTRAL, **GUARDS_OFF}
        decoding = {name: _first_set(getattr(config, name, None), default) for name, default in defaults.items()}
        decoding["max_new_tokens"] = config.max_new_tokens
        model = getattr(self.engine, "model", None)  # a CTranslate2 engine holds no torch model to count
        return {
            "name": self.name,
            "backend": self.engine.backend,
            "model_type": model.config.model_type if model is not None else self.engine.model_type,
            "parameters": count_parameters(model)[1] if model is not None else None,
            "vocabulary": len(self.engine.tokenizer),
            "max_source_length": self.max_source_length,
            "source_prefix": self.source_prefix,
            "bf16": getattr(self.engine, "bf16", False),
            "decoding": decoding,
        }


def _first_set(value, default):
    return default if value is None else value
