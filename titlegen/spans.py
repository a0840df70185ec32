"""Latin words and numbers as copy slots: each is one token that the model copies whole.

A small model trained from scratch on LCSTS copies Chinese characters well, but it has seen few Latin letters
and spaces, and miscopies words and numbers one character at a time (``ZenBoook``, ``CESESES``). With copy
slots, each distinct run of ASCII letters and digits in an article (``Windows``, ``2021``, ``15.6``) becomes a
slot token, ``<w0>`` for the first run, ``<w1>`` for the next new one and so on, in the article and in its
title alike; a generated title's slots are then replaced by the article's runs. A title copies a word or
number exactly or not at all, and every slot token is trained by every article that has a number.

Encoding is lossless for text as `normalize_text` leaves it, but for the spaces next to a run: one space
between two runs becomes nothing between their slots (and comes back when they are decoded), and a space
between a run and other text is dropped. Full-width letters and digits (``ＡＢＣ１２３``) count as the ASCII
ones they stand for. In an article (not in a title), a space between two other characters, which in the
course's articles is a line break, becomes ``。``: LCSTS has none, and the model read them as noise
(bench/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from titlegen.data import normalize_text

SLOTS = 32
SLOT_TOKENS = [f"<w{i}>" for i in range(SLOTS)]
# A run: ASCII letters and digits, with the decimal point or thousands separators of a number inside it.
_RUN = re.compile(r"[A-Za-z0-9]+(?:[.,][0-9]+)*")
_SLOT = re.compile(r"<w(\d+)>")
_FULL_WIDTH = str.maketrans(
    {chr(c): chr(c - 0xFEE0) for c in (*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B))}
)
# Spaces next to a slot, which encoding drops.
_SPACE_AROUND_SLOT = re.compile(r" ?(<w\d+>) ?")
# A space between two characters that are not ASCII: a line break, in an article whose whitespace was normalised.
_LINE_BREAK = re.compile(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])")


def uses_slots(tokenizer) -> bool:
    """Whether `tokenizer` was trained with copy slots (its vocabulary has them)."""
    return SLOT_TOKENS[0] in tokenizer.get_vocab()


def encode_article(text: str) -> tuple[str, list[str]]:
    """`text` with its runs replaced by slots, and the runs by slot number (the first `SLOTS` distinct ones)."""
    spans: list[str] = []

    def slot(match: re.Match) -> str:
        run = match.group(0)
        if run not in spans:
            if len(spans) == SLOTS:
                return run
            spans.append(run)
        return SLOT_TOKENS[spans.index(run)]

    text = _SPACE_AROUND_SLOT.sub(r"\1", _RUN.sub(slot, text.translate(_FULL_WIDTH)))
    return _LINE_BREAK.sub("。", text), spans


def encode_title(title: str, spans: Sequence[str]) -> str:
    """`title` with each run that is one of its article's `spans` replaced by that span's slot."""

    def slot(match: re.Match) -> str:
        run = match.group(0)
        return SLOT_TOKENS[spans.index(run)] if run in spans else run

    return _SPACE_AROUND_SLOT.sub(r"\1", _RUN.sub(slot, title.translate(_FULL_WIDTH)))


def encode_articles(articles: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """`encode_article` of each article, its whitespace normalised first (`normalize_text`): the encoded texts, and
    the spans of each."""
    pairs = [encode_article(normalize_text(a)) for a in articles]
    return [text for text, _ in pairs], [spans for _, spans in pairs]


def decode_title(text: str, spans: Sequence[str]) -> str:
    """A generated title with its slots replaced by its article's `spans`; a slot the article lacks is dropped.

    Two slots next to each other are two words: a space goes between them.
    """
    text = _SLOT.sub(lambda m: m.group(0) if int(m.group(1)) < len(spans) else "", text)
    text = re.sub(r"(<w\d+>)(?=<w\d+>)", r"\1 ", text)
    return _SLOT.sub(lambda m: spans[int(m.group(1))], text).strip()
