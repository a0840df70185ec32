"""Smoke runs of titlegen-compare, titlegen-predict --strategy and titlegen-plot on a tiny model."""

import csv
import re
import subprocess
import sys

import pytest

from titlegen.cli import plot_main
from titlegen.recipes.compare import compare
from titlegen.recipes.compare import main as compare_main
from titlegen.recipes.predict import main as predict_main
from titlegen.recipes.predict import predict
from titlegen.strategies import DEFAULT_GRID, load_grid

from .conftest import ARTICLES, ROOT, read_lines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_compare_writes_table_chart_and_titles_of_every_setting(trained_dir, tmp_path):
    out = tmp_path / "compare"
    rows = compare(["--model", str(trained_dir), "--input", str(ARTICLES), "--output_dir", str(out), "--limit", "4"])
    assert len(rows) == len(DEFAULT_GRID)
    assert load_grid(out / "grid.yaml") == list(DEFAULT_GRID)
    predictions = sorted((out / "predictions").glob("*.jsonl"))
    assert len(predictions) == len(DEFAULT_GRID)
    ids = [r["id"] for r in read_lines(ARTICLES)][:4]
    assert all([p["id"] for p in read_lines(path)] == ids for path in predictions)
    with open(out / "comparison.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["setting"] for r in table] == [r["setting"] for r in rows]
    assert all(0 <= float(r["rouge-l"]) <= 100 and float(r["titles/s"]) > 0 for r in table)
    report = (out / "comparison.md").read_text(encoding="utf-8")
    assert "Best by rouge-l: **" in report
    assert re.search(r"^\| (\*\*)?top_p=0\.9(\*\*)? \|", report, re.MULTILINE), "a row per setting, the best in bold"
    assert (out / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_compare_with_a_grid_file_gives_the_titles_of_a_full_run(trained_dir, tmp_path):
    """Sampling is seeded per article: --limit and other batches do not change an article's title."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {strategy: top_p, top_p: 0.9}\n- {strategy: beam, num_beams: 2}\n")
    argv = ["--model", str(trained_dir), "--input", str(ARTICLES), "--grid", str(grid), "--metric", "rouge-1"]
    compare([*argv, "--output_dir", str(tmp_path / "all"), "--batch_size", "5"])
    compare([*argv, "--output_dir", str(tmp_path / "some"), "--limit", "3"])
    names = sorted(p.name for p in (tmp_path / "all" / "predictions").iterdir())
    assert names == ["beam_num_beams=2.jsonl", "top_p=0.9.jsonl"]
    for name in names:
        full_run = read_lines(tmp_path / "all" / "predictions" / name)
        assert read_lines(tmp_path / "some" / "predictions" / name) == full_run[:3], name
    assert "Best by rouge-1" in (tmp_path / "all" / "comparison.md").read_text(encoding="utf-8")


def test_compare_rejects_an_unknown_metric_before_generating(trained_dir, tmp_path, capsys):
    argv = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output_dir", str(tmp_path), "--metric", "bleu"]
    assert compare_main(argv) == 2
    assert "cannot pick the best setting by 'bleu'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_predict_with_a_sampling_strategy_is_reproducible(trained_dir, tmp_path):
    def titles(*flags):
        argv = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl"), *flags]
        return [p["title"] for p in predict(argv)]

    sampled = titles("--strategy", "temperature", "--temperature", "1.5")
    assert titles("--strategy", "temperature", "--temperature", "1.5", "--batch_size", "1") == sampled
    assert titles("--strategy", "temperature", "--temperature", "1.5", "--seed", "1") != sampled
    # The tiny model's own config is greedy with the loop guard, which a preset keeps unless it is turned off.
    assert titles("--strategy", "greedy") == titles()
    assert titles("--strategy", "greedy", "--no_loops", "false") != titles(), "the guard changes looping titles"


def test_predict_reports_a_bad_strategy(trained_dir, tmp_path, capsys):
    argv = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")]
    assert predict_main([*argv, "--strategy", "nucleus"]) == 2
    assert "unknown strategy 'nucleus'" in capsys.readouterr().err
    assert predict_main([*argv, "--strategy", "beam", "--top_p", "0.9"]) == 2
    assert "`top_p`: `do_sample` is not set to `True`" in capsys.readouterr().err


def test_training_plots_its_learning_curves_and_titlegen_plot_redraws_them(trained_dir, tmp_path, capsys):
    assert (trained_dir / "learning_curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plot_main([str(trained_dir), "-o", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plot_main([str(tmp_path)]) == 2
    assert "trainer_state.json: no such file" in capsys.readouterr().err


def test_compare_help_needs_no_heavy_imports():
    code = "import sys, titlegen.recipes.compare\nassert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
