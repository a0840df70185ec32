"""Turning records into model inputs: the article (with an optional prefix) and the title as labels."""

from __future__ import annotations

from collections.abc import Callable

from titlegen.data import normalize_text


def source_texts(articles: list[str], source_prefix: str = "") -> list[str]:
    """The model's input text for each article: whitespace normalised, prefix added."""
    return [source_prefix + normalize_text(a) for a in articles]


def make_tokenize_fn(
    tokenizer,
    text_column: str,
    summary_column: str,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> Callable[[dict], dict]:
    """A batched ``datasets.map`` function giving ``input_ids``, ``attention_mask`` and ``labels``.

    Labels are left unpadded; ``DataCollatorForSeq2Seq`` pads them with -100 per batch so that padding
    is ignored by the loss.
    """

    def tokenize(batch: dict) -> dict:
        features = tokenizer(
            source_texts(batch[text_column], source_prefix), max_length=max_source_length, truncation=True
        )
        if summary_column in batch:
            titles = [normalize_text(t) for t in batch[summary_column]]
            features["labels"] = tokenizer(text_target=titles, max_length=max_target_length, truncation=True)[
                "input_ids"
            ]
        return features

    return tokenize
