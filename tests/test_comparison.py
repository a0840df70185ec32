import csv
import json

import pytest

from titlegen import TitlegenError
from titlegen.comparison import COLUMNS, best_setting, markdown_report, score_titles, write_csv
from titlegen.metrics import CharSegmenter, distinct_n, repetition_rate
from titlegen.plotting import plot_comparison, plot_learning_curves, read_log_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_distinct_n_counts_different_bigrams_across_titles():
    assert distinct_n(["台灣大學", "台灣大學"], 2) == 0.5  # 3 different of 6 bigrams
    assert distinct_n(["台灣大學", "清華大學"], 2) == 5 / 6
    assert distinct_n(["台", ""], 2) == 0.0, "no bigrams at all"
    assert distinct_n(["iPhone 15 上市"], 1) == 1.0, "ASCII runs are single tokens"


def test_repetition_rate_counts_titles_that_repeat_themselves():
    assert repetition_rate(["台灣台灣", "台灣大學", "好好好"], 2) == pytest.approx(2 / 3)
    assert repetition_rate([], 2) == 0.0


def rows():
    return [
        {"setting": "greedy", "rouge-1": 20.0, "rouge-2": 5.0, "rouge-l": 18.0, "length": 12.0,
         "distinct-2": 60.0, "repeated": 10.0, "titles/s": 30.0},
        {"setting": "beam num_beams=4", "rouge-1": 22.5, "rouge-2": 6.25, "rouge-l": 21.0, "length": 14.0,
         "distinct-2": 55.0, "repeated": 5.0, "titles/s": 9.0},
    ]  # fmt: skip


def test_score_titles_gives_one_table_row():
    row = score_titles(["台灣大學", "台灣台灣"], ["台灣大學", "清華大學"], CharSegmenter(), seconds=0.5)
    assert set(row) == set(COLUMNS) - {"setting"}
    assert row["rouge-1"] == pytest.approx(50, abs=1e-4), "one identical title, one with no character in common"
    assert row["length"] == 4.0 and row["titles/s"] == 4.0 and row["repeated"] == 50.0


def test_best_setting_and_report():
    best = best_setting(rows(), "rouge-l")
    assert best["setting"] == "beam num_beams=4"
    assert best_setting(rows(), "titles/s")["setting"] == "greedy"
    with pytest.raises(TitlegenError, match="cannot pick the best setting by 'repeated'"):
        best_setting(rows(), "repeated")
    report = markdown_report(rows(), "rouge-l", heading="Strategies", notes=["100 articles"])
    assert report.startswith("# Strategies\n\n- 100 articles\n")
    assert "| **beam num_beams=4** | 22.50 | 6.25 | 21.00 | 14.00 | 55.00 | 5.00 | 9.00 |" in report
    assert "Best by rouge-l: **beam num_beams=4** (rouge-l 21.00)." in report


def test_csv_has_every_column(tmp_path):
    write_csv(tmp_path / "table.csv", rows())
    with open(tmp_path / "table.csv", newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(COLUMNS)
    assert [r["setting"] for r in read] == ["greedy", "beam num_beams=4"] and read[1]["rouge-2"] == "6.25"


def test_comparison_chart_is_a_png(tmp_path):
    plot_comparison(rows(), tmp_path / "chart.png", best="greedy", title="test")
    assert (tmp_path / "chart.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_learning_curves_from_a_trainer_state(tmp_path):
    history = [{"loss": 9.0 - step / 10, "step": step, "epoch": step / 10} for step in range(1, 11)]
    history += [{"eval_loss": 8.0, "eval_rouge-1": 10.0, "eval_rouge-2": 2.0, "eval_rouge-l": 9.0, "step": 10}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert read_log_history(tmp_path) == history
    plot_learning_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    plot_learning_curves([], tmp_path / "empty.png")  # a run that logged nothing still gets its (empty) chart


def test_a_folder_without_trainer_state_is_reported(tmp_path):
    with pytest.raises(TitlegenError, match="trainer_state.json: no such file"):
        read_log_history(tmp_path)
    (tmp_path / "trainer_state.json").write_text("{")
    with pytest.raises(TitlegenError, match="trainer_state.json: not valid JSON"):
        read_log_history(tmp_path)
