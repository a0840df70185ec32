"""What a run's titles look like next to their references: the end of ``make demo``.

    titlegen-showcase --articles A.jsonl --references R.jsonl --predictions P.jsonl [--rows 5]

Prints a table of the first articles (their opening, the model's title, the reference), then tw_rouge of
the model and of the lead baseline (each article's first characters) scored with the same segmenters, and
the title lengths of both beside the references'.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from titlegen import TitlegenError
from titlegen.data import normalize_text
from titlegen.metrics import f100, get_segmenter, tw_rouge

LEAD = 30  # characters of the lead baseline (about the course's mean title length)
OPENING = 36  # characters of each article shown in the table


def lead(articles: Sequence[str], n: int = LEAD) -> list[str]:
    """The lead baseline: the first `n` characters of each article (whitespace collapsed)."""

    return [normalize_text(a)[:n] for a in articles]


def lengths(titles: Sequence[str]) -> str:
    """Mean, median and range of the titles' lengths in characters."""
    n = [len(t) for t in titles]
    return f"mean {statistics.mean(n):.1f}, median {statistics.median(n):g}, {min(n)}-{max(n)}"


def showcase(articles: list[dict], references: list[dict], predictions: list[dict], rows: int, segmenters) -> str:
    """The report, as text. Records pair up by id; all three files must hold the same ids."""

    title_of = {r["id"]: r["title"] for r in references}
    predicted = {r["id"]: r["title"] for r in predictions}
    missing = [r["id"] for r in articles if r["id"] not in title_of or r["id"] not in predicted]
    if missing:
        raise TitlegenError(f"article id {missing[0]} has no reference or no predicted title")
    ids = [r["id"] for r in articles]
    texts = [r["maintext"] for r in articles]
    systems = {"model": [predicted[i] for i in ids], f"lead-{LEAD}": lead(texts)}
    refs = [title_of[i] for i in ids]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| article (opening) | model's title | reference |", "|---|---|---|"]
    for text, title, ref in list(zip(texts, systems["model"], refs, strict=True))[:rows]:
        lines.append(f"| {cell(normalize_text(text)[:OPENING])}… | {cell(title)} | {cell(ref)} |")
    lines += ["", f"tw_rouge f x 100 on all {len(ids)} articles (R-1 / R-2 / R-L):", ""]
    lines += [
        "| system | " + " | ".join(segmenters) + " | title length (characters) |",
        "|---" * (2 + len(segmenters)) + "|",
    ]
    scorers = {name: get_segmenter(name) for name in segmenters}
    for system, titles in systems.items():
        scores = []
        for scorer in scorers.values():
            s = f100(tw_rouge(titles, refs, scorer))
            scores.append(f"{s['rouge-1']:.1f} / {s['rouge-2']:.1f} / {s['rouge-l']:.1f}")
        lines.append(f"| {system} | " + " | ".join(scores) + f" | {lengths(titles)} |")
    lines.append("| reference | " + " | ".join("" for _ in segmenters) + f" | {lengths(refs)} |")
    used = ", ".join(f"{name}: {scorer.name}" for name, scorer in scorers.items())
    lines += ["", f"segmenters ({used})"]
    return "\n".join(lines)
