"""Turning records into model inputs: the article (with an optional prefix) and the title as labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def to_features(records: list[dict], columns: Sequence[str], tokenize: Callable[[dict], dict], desc: str):
    """A ``datasets.Dataset`` of model features from records, keeping only the given columns' text.

    Extra fields of the records (dates, sources, ...) are left out, so their types never matter.
    """
    from datasets import Dataset

    table = Dataset.from_dict({c: [r[c] for r in records] for c in columns})
    return table.map(tokenize, batched=True, remove_columns=list(columns), desc=desc)
