"""Every entry point against a table of bad inputs.

Each cell says what one entry point does with one bad input: either an `Error` (exit status 2, one
line naming the file, line and field, no traceback, no output written) or `Handled` (the run succeeds,
with the handling the README documents). No input file is ever changed.

To cover a new entry point, add its runner to ENTRY_POINTS and its cell to every row of FILE_CASES and
ARGUMENT_CASES; `test_every_entry_point_has_a_cell_in_every_row` insists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from titlegen.cli import evaluate_main
from titlegen.recipes.compare import main as compare_main
from titlegen.recipes.predict import main as predict_main
from titlegen.recipes.rl import main as rl_main
from titlegen.recipes.train import main as train_main

from .conftest import ARTICLES, NO_EVAL, ROOT, read_lines, tiny_train_args

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
    written = [p for p in (output, Path(f"{output}.progress")) if not p.exists()]  # an existing folder stays
    status = predict_main(["--model", str(model), "--input", str(data), "--output", str(output), *extra])
    if status == 0:
        predictions = read_lines(output)
        assert [p["id"] for p in predictions] == [r["id"] for r in GOOD]
        assert all(isinstance(p["title"], str) and p["title"] == p["title"].strip() for p in predictions)
    return Run(status, written)


def run_rl(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    output = output or tmp / "rl"
    args = ["--config", str(ROOT / "trainer_args" / "rl_scst.yaml"), "--model", str(model), "--train_file", str(data),
            "--validation_file", str(ARTICLES), "--output_dir", str(output), "--max_eval_samples", "2",
            "--max_target_length", "8", "--per_device_train_batch_size", "2", "--num_return_sequences", "2",
            "--max_steps", "1", "--disable_tqdm", "true", *extra]  # fmt: skip
    status = rl_main(args)
    if status == 0:
        assert (output / "model.safetensors").is_file()
    return Run(status, [output])


def run_compare(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    output = output or tmp / "compare"
    grid = tmp / "grid.yaml"
    grid.write_text("- {strategy: greedy}\n")
    status = compare_main(["--model", str(model), "--input", str(data), "--output_dir", str(output),
                           "--grid", str(grid), "--max_new_tokens", "8", *extra])  # fmt: skip
    if status == 0:
        assert [p["id"] for p in read_lines(output / "predictions" / "greedy.jsonl")] == [r["id"] for r in GOOD]
    return Run(status, [output])


def run_eval(reference: Path, submission: Path, *extra: str) -> Run:
    status = evaluate_main(["-r", str(reference), "-s", str(submission), "--segmenter", "char", *extra])
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
    "rl": run_rl,
    "predict": run_predict,
    "compare": run_compare,
    "eval -r": run_eval_reference,
    "eval -s": run_eval_submission,
}
# The entry points that read each field of a training file.
READ_ARTICLES = ("train", "rl", "predict", "compare")
READ_TITLES = ("train", "rl", "compare", "eval -r", "eval -s")


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


LONE_SURROGATE = '"\\ud800"'  # JSON for a lone UTF-16 surrogate: valid JSON, but no text


def with_raw_line_3(field: str) -> bytes:
    """The good records with a lone surrogate escape in `field` of line 3."""
    lines = jsonl(GOOD).decode().splitlines(keepends=True)
    record = json.loads(lines[2])
    lines[2] = json.dumps(record, ensure_ascii=False).replace(json.dumps(record[field], ensure_ascii=False),
                                                              LONE_SURROGATE[:-1] + 'x"', 1) + "\n"  # fmt: skip
    return "".join(lines).encode()


# name: (the bad file; line 3 is the bad line where there is one, what each entry point does)
FILE_CASES = {
    "malformed JSON line": (
        jsonl(GOOD[:2]) + '{"id": "x", "maintext": "文",\n'.encode() + jsonl(GOOD[3:]),
        error(r"{path}:3: not valid JSON \(Expecting property name enclosed in double quotes at column 29\)"),
    ),
    "missing maintext": (
        with_line_3(maintext=None),
        error(r"{path}:3: field 'maintext' is missing", *READ_ARTICLES) | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "missing title": (
        with_line_3(title=None),
        error(r"{path}:3: field 'title' is missing", *READ_TITLES) | handled(NOT_READ, "predict"),
    ),
    "missing id": (with_line_3(id=None), error(r"{path}:3: field 'id' is missing")),
    "non-string maintext": (
        with_line_3(maintext=["文章"]),
        error(r"{path}:3: field 'maintext' must be a string, got list", *READ_ARTICLES)
        | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "non-string title": (
        with_line_3(title=7),
        error(r"{path}:3: field 'title' must be a string, got int", *READ_TITLES) | handled(NOT_READ, "predict"),
    ),
    "non-string id": (with_line_3(id=3.5), error(r"{path}:3: field 'id' must be a string, got float")),
    # An id written back as a string would no longer match the number a grader compares it with.
    "numeric id": (with_line_3(id=3), error(r"{path}:3: field 'id' must be a string, got int")),
    "lone surrogate in the article": (
        with_raw_line_3("maintext"),
        error(
            r"{path}:3: field 'maintext' holds an unpaired surrogate \\ud800 \(character 1\), which is not text",
            *READ_ARTICLES,
        )
        | handled(NOT_READ, "eval -r", "eval -s"),
    ),  # fmt: skip
    "lone surrogate in the title": (
        with_raw_line_3("title"),
        error(
            r"{path}:3: field 'title' holds an unpaired surrogate \\ud800 \(character 1\), which is not text",
            *READ_TITLES,
        )
        | handled(NOT_READ, "predict"),
    ),  # fmt: skip
    "empty file": (b"", error(r"{path}: no records \(the file is empty\)")),
    "empty article": (
        with_line_3(maintext=""),
        error(r"{path}:3: field 'maintext' is empty", *READ_ARTICLES) | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "whitespace-only article": (
        with_line_3(maintext=" \n\u3000\t"),
        error(r"{path}:3: field 'maintext' is empty", *READ_ARTICLES) | handled(NOT_READ, "eval -r", "eval -s"),
    ),
    "empty title": (
        with_line_3(title=""),
        error(r"{path}:3: field 'title' is empty", "train", "rl", "compare", "eval -r")
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
        handled(TRUNCATED, *READ_ARTICLES) | handled(NOT_READ, "eval -r", "eval -s"),
    ),
}


def check(run: Run, expected: Error | Handled, data: Path, before: bytes, stderr: str) -> None:
    assert data.read_bytes() == before, "the input file is never changed"
    if isinstance(expected, Error):
        assert run.status == 2, stderr
        message = expected.message.replace("{path}", re.escape(str(data)))
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and re.fullmatch("error: " + message, errors[0]), stderr  # one line, the last
        assert stderr.endswith(errors[0] + "\n"), stderr
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


def damaged_model(tmp: Path, model: Path, damage: str) -> Path:
    """A copy of the trained model folder with one thing wrong."""
    folder = tmp / "damaged"
    shutil.copytree(model, folder)
    if damage == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    elif damage == "embedding too small":
        from transformers import AutoModelForSeq2SeqLM

        small = AutoModelForSeq2SeqLM.from_pretrained(folder)
        small.resize_token_embeddings(64)
        small.save_pretrained(folder)
    elif damage == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "random weights":
        (folder / "model.safetensors").write_bytes(os.urandom(4096))
    elif damage == "unparsable run_config.yaml":
        (folder / "run_config.yaml").write_text("source_prefix: [unclosed\n")
    elif damage == "pickled adapter":  # an adapter folder, as a use_lora run writes it, with pickled weights
        (folder / "model.safetensors").unlink()
        (folder / "config.json").unlink()
        config = {"base_model_name_or_path": str(model), "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM"}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "adapter_model.bin").write_bytes(b"pickled weights would run code")
    return folder


def with_model(damage: str, **runners: Callable[..., Run]) -> dict:
    """The cells of a damaged-model case: each entry point that loads a model gets the damaged copy."""

    def loads(runner):
        if runner is run_train:
            return lambda data, tmp, model: run_train(data, tmp, model, "--model_name_or_path",
                                                      str(damaged_model(tmp, model, damage)))  # fmt: skip
        return lambda data, tmp, model: runner(data, tmp, damaged_model(tmp, model, damage))

    cells = {name: (loads(runner), expected) for name, (runner, expected) in runners.items()}
    return cells | dict.fromkeys(set(ALL) - set(cells), NOT_APPLICABLE)


def all_models(damage: str, message: str) -> dict:
    runners = {"train": run_train, "rl": run_rl, "predict": run_predict, "compare": run_compare}
    return with_model(damage, **{name: (runner, Error(message)) for name, runner in runners.items()})


UNWRITABLE = Path("/proc/self/no-such-folder")  # no process, root included, can create files in /proc/self
RANGE = r"command line: {name} must be at least 1, got {value}"

# name: {entry point: (how to run it given the good data file, the folder and a trained model, what it does)}
ARGUMENT_CASES = {
    "unknown config key": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, *typo_config(tmp)),
            Error(r".*typo\.yaml: unknown setting 'learnig_rate' \(did you mean 'learning_rate'\?\)"),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, *typo_config(tmp)),
            Error(r".*typo\.yaml: unknown setting 'learnig_rate' \(did you mean 'learning_rate'\?\)"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--num_beam", "2"),
            Error(r"command line: unknown setting 'num_beam' \(did you mean 'num_beams'\?\)"),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, "--limt", "2"),
            Error(r"command line: unknown setting 'limt' \(did you mean 'limit'\?\)"),
        ),
        "eval -r": (
            lambda data, tmp, model: run_eval_reference(data, tmp, model, "--segmentr", "jieba"),
            Error(r"command line: unknown setting 'segmentr' \(did you mean 'segmenter'\?\)"),
        ),
        "eval -s": NOT_APPLICABLE,  # the same command line as eval -r
    },
    "missing model folder": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--model_name_or_path", str(tmp / "no-model")),
            Error(r".*/no-model: no such model folder"),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, tmp / "no-model"),
            Error(r".*/no-model: no such model folder"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, tmp / "no-model"),
            Error(r".*/no-model: no such model folder"),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, tmp / "no-model"),
            Error(r".*/no-model: no such model folder"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "model folder without a tokenizer": all_models(
        "no tokenizer",
        r".*damaged: no tokenizer in the model folder \(none of .*\); copy in the tokenizer the model was trained with",
    ),
    "tokenizer larger than the model's embedding": all_models(
        "embedding too small",
        r".*damaged: the tokenizer has \d+ tokens but the model's embedding only 64; the tokenizer is not the one the "
        r"model was trained with",
    ),
    "truncated model.safetensors": all_models("truncated weights", r"cannot load the model '.*damaged': .*"),
    "random bytes as model.safetensors": all_models("random weights", r"cannot load the model '.*damaged': .*"),
    "unparsable run_config.yaml": all_models(
        "unparsable run_config.yaml", r".*damaged/run_config\.yaml: not valid YAML: .*"
    ),
    "pickled LoRA adapter": with_model(
        "pickled adapter",
        predict=(
            run_predict,
            Error(
                r".*damaged: no adapter_model\.safetensors; adapters are loaded from safetensors "
                r"only, since a pickled adapter_model\.bin can run code when it is loaded"
            ),
        ),
    ),  # fmt: skip
    "negative batch size": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--per_device_train_batch_size", "-3"),
            Error(RANGE.format(name="per_device_train_batch_size", value=-3)),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--per_device_train_batch_size", "-3"),
            Error(RANGE.format(name="per_device_train_batch_size", value=-3)),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--batch_size", "-3"),
            Error(RANGE.format(name="batch_size", value=-3)),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, "--batch_size", "0"),
            Error(RANGE.format(name="batch_size", value=0)),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "no beams": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--generation_num_beams", "0"),
            Error(RANGE.format(name="generation_num_beams", value=0)),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--generation_num_beams", "0"),
            Error(RANGE.format(name="generation_num_beams", value=0)),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--num_beams", "0"),
            Error(RANGE.format(name="num_beams", value=0)),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, "--max_new_tokens", "0"),
            Error(RANGE.format(name="max_new_tokens", value=0)),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "output path equal to the input path": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, output=data),
            Error(r"{path}: output_dir is a file; choose a folder for the run"),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, output=data),
            Error(r"{path}: output_dir is a file; choose a folder for the run"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=data),
            Error(r"{path}: the output file is the input file {path}; choose another output path"),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, output=data),
            Error(r"{path}: output_dir is a file; choose a folder for the comparison"),
        ),
        "eval -r": NOT_APPLICABLE,  # scoring writes nothing
        "eval -s": NOT_APPLICABLE,
    },
    "output whose progress file is the input": {
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=Path(str(data).removesuffix(".progress"))),
            Error(
                r".*in\.jsonl: the in\.jsonl\.progress file that the run writes is the input file {path}; "
                r"choose another output path"
            ),
        ),  # fmt: skip
        **dict.fromkeys(("train", "rl", "compare", "eval -r", "eval -s"), NOT_APPLICABLE),
    },
    "output path that is a folder": {
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=tmp),
            Error(r".*: is a folder; give the path of the file to write"),
        ),
        **dict.fromkeys(("train", "rl", "compare"), NOT_APPLICABLE),  # their output is a folder
        **dict.fromkeys(("eval -r", "eval -s"), NOT_APPLICABLE),
    },
    "output in a folder where nothing can be written": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, output=UNWRITABLE / "run"),
            Error(r"/proc/self/no-such-folder/run: cannot write in /proc/self \(.*\)"),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, output=UNWRITABLE / "rl"),
            Error(r"/proc/self/no-such-folder/rl: cannot write in /proc/self \(.*\)"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=UNWRITABLE / "out.jsonl"),
            Error(r"/proc/self/no-such-folder/out\.jsonl: cannot write in /proc/self \(.*\)"),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, output=UNWRITABLE / "compare"),
            Error(r"/proc/self/no-such-folder/compare: cannot write in /proc/self \(.*\)"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
}


@pytest.mark.parametrize(
    "case, entry_point",
    [(case, entry) for case, cells in ARGUMENT_CASES.items() for entry in ALL if cells[entry] is not NOT_APPLICABLE],
)
def test_bad_arguments(case, entry_point, trained_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "in.jsonl.progress" if case == "output whose progress file is the input" else "in.jsonl"
    data = write(tmp_path / name, GOOD)
    before = data.read_bytes()
    run_it, expected = ARGUMENT_CASES[case][entry_point]
    run = run_it(data, tmp_path, trained_dir)
    check(run, expected, data, before, capsys.readouterr().err)


def test_every_entry_point_has_a_cell_in_every_row():
    for case, (_, cells) in FILE_CASES.items():
        assert set(cells) == set(ENTRY_POINTS), case
    for case, cells in ARGUMENT_CASES.items():
        assert set(cells) == set(ENTRY_POINTS), case
