"""Comparing decoding settings: what each setting's titles score, the table of all settings, the best one."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import atomic_write_text
from titlegen.metrics import distinct_n, f100, repetition_rate, tw_rouge

COLUMNS = ("setting", "rouge-1", "rouge-2", "rouge-l", "length", "distinct-2", "repeated", "titles/s")
HIGHER_IS_BETTER = ("rouge-1", "rouge-2", "rouge-l", "distinct-2", "titles/s")
LEGEND = (
    "rouge-1/2/l: tw_rouge f×100; length: mean title length in characters; distinct-2: different character "
    "bigrams among all titles' bigrams (%); repeated: titles that repeat one of their own bigrams (%); "
    "titles/s: generation speed on this machine."
)


def score_titles(titles: Sequence[str], references: Sequence[str], segmenter, seconds: float) -> dict[str, float]:
    """One row of the comparison: ROUGE, length, diversity and speed of one setting's titles.

    Args:
        titles: Generated titles.
        references: Reference titles, in the same order.
        segmenter: A segmenter from `titlegen.metrics.get_segmenter`.
        seconds: How long generating the titles took.
    """
    return {
        **f100(tw_rouge(titles, references, segmenter)),
        "length": sum(len(t) for t in titles) / max(len(titles), 1),
        "distinct-2": 100 * distinct_n(titles, 2),
        "repeated": 100 * repetition_rate(titles, 2),
        "titles/s": len(titles) / seconds,
    }


def best_setting(rows: Sequence[dict], metric: str) -> dict:
    """The row with the highest `metric` (the first one on a tie)."""
    if metric not in HIGHER_IS_BETTER:
        raise TitlegenError(f"cannot pick the best setting by '{metric}'; choose one of {', '.join(HIGHER_IS_BETTER)}")
    return max(rows, key=lambda row: row[metric])


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_report(rows: Sequence[dict], metric: str, heading: str, notes: Sequence[str] = ()) -> str:
    """The comparison as a markdown document: heading, notes, table, the best setting and a legend."""
    best = best_setting(rows, metric)
    lines = [f"# {heading}", "", *(f"- {note}" for note in notes), ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
    for row in rows:
        cells = [_cell(row[c]) for c in COLUMNS]
        if row is best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Best by {metric}: **{best['setting']}** ({metric} {best[metric]:.2f}).", "", LEGEND, ""]
    return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Writes the comparison table as CSV (full precision), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
