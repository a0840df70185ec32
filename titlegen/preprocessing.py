"""Turning records into model inputs: the article (with an optional prefix) and the title as labels."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Sequence

from titlegen import TitlegenError
from titlegen.data import normalize_text
from titlegen.spans import encode_articles, encode_title, uses_slots

logger = logging.getLogger(__name__)


def source_texts(articles: list[str], source_prefix: str = "") -> list[str]:
    """The model's input text for each article: whitespace normalised, prefix added."""
    return [source_prefix + normalize_text(a) for a in articles]


def source_inputs(tokenizer, articles: Sequence[str], source_prefix: str = "") -> tuple[list[str], list | None]:
    """What a model reads of each article, as text (`source_texts`), and, with a tokenizer that has copy slots
    (`titlegen.spans`), the article encoded with them and its spans, which its title's slots stand for (else None).

    Training (`make_tokenize_fn`) and every engine (`titlegen.generation.article_inputs`) read articles so.
    """
    spans = None
    if uses_slots(tokenizer):
        articles, spans = encode_articles(articles)
    return source_texts(list(articles), source_prefix), spans


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
    is ignored by the loss. With a tokenizer that has copy slots, articles and titles are encoded with them.
    """

    def tokenize(batch: dict) -> dict:
        texts, spans = source_inputs(tokenizer, batch[text_column], source_prefix)
        features = tokenizer(texts, max_length=max_source_length, truncation=True)
        if summary_column in batch:
            titles = [normalize_text(t) for t in batch[summary_column]]
            if spans is not None:
                titles = [encode_title(t, s) for t, s in zip(titles, spans, strict=True)]
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


def lead_pairs(
    features,
    share: float,
    *,
    max_target_length: int,
    eos_token_id: int,
    seed: int,
    clause_ends: Collection[int] = (),
    min_target_length: int = 1,
):
    """Extra training pairs whose target is the article's own opening: its first `max_target_length` tokens.

    A model trained from scratch on a few thousand titles does not learn to copy from the article; trained
    on these pairs as well, it learns within minutes, then uses it for titles (news titles reuse the
    article's words, mostly from its first sentences). Pretrained models can already copy and need none.

    Args:
        features: Tokenized training pairs (``input_ids`` and ``labels``), as from `to_features`.
        share: Lead pairs per training pair: 1.0 gives one for every article, 0.5 for a seeded half of them.
        max_target_length: Target tokens, the end-of-sequence token included.
        eos_token_id: The tokenizer's end-of-sequence id, which ends every target.
        seed: Chooses the articles when `share` < 1.
        clause_ends: Token ids that end a clause (e.g. of "，。！？"). When given, a target stops before the last
            of them within its length, so that the model learns to end a title where a clause ends; an opening
            with none there after `min_target_length` tokens keeps its full length.
        min_target_length: The shortest target (in tokens, end-of-sequence excluded) cut at a clause end.

    Returns:
        A ``datasets.Dataset`` with the same columns as `features`.
    """
    if not 0 <= share <= 1:
        raise TitlegenError(f"lead_pairs must be between 0 and 1, not {share}")
    rows = sorted(random.Random(seed).sample(range(len(features)), round(share * len(features))))

    def lead(example: dict) -> dict:
        article = example["input_ids"]
        if article and article[-1] == eos_token_id:
            article = article[:-1]
        target = article[: max_target_length - 1]
        ends = [i for i in range(min_target_length, len(target)) if target[i] in clause_ends]
        if ends and len(article) >= max_target_length:  # an article shorter than the limit ends by itself
            target = target[: ends[-1]]
        return {"labels": target + [eos_token_id]}

    return features.select(rows).map(lead, desc="lead pairs")


# Where a clause or sentence ends in Chinese news text, full-width and ASCII.
CLAUSE_ENDS = "，。！？；：,!?;:"
# A lead target cut at a clause end keeps at least this many tokens: shorter openings ("日前，") are no title.
MIN_CLAUSE_TARGET = 8


def clause_end_arguments(tokenizer) -> dict:
    """`lead_pairs` arguments that end targets at a clause: the ids of `CLAUSE_ENDS` in `tokenizer`'s vocabulary."""
    vocab = tokenizer.get_vocab()
    return {"clause_ends": {vocab[c] for c in CLAUSE_ENDS if c in vocab}, "min_target_length": MIN_CLAUSE_TARGET}


def run_tokenize_fn(tokenizer, data_args) -> Callable[[dict], dict]:
    """`make_tokenize_fn` with a run's `titlegen.arguments.DataArguments`: its columns, lengths and prefix."""
    return make_tokenize_fn(
        tokenizer,
        data_args.text_column,
        data_args.summary_column,
        data_args.max_source_length,
        data_args.max_target_length,
        data_args.source_prefix,
    )


def training_features(tokenizer, data_args, train_records: list[dict], eval_records: list[dict], seed: int):
    """The training and validation datasets of a training run: tokenized pairs, and the article-lead pairs that
    ``lead_pairs`` asks for added to the training ones.

    Returns:
        ``(train_dataset, eval_dataset)``.
    """
    from datasets import concatenate_datasets

    columns = (data_args.id_column, data_args.text_column, data_args.summary_column)
    tokenize = run_tokenize_fn(tokenizer, data_args)
    train_dataset = to_features(train_records, columns, tokenize, desc="tokenizing train")
    eval_dataset = to_features(eval_records, columns, tokenize, desc="tokenizing validation")
    if data_args.lead_pairs:
        leads = lead_pairs(
            train_dataset,
            data_args.lead_pairs,
            max_target_length=data_args.max_target_length,
            eos_token_id=tokenizer.eos_token_id,
            seed=seed,
            **(clause_end_arguments(tokenizer) if data_args.lead_pairs_clause_end else {}),
        )
        logger.info("training on %d pairs and %d article-lead pairs", len(train_dataset), len(leads))
        train_dataset = concatenate_datasets([train_dataset, leads])
    return train_dataset, eval_dataset
