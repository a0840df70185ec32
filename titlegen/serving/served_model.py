"""What the server titles with: a loaded engine (`titlegen.engines`) and the preprocessing its model was trained with.

The server calls only `ServedModel.generate_titles` and `ServedModel.metadata`, whichever backend runs the model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from titlegen.modeling import count_parameters
from titlegen.strategies import GUARDS_OFF, NEUTRAL


class DeadlinePassed(Exception):
    """A generate call stopped at its deadline: no request waits for its titles any more."""


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

    def generate_titles(
        self, articles: Sequence[str], *, batch_size: int, seed: int, deadline: float | None = None, **decoding
    ) -> list[str]:
        """One title per article, in the order of `articles`, as `titlegen.generation.generate_titles`.

        Args:
            deadline: A `time.monotonic()` at which to stop: transformers' generate stops within a decoding step
                of it (its ``max_time``), and no batch starts after it. CTranslate2 has no such bound, so with
                it a batch that has started runs to its end.

        Raises:
            DeadlinePassed: when the deadline came before every title was written.
        """
        options = {}
        if deadline is not None:
            if self.engine.backend == "transformers":
                options["max_time"] = max(deadline - time.monotonic(), 0.0)

            def stop_at_deadline(indices, titles) -> None:
                if time.monotonic() >= deadline:  # a title cut short by max_time is never answered
                    raise DeadlinePassed(f"{len(articles)} articles")

            options["on_batch"] = stop_at_deadline
        return self.engine.generate_titles(
            articles,
            batch_size=batch_size,
            max_source_length=self.max_source_length,
            source_prefix=self.source_prefix,
            seed=seed,
            progress=False,
            **decoding,
            **options,
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
