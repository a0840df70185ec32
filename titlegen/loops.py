"""A guard against titles that loop: no unit of 1-4 tokens three times in a row, unless the article has it so.

A small model that loses its place while copying repeats what it just wrote (``提醒醒醒``, ``CESESES``).
transformers' ``no_repeat_ngram_size`` forbids any repeated n-gram: at 2 it stops every loop, but also every
title that names a word twice, and at 3 a character may still come three times in a row. `NoLoops` forbids
only the token that would start a third repetition of the unit just written twice, and lets it through when
the article holds that run itself (``2000``, ``哈哈哈``).
"""

from __future__ import annotations

# The saved generation config's key (titlegen's own, beside GenerationConfig's arguments).
NO_LOOPS = "no_loops"
LONGEST_UNIT = 4
TIMES = 3


def is_no_loops(config) -> bool:
    """Whether a generation config guards titles against loops."""
    return bool(getattr(config, NO_LOOPS, False))


def _holds(sequence: list[int], run: list[int]) -> bool:
    return any(sequence[i : i + len(run)] == run for i in range(len(sequence) - len(run) + 1))


class NoLoops:
    """A logits processor that rules out a third repetition in a row of the last 1-4 tokens.

    Args:
        input_ids: The batch's article token ids, one row per article.
        attention_mask: 1 for the articles' tokens, 0 for padding.
        prompt_length: Tokens at the start of each generated row that are not the title (the decoder start).
    """

    def __init__(self, input_ids, attention_mask, prompt_length: int = 1):
        self.articles = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        if scores.shape[0] % len(self.articles):
            raise ValueError(f"{scores.shape[0]} rows of scores for {len(self.articles)} articles")
        rows_per_article = scores.shape[0] // len(self.articles)
        for row, title in enumerate(input_ids[:, self.prompt_length :].tolist()):
            for size in range(1, LONGEST_UNIT + 1):
                if len(title) < 2 * size or title[-size:] != title[-2 * size : -size]:
                    continue
                unit = title[-size:]
                if not _holds(self.articles[row // rows_per_article], unit * TIMES):
                    scores[row, unit[0]] = float("-inf")
        return scores
