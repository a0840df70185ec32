"""Every entry point against a table of bad inputs.

Each cell says what one entry point does with one bad input: either an `Error` (exit status 2, one
line naming the file, line and field, no traceback, no output written) or `Handled` (the run succeeds,
with the handling the README documents). No input file is ever changed.

To cover a new entry point (the RL recipe, say), add its runner to ENTRY_POINTS and its cell to every
row of FILE_CASES and ARGUMENT_CASES; `test_every_entry_point_has_a_cell_in_every_row` insists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from titlegen.cli import evaluate_main
from titlegen.recipes.predict import main as predict_main
from titlegen.recipes.train import main as train_main

from .conftest import ARTICLES, NO_EVAL, read_lines, tiny_train_args

GOOD = read_lines(ARTICLES)[:4]


def jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def with_line_3(**fields) -> bytes:
    """The good records with fields of line 3 changed; a field set to None is removed."""
    records = [dict(r) for r in GOOD]
    records[2].update(fields)
    records[2] = {k: v for k, v in records[2].items() if v is not None}
    return jsonl(records)


# Runners: each gives one entry point `data` as its main input and returns its exit status and the
# paths it would write (none may exist after an error).


@dataclass
class Run:
    status: int
    outputs: list[Path]


def run_train(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    """Trains from scratch (`model` is for the entry points that load one)."""
    output = output or tmp / "run"
    args = tiny_train_args(output, "--train_file", str(data), "--validation_file", str(ARTICLES), *NO_EVAL,
                           "--max_steps", "1", "--save_strategy", "no", *extra)  # fmt: skip
    status = train_main(args)
    if status == 0:
        assert (output / "model.safetensors").is_file()
    return Run(status, [output])


def run_predict(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    output = output or tmp / "predictions.jsonl"
    status = predict_main(["--model", str(model), "--input", str(data), "--output", str(output), *extra])
    if status == 0:
        predictions = read_lines(output)
        assert [p["id"] for p in predictions] == [r["id"] for r in GOOD]
        assert all(isinstance(p["title"], str) and p["title"] == p["title"].strip() for p in predictions)
    return Run(status, [output, Path(f"{output}.progress")])


def run_eval(reference: Path, submission: Path, *extra: str) -> Run:
    try:
        status = evaluate_main(["-r", str(reference), "-s", str(submission), "--segmenter", "char", *extra])
    except SystemExit as exit:  # argparse's own usage errors
        status = exit.code
    return Run(status, [])


def write(path: Path, records) -> Path:
    path.write_bytes(jsonl(records))
    return path


def run_eval_reference(data: Path, tmp: Path, model: Path, *extra: str) -> Run:
    submission = write(tmp / "submission.jsonl", [{"title": r["title"], "id": r["id"]} for r in GOOD])
    return run_eval(data, submission, *extra)


def run_eval_submission(data: Path, tmp: Path, model: Path, *extra: str) -> Run:
    return run_eval(write(tmp / "reference.jsonl", GOOD), data, *extra)


ENTRY_POINTS: dict[str, Callable[..., Run]] = {
    "train": run_train,
    "predict": run_predict,
    "eval -r": run_eval_reference,
    "eval -s": run_eval_submission,
}


@dataclass(frozen=True)
class Error:
    """Exit status 2 with this message (a regular expression; ``{path}`` stands for the bad file)."""

    message: str


@dataclass(frozen=True)
class Handled:
    """The run succeeds; the runner checks its output."""

    how: str


AS_IF_CLEAN = Handled("read exactly like the same file without it")
TRUNCATED = Handled("truncated to max_source_length tokens, like every article")
NOT_READ = Handled("this entry point does not read the field, so it does not check it")
SCORES_ZERO = Handled("an empty prediction is a title; it scores 0 and counts in the average")
NOT_APPLICABLE = None  # the entry point has no such input

ALL = tuple(ENTRY_POINTS)


def error(message: str, *entry_points: str) -> dict:
    return dict.fromkeys(entry_points or ALL, Error(message))


def handled(how: Handled, *entry_points: str) -> dict:
    return dict.fromkeys(entry_points or ALL, how)


# name: (the bad file; line 3 is the bad line where there is one, what each entry point does)
FILE_CASES = {
    "malformed JSON line": (
        jsonl(GOOD[:2]) + '{"id": "x", "maintext": "文",\n'.encode() + jsonl(GOOD[3:]),
        error(r"{path}:3: not valid JSON \(Expecting property name enclosed in double quotes at column 29\)"),
    ),
    "missing maintext": (
        with_line_3(maintext=None),
        error(r"{path}:3: field 'maintext' is missing", "train", "predict") | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "missing title": (
        with_line_3(title=None),
        error(r"{path}:3: field 'title' is missing", "train", "eval -r", "eval -s") | handled(NOT_READ, "predict"),
    ),
    "missing id": (with_line_3(id=None), error(r"{path}:3: field 'id' is missing")),
    "non-string maintext": (
        with_line_3(maintext=["文章"]),
        error(r"{path}:3: field 'maintext' must be a string, got list", "train", "predict")
        | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "non-string title": (
        with_line_3(title=7),
        error(r"{path}:3: field 'title' must be a string, got int", "train", "eval -r", "eval -s")
        | handled(NOT_READ, "predict"),
    ),
    "non-string id": (with_line_3(id=3.5), error(r"{path}:3: field 'id' must be a string, got float")),
    "empty file": (b"", error(r"{path}: no records \(the file is empty\)")),
    "empty article": (
        with_line_3(maintext=""),
        error(r"{path}:3: field 'maintext' is empty", "train", "predict") | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "whitespace-only article": (
        with_line_3(maintext=" \n\u3000\t"),
        error(r"{path}:3: field 'maintext' is empty", "train", "predict") | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "empty title": (
        with_line_3(title=""),
        error(r"{path}:3: field 'title' is empty", "train", "eval -r")
        | handled(NOT_READ, "predict")
        | handled(SCORES_ZERO, "eval -s"),
    ),
    "duplicate ids": (with_line_3(id=GOOD[0]["id"]), error(r"{path}:3: field 'id' repeats the id 'fx-0' of line 1")),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + jsonl(GOOD), handled(AS_IF_CLEAN)),
    "CRLF line endings": (jsonl(GOOD).replace(b"\n", b"\r\n"), handled(AS_IF_CLEAN)),
    "invalid UTF-8": (
        jsonl(GOOD[:2]) + b'{"id": "x", "maintext": "\xe6\x96\x87\xff\xfe", "title": "t"}\n' + jsonl(GOOD[3:]),
        error(r"{path}:3: not valid UTF-8 \(byte \d+ of the line\)"),
    ),
    "200,000-character article": (
        with_line_3(maintext="臺北市政府今天宣布，" * 20_000),
        handled(TRUNCATED, "train", "predict") | handled(NOT_READ, "eval -r", "eval -s"),
    ),
}


def check(run: Run, expected: Error | Handled, data: Path, before: bytes, stderr: str) -> None:
    assert data.read_bytes() == before, "the input file is never changed"
    if isinstance(expected, Error):
        assert run.status == 2, stderr
        message = expected.message.replace("{path}", re.escape(str(data)))
        assert re.search(r"^(error: |titlegen-eval: error: )" + message + "$", stderr, re.MULTILINE), stderr
        assert "Traceback" not in stderr
        assert not [p for p in run.outputs if p.exists() and p != data], "nothing is written after an error"
    else:
        assert run.status == 0, stderr


@pytest.mark.parametrize(
    "case, entry_point",
    [(case, entry) for case, (_, cells) in FILE_CASES.items() for entry in ALL if cells[entry] is not NOT_APPLICABLE],
)
def test_bad_file(case, entry_point, trained_dir, tmp_path, capsys):
    content, cells = FILE_CASES[case]
    data = tmp_path / "in.jsonl"
    data.write_bytes(content)
    run = ENTRY_POINTS[entry_point](data, tmp_path, trained_dir)
    check(run, cells[entry_point], data, content, capsys.readouterr().err)


def typo_config(tmp: Path) -> list[str]:
    (tmp / "typo.yaml").write_text("learnig_rate: 0.1\n")
    return ["--config", str(tmp / "typo.yaml")]


# name: {entry point: (how to run it given the good data file, the folder and a trained model, what it does)}
ARGUMENT_CASES = {
    "unknown config key": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, *typo_config(tmp)),
            Error(r".*typo\.yaml: unknown setting 'learnig_rate' \(did you mean 'learning_rate'\?\)"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--num_beam", "2"),
            Error(r"command line: unknown setting 'num_beam' \(did you mean 'num_beams'\?\)"),
        ),
        "eval -r": (
            lambda data, tmp, model: run_eval_reference(data, tmp, model, "--segmentr", "jieba"),
            Error(r"unrecognized arguments: --segmentr jieba"),
        ),
        "eval -s": NOT_APPLICABLE,  # the same command line as eval -r
    },
    "missing model folder": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--model_name_or_path", str(tmp / "no-model")),
            Error(r"cannot load the tokenizer '.*no-model': .*"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, tmp / "no-model"),
            Error(r"cannot load the tokenizer '.*no-model': .*"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "output path equal to the input path": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, output=data),
            Error(r"{path}: output_dir is a file; choose a folder for the run"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=data),
            Error(r"{path}: the output file is the input file; choose another output path"),
        ),
        "eval -r": NOT_APPLICABLE,  # scoring writes nothing
        "eval -s": NOT_APPLICABLE,
    },
}


@pytest.mark.parametrize(
    "case, entry_point",
    [(case, entry) for case, cells in ARGUMENT_CASES.items() for entry in ALL if cells[entry] is not NOT_APPLICABLE],
)
def test_bad_arguments(case, entry_point, trained_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = write(tmp_path / "in.jsonl", GOOD)
    before = data.read_bytes()
    run_it, expected = ARGUMENT_CASES[case][entry_point]
    run = run_it(data, tmp_path, trained_dir)
    check(run, expected, data, before, capsys.readouterr().err)


def test_every_entry_point_has_a_cell_in_every_row():
    for case, (_, cells) in FILE_CASES.items():
        assert set(cells) == set(ENTRY_POINTS), case
    for case, cells in ARGUMENT_CASES.items():
        assert set(cells) == set(ENTRY_POINTS), case
