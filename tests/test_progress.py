"""Prediction keeps its progress: killed midway and rerun, it generates only the missing titles."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from transformers import MT5ForConditionalGeneration

from titlegen import TitlegenError
from titlegen.progress import PredictionProgress, run_fingerprint
from titlegen.recipes.predict import predict

from .conftest import ARTICLES, ROOT, read_lines, subprocess_env


def load(out, fingerprint: str) -> dict[str, str]:
    with PredictionProgress(out, fingerprint) as progress:
        return progress.load()


def test_side_file_round_trip_drops_a_torn_line(tmp_path):
    out = tmp_path / "out.jsonl"
    with PredictionProgress(out, "run-1") as progress:
        assert progress.load() == {}
        progress.append([{"title": "標題一", "id": "1"}, {"title": "標題二", "id": "2"}])
    with open(progress.path, "ab") as f:
        f.write('{"title": "標題三", "i'.encode())  # killed while writing

    with PredictionProgress(out, "run-1") as again:
        assert again.load() == {"1": "標題一", "2": "標題二"}
        again.append([{"title": "標題三", "id": "3"}])
    assert load(out, "run-1") == {"1": "標題一", "2": "標題二", "3": "標題三"}

    with PredictionProgress(out, "run-1") as again:
        again.finish(out, [{"title": "t", "id": "1"}])
    assert read_lines(out) == [{"title": "t", "id": "1"}]
    assert not progress.path.exists()


def test_titles_of_a_run_with_other_settings_are_not_reused(tmp_path, caplog):
    out = tmp_path / "out.jsonl"
    with PredictionProgress(out, "run-1") as first:
        first.load()
        first.append([{"title": "舊", "id": "1"}])
    assert load(out, "run-2") == {}
    assert "from a run with other settings or inputs: starting over" in caplog.text
    assert load(out, "run-1") == {}, "the other run's titles are gone"


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(tmp_path):
    out = tmp_path / "out.jsonl"
    with PredictionProgress(out, "run-1") as first:
        first.load()
        first.append([{"title": "一", "id": "1"}])
        with pytest.raises(TitlegenError, match=r"out\.jsonl\.progress: another titlegen-predict run is writing"):
            PredictionProgress(out, "run-2").__enter__()
        first.append([{"title": "二", "id": "2"}])
    assert load(out, "run-1") == {"1": "一", "2": "二"}, "the first run's titles are whole"


def test_side_file_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with PredictionProgress(tmp_path / "out.jsonl", "run-1") as progress:
            progress.load()
            progress.finish(tmp_path / "out.jsonl", [{"title": "t", "id": "1"}])
            side_mode = progress.path.stat().st_mode & 0o777 if progress.path.exists() else None
    finally:
        os.umask(old)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o640
    assert side_mode is None


def test_fingerprint_follows_settings_and_files(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("a")
    first = run_fingerprint({"num_beams": 1}, [data])
    assert run_fingerprint({"num_beams": 1}, [data]) == first
    assert run_fingerprint({"num_beams": 4}, [data]) != first
    data.write_text("ab")
    assert run_fingerprint({"num_beams": 1}, [data]) != first


def interrupt_after_first_batch(monkeypatch):
    """Makes the run stop with Ctrl-C once its first batch is saved."""
    append = PredictionProgress.append

    def append_then_interrupt(self, records):
        append(self, records)
        raise KeyboardInterrupt

    monkeypatch.setattr(PredictionProgress, "append", append_then_interrupt)


def count_generated(monkeypatch) -> list[int]:
    """Records the batch size of every generate call."""
    sizes = []
    generate = MT5ForConditionalGeneration.generate

    def counting_generate(self, input_ids=None, **kwargs):
        sizes.append(len(input_ids))
        return generate(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(MT5ForConditionalGeneration, "generate", counting_generate)
    return sizes


# Runs the predict recipe and kills it with SIGKILL right after its second batch reached the side file.
KILLED_AFTER_TWO_BATCHES = """
import os, signal, sys
from titlegen.progress import PredictionProgress

append = PredictionProgress.append
batches = 0

def append_then_die(self, records):
    global batches
    append(self, records)
    batches += 1
    if batches == 2:
        os.kill(os.getpid(), signal.SIGKILL)

PredictionProgress.append = append_then_die
from titlegen.recipes.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_prediction_resumes_with_only_the_missing_titles(trained_dir, tmp_path, monkeypatch):
    # Sampling, so that equal files show that every batch is seeded the same way after a restart.
    flags = ["--batch_size", "2", "--do_sample", "true", "--top_k", "20", "--seed", "7"]
    expected_out, out = tmp_path / "expected.jsonl", tmp_path / "out.jsonl"
    predict(["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(expected_out), *flags])
    args = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(out), *flags]

    result = subprocess.run([sys.executable, "-c", KILLED_AFTER_TWO_BATCHES, *args], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not out.exists(), "the output appears only when complete"
    side = out.with_name(out.name + ".progress")
    assert len(side.read_text(encoding="utf-8").splitlines()) == 1 + 4, "a header and two batches of two"

    generated = count_generated(monkeypatch)
    predict(args)
    assert sum(generated) == len(read_lines(ARTICLES)) - 4
    assert out.read_bytes() == expected_out.read_bytes()
    assert not side.exists()


def test_a_finished_run_leaves_no_side_file(trained_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    predict(["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


@pytest.mark.parametrize("rerun_flags, reused", [([], 4), (["--num_beams", "2"], 0)], ids=["same", "other"])
def test_titles_are_reused_only_by_a_run_with_the_same_flags(trained_dir, tmp_path, monkeypatch, rerun_flags, reused):
    args = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "out.jsonl"),
            "--batch_size", "4"]  # fmt: skip
    with monkeypatch.context() as patch:
        interrupt_after_first_batch(patch)
        with pytest.raises(KeyboardInterrupt):
            predict(args)
    sizes = count_generated(monkeypatch)
    predict(args + rerun_flags)
    assert sum(sizes) == len(read_lines(ARTICLES)) - reused


@pytest.mark.slow
def test_resume_works_with_the_output_inside_the_model_folder(trained_dir, tmp_path, monkeypatch):
    # make demo writes its predictions into the model's folder: the side file must not change the model's fingerprint.
    model = tmp_path / "model"
    shutil.copytree(trained_dir, model)
    args = ["--model", str(model), "--input", str(ARTICLES), "--output", str(model / "out.jsonl"), "--batch_size", "4"]
    with monkeypatch.context() as patch:
        interrupt_after_first_batch(patch)
        with pytest.raises(KeyboardInterrupt):
            predict(args)
    sizes = count_generated(monkeypatch)
    predict(args)
    assert sum(sizes) == len(read_lines(ARTICLES)) - 4
