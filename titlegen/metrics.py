"""tw_rouge: the course's ROUGE for Chinese titles, with a pluggable word segmenter.

The course's metric segments both sides into words with ckiptagger, joins the words with single spaces
and scores them with the ``rouge`` package (``Rouge().get_scores(..., avg=True)``), reporting f, p and r
of rouge-1, rouge-2 and rouge-l. This module computes exactly that, with three segmenters:

* ``ckip``: ckiptagger's word segmenter (the course's; needs its model data, see `CkipSegmenter`),
* ``jieba``: jieba's default dictionary (fast, no model data),
* ``char``: one token per character, with runs of ASCII letters and digits kept whole.

Scores from different segmenters are not comparable, so every result names its segmenter.

``rouge_score`` (and ``evaluate.load("rouge")``) are not used: their tokenizer drops every non-ASCII
character, so they score Chinese as 0.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.generation import decode_titles

SEGMENTERS = ("ckip", "jieba", "char", "auto")
ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
_CHAR_TOKEN = re.compile(r"[A-Za-z0-9]+|\S")


class CharSegmenter:
    """One token per character; runs of ASCII letters and digits stay one token ("Pro", "2021")."""

    name = "char"

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        return [_CHAR_TOKEN.findall(t) for t in texts]


class JiebaSegmenter:
    """jieba's accurate mode with its default dictionary."""

    name = "jieba"

    def __init__(self):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self._tokenizer = jieba.Tokenizer()

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        return [[w for w in self._tokenizer.lcut(t) if w.strip()] for t in texts]


def ckip_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where ckiptagger's model data is looked for.

    In order: `data_dir`, ``$TITLEGEN_CKIP_DATA``, ``$XDG_CACHE_HOME/ckiptagger/data``,
    ``~/.cache/ckiptagger/data``.
    """
    if data_dir:
        return Path(data_dir)
    if os.environ.get("TITLEGEN_CKIP_DATA"):
        return Path(os.environ["TITLEGEN_CKIP_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ckiptagger" / "data"


def ckip_available(data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ckiptagger's word-segmentation model data is present (it is never downloaded here)."""
    return (ckip_data_dir(data_dir) / "model_ws").is_dir()


class CkipSegmenter:
    """ckiptagger's word segmenter, the one the course's tw_rouge uses.

    Args:
        data_dir: ckiptagger's model data folder (see `ckip_data_dir`). Get it once with
            ``python -c "import ckiptagger; ckiptagger.data_utils.download_data_gdown('DIR')"``.
        ws: A ready segmenter with ckiptagger's ``WS`` interface (a list of sentences in, a list of
            word lists out). When given, ckiptagger is not imported.
    """

    name = "ckip"

    def __init__(self, data_dir: str | os.PathLike | None = None, ws: Callable | None = None):
        if ws is None:
            path = ckip_data_dir(data_dir)
            if not ckip_available(path):
                raise TitlegenError(
                    f"ckiptagger's model data is not in {path}; download it once (see `titlegen-eval --help`), "
                    "set TITLEGEN_CKIP_DATA, or choose --segmenter jieba or char"
                )
            try:
                from ckiptagger import WS
            except ImportError as err:
                raise TitlegenError("the ckip segmenter needs `pip install -e .[ckip]`") from err
            ws = WS(str(path))
        self._ws = ws

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        return [list(words) for words in self._ws(list(texts))]


def get_segmenter(name: str = "auto", ckip_data: str | None = None):
    """Returns a segmenter by name.

    ``auto`` is ckip when its model data is present; otherwise it warns loudly and uses jieba.
    """
    if name == "auto":
        if ckip_available(ckip_data):
            name = "ckip"
        else:
            warnings.warn(
                f"ckiptagger's model data was not found in {ckip_data_dir(ckip_data)}: scoring with the jieba "
                "segmenter instead. These scores are not the course's official tw_rouge.",
                stacklevel=2,
            )
            name = "jieba"
    if name == "char":
        return CharSegmenter()
    if name == "jieba":
        return JiebaSegmenter()
    if name == "ckip":
        return CkipSegmenter(ckip_data)
    raise TitlegenError(f"unknown segmenter '{name}'; choose one of {', '.join(SEGMENTERS)}")


def _rouge_sees_nothing(text: str) -> bool:
    # The rouge package splits text into sentences at '.' and raises on a text with none left.
    return not any(text.split("."))


def rouge_per_pair(predictions: Sequence[str], references: Sequence[str], segmenter) -> list[dict]:
    """tw_rouge of each (prediction, reference) pair.

    Empty predictions (or ones with no tokens left after segmentation) score 0; the course's script
    crashes on them instead.

    Returns:
        One ``{"rouge-1": {"f", "p", "r"}, "rouge-2": ..., "rouge-l": ...}`` per pair.
    """
    from rouge import Rouge

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    preds = [" ".join(words) for words in segmenter([p.strip() for p in predictions])]
    refs = [" ".join(words) for words in segmenter([r.strip() for r in references])]
    zero = {key: {"f": 0.0, "p": 0.0, "r": 0.0} for key in ROUGE_KEYS}
    scored = [i for i in range(len(preds)) if not (_rouge_sees_nothing(preds[i]) or _rouge_sees_nothing(refs[i]))]
    results = [zero] * len(preds)
    if scored:
        pair_scores = Rouge().get_scores([preds[i] for i in scored], [refs[i] for i in scored])
        for i, score in zip(scored, pair_scores, strict=True):
            results[i] = score
    return results


def tw_rouge(predictions: Sequence[str], references: Sequence[str], segmenter) -> dict:
    """The course's tw_rouge, averaged over all pairs (empty predictions count as 0).

    Args:
        predictions: Generated titles.
        references: Reference titles, in the same order.
        segmenter: A segmenter from `get_segmenter`.

    Returns:
        ``{"rouge-1": {"f", "p", "r"}, "rouge-2": ..., "rouge-l": ..., "segmenter": name}``, the
        layout of the course's eval.py, with fractions in [0, 1].
    """
    pairs = rouge_per_pair(predictions, references, segmenter)
    n = max(len(pairs), 1)
    averaged = {key: {stat: sum(p[key][stat] for p in pairs) / n for stat in ("f", "p", "r")} for key in ROUGE_KEYS}
    return {**averaged, "segmenter": segmenter.name}


def f100(scores: dict) -> dict[str, float]:
    """The headline numbers: f×100 of rouge-1/2/l."""
    return {key: 100 * scores[key]["f"] for key in ROUGE_KEYS}


def build_compute_metrics(
    tokenizer, segmenter, num_samples: int | None = None, spans: Sequence[Sequence[str]] | None = None
) -> Callable:
    """A ``compute_metrics`` for ``Seq2SeqTrainer(predict_with_generate=True)``.

    Reports rouge-1/2/l as f×100 and the mean generated length in tokens.

    Args:
        tokenizer: Decodes the generated and reference token ids.
        segmenter: Splits titles into words for ROUGE.
        num_samples: The size of the evaluation set. Under several processes, Seq2SeqTrainer gathers the
            predictions with ``accelerator.gather``, which keeps the repeated samples that even out the
            processes' last batches after the real ones; only the first `num_samples` rows are scored.
        spans: Each evaluation article's copy-slot spans, for a tokenizer that has copy slots.
    """
    import numpy as np

    def compute_metrics(eval_pred) -> dict[str, float]:
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        preds, labels = preds[:num_samples], eval_pred.label_ids[:num_samples]
        titles, references = decode_titles(tokenizer, preds, spans), decode_titles(tokenizer, labels, spans)
        metrics = f100(tw_rouge(titles, references, segmenter))
        generated = (preds >= 0) & (preds != tokenizer.pad_token_id)
        metrics["gen_len"] = float(np.mean(np.count_nonzero(generated, axis=1)))
        return metrics

    return compute_metrics


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(titles: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): the share of all titles' n-grams that are different, in [0, 1].

    Tokens are characters (runs of ASCII letters and digits count as one). Low values mean the titles
    repeat each other, as a model that writes one title for every article does.
    """
    grams = [g for tokens in CharSegmenter()(titles) for g in _ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(titles: Sequence[str], n: int = 2) -> float:
    """The share of titles that repeat one of their own n-grams of characters (e.g. 台灣台灣), in [0, 1]."""
    grams = [_ngrams(tokens, n) for tokens in CharSegmenter()(titles)]
    return sum(len(set(g)) < len(g) for g in grams) / len(grams) if grams else 0.0
