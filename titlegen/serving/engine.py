"""What the server generates with: one object that titles a list of articles.

The server calls only `TitleEngine.generate_titles` and `TitleEngine.metadata`, so any backend with these two
methods (e.g. a CTranslate2 model) can replace `TransformersEngine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from titlegen.strategies import NEUTRAL


class TitleEngine(Protocol):
    """A loaded model that writes titles."""

    def generate_titles(self, articles: Sequence[str], *, batch_size: int, seed: int, **decoding) -> list[str]:
        """One title per article, in the order of `articles`, as `titlegen.generation.generate_titles`."""

    def metadata(self) -> dict[str, Any]:
        """What the model is: name, parameters, vocabulary, preprocessing, decoding defaults."""


class TransformersEngine:
    """A transformers model and its tokenizer, titling articles exactly as titlegen-predict does.

    Args:
        name: The model folder or hub id, as given.
        model: The seq2seq model, on the device it generates on.
        tokenizer: Its tokenizer.
        max_source_length: Articles are truncated to this many tokens.
        source_prefix: Text put before each article.
        bf16: Generate under bfloat16 autocast.
    """

    def __init__(self, name: str, model, tokenizer, *, max_source_length: int, source_prefix: str, bf16: bool):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_source_length = max_source_length
        self.source_prefix = source_prefix
        self.bf16 = bf16

    @classmethod
    def load(cls, name_or_path: str, **settings) -> TransformersEngine:
        """Loads any model folder titlegen-predict loads (full, vocabulary-pruned, LoRA adapter), on the GPU if
        there is one; `settings` are the keyword arguments of the constructor."""
        import torch

        from titlegen.modeling import configure_cpu, load_model, load_tokenizer

        if not torch.cuda.is_available():
            configure_cpu()
        tokenizer = load_tokenizer(name_or_path)
        model = load_model(name_or_path)
        if torch.cuda.is_available():
            model = model.cuda()
        return cls(name_or_path, model.eval(), tokenizer, **settings)

    def generate_titles(self, articles: Sequence[str], *, batch_size: int, seed: int, **decoding) -> list[str]:
        from titlegen.generation import generate_titles

        return generate_titles(
            self.model,
            self.tokenizer,
            articles,
            batch_size=batch_size,
            max_source_length=self.max_source_length,
            source_prefix=self.source_prefix,
            bf16=self.bf16,
            seed=seed,
            progress=False,
            **decoding,
        )

    def metadata(self) -> dict[str, Any]:
        from titlegen.generation import ARTICLE_TOKENS_ONLY, is_article_tokens_only
        from titlegen.modeling import count_parameters

        config = self.model.generation_config
        # transformers' own default stands for a setting the config leaves unset.
        decoding = {name: _first_set(getattr(config, name, None), default) for name, default in NEUTRAL.items()}
        decoding[ARTICLE_TOKENS_ONLY] = is_article_tokens_only(config)
        decoding["max_new_tokens"] = config.max_new_tokens
        return {
            "name": self.name,
            "model_type": self.model.config.model_type,
            "parameters": count_parameters(self.model)[1],
            "vocabulary": len(self.tokenizer),
            "max_source_length": self.max_source_length,
            "source_prefix": self.source_prefix,
            "bf16": self.bf16,
            "decoding": decoding,
        }


def _first_set(value, default):
    return default if value is None else value
