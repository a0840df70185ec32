"""Every entry point against a table of bad inputs.

Each cell says what one entry point does with one bad input: either an `Error` (exit status 2, one
line naming the file, line and field, no traceback, no output written) or `Handled` (the run succeeds,
with the handling the README documents). No input file is ever changed.

To cover a new entry point, add its runner to ENTRY_POINTS and its cell to every row of FILE_CASES and
ARGUMENT_CASES; `test_every_entry_point_has_a_cell_in_every_row` insists.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from titlegen.cli import evaluate_main, export_main, prune_vocab_main
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
    changed: list[str] = field(default_factory=list)  # files of the test's folder made, changed or removed by the run


def snapshot(folder: Path) -> dict[str, tuple]:
    """What each file and folder under `folder` is: its kind, mode, size and modification time."""
    shot = {}
    for path in folder.rglob("*"):
        st = path.lstat()
        shot[str(path.relative_to(folder))] = (st.st_mode, 0 if stat.S_ISDIR(st.st_mode) else st.st_size,
                                               0 if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns)  # fmt: skip
    return shot


def invoke(main: Callable, args: list[str], tmp: Path) -> tuple[int, list[str]]:
    """Runs an entry point; returns its exit status and the paths under `tmp` it made, changed or removed."""
    before = snapshot(tmp)
    status = main(args)
    after = snapshot(tmp)
    return status, sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def run_train(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    """Trains from scratch (`model` is for the entry points that load one)."""
    output = output or tmp / "run"
    args = tiny_train_args(output, "--train_file", str(data), "--validation_file", str(ARTICLES), *NO_EVAL,
                           "--max_steps", "1", "--save_strategy", "no", *extra)  # fmt: skip
    new = [] if output.exists() else [output]  # an output that existed stays
    status, changed = invoke(train_main, args, tmp)
    if status == 0:
        assert (output / "model.safetensors").is_file()
    return Run(status, new, changed)


def run_predict(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    output = output or tmp / "predictions.jsonl"
    written = [p for p in (output, Path(f"{output}.progress")) if not p.exists()]  # an existing folder stays
    args = ["--model", str(model), "--input", str(data), "--output", str(output), *extra]
    status, changed = invoke(predict_main, args, tmp)
    if status == 0:
        predictions = read_lines(output)
        assert [p["id"] for p in predictions] == [r["id"] for r in GOOD]
        assert all(isinstance(p["title"], str) and p["title"] == p["title"].strip() for p in predictions)
    return Run(status, written, changed)


def run_rl(data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None) -> Run:
    output = output or tmp / "rl"
    args = ["--config", str(ROOT / "trainer_args" / "rl_scst.yaml"), "--model", str(model), "--train_file", str(data),
            "--validation_file", str(ARTICLES), "--output_dir", str(output), "--max_eval_samples", "2",
            "--max_target_length", "8", "--per_device_train_batch_size", "2", "--num_return_sequences", "2",
            "--max_steps", "1", "--disable_tqdm", "true", *extra]  # fmt: skip
    new = [] if output.exists() else [output]
    status, changed = invoke(rl_main, args, tmp)
    if status == 0:
        assert (output / "model.safetensors").is_file()
    return Run(status, new, changed)


def run_compare(
    data: Path, tmp: Path, model: Path, *extra: str, output: Path | None = None, grid: str = "- {strategy: greedy}\n"
) -> Run:
    output = output or tmp / "compare"
    grid_file = tmp / "grid.yaml"
    grid_file.write_text(grid)
    args = ["--model", str(model), "--input", str(data), "--output_dir", str(output), "--grid", str(grid_file),
            "--max_new_tokens", "8", *extra]  # fmt: skip
    new = [] if output.exists() else [output]
    status, changed = invoke(compare_main, args, tmp)
    if status == 0:
        assert [p["id"] for p in read_lines(output / "predictions" / "greedy.jsonl")] == [r["id"] for r in GOOD]
    return Run(status, new, changed)


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
    # Zero-width spaces and a byte-order mark show nothing: the title of such an article would be invisible.
    "article of zero-width characters only": (
        with_line_3(maintext="\u200b\ufeff\u200d"),
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
        assert not run.changed, f"no file is made, changed or removed after an error: {run.changed}"
    else:
        assert run.status == 0, stderr


@pytest.mark.slow
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
AT_MOST = r"command line: {name} must be at most {bound}, got {value}"
NOT_FINITE = r"command line: {name} must be a finite number, got {value}"


def model_copy(tmp: Path, model: Path) -> Path:
    """A copy of the trained model that a run may be asked to write into (the shared one is never risked)."""
    folder = tmp / "model"
    if not folder.exists():
        shutil.copytree(model, folder)
    return folder


def special_file(tmp: Path, kind: str) -> Path:
    """A FIFO, or (as root, who can make one) the character device /dev/null is, at a path in `tmp`."""
    path = tmp / kind
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device takes root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        os.mkfifo(path)
    return path


def locked(path: Path) -> Path:
    """`path` (a file or folder, made if missing) with an exclusive lock on it held for the rest of the test, as a
    run writing it would hold."""
    if not path.exists():
        path.touch()
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    LOCKS.append(fd)
    return path


LOCKS: list[int] = []


@pytest.fixture(autouse=True)
def release_locks():
    yield
    while LOCKS:
        os.close(LOCKS.pop())


def before_the_model_loads(run: Callable[[], Run]) -> Run:
    """Runs `run` with model loading made to fail loudly: what it refuses, it refuses before the model loads."""
    with mock.patch("titlegen.recipes.predict.start_engine", side_effect=AssertionError("the model was loaded")):
        return run()


def fifo_in_folder(folder: Path, name: str) -> Path:
    """`folder`, made, with a FIFO named `name` in it."""
    folder.mkdir()
    os.mkfifo(folder / name)
    return folder


def folder_beside(output: Path, suffix: str) -> Path:
    """`output`, with a folder where its side file with `suffix` goes."""
    Path(f"{output}{suffix}").mkdir()
    return output


def locked_folder(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    return locked(folder)


def run_train_resumed(data: Path, tmp: Path, model: Path, output: Path) -> Run:
    return run_train(data, tmp, model, "--resume", "true", output=output)


ANOTHER_RUN = r".*: another run is writing to this output_dir; wait for it to finish, or choose another --output_dir"

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
    "output that is a file of the model": {
        "train": (
            lambda data, tmp, model: run_train(
                data, tmp, model, "--model_name_or_path", str(model_copy(tmp, model)), output=model_copy(tmp, model)
            ),
            Error(r".*model already holds a run; pass --resume to continue it, or choose another --output_dir"),
        ),  # fmt: skip
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model_copy(tmp, model), output=model_copy(tmp, model)),
            Error(r".*model already holds a run; pass --resume to continue it, or choose another --output_dir"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(
                data, tmp, model_copy(tmp, model), output=model_copy(tmp, model) / "config.json"
            ),
            Error(
                r".*model/config\.json: the output file is config\.json, a file of the model .*model; choose another "
                r"output path"
            ),
        ),  # fmt: skip
        "compare": NOT_APPLICABLE,  # it writes none of a model's files, and an output inside a model folder is allowed
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "output that is the model's weights": {
        "predict": (
            lambda data, tmp, model: run_predict(
                data, tmp, model_copy(tmp, model), output=model_copy(tmp, model) / "model.safetensors"
            ),
            Error(
                r".*model\.safetensors: the output file is model\.safetensors, a file of the model .*model; choose "
                r"another output path"
            ),
        ),  # fmt: skip
        **dict.fromkeys(("train", "rl", "compare", "eval -r", "eval -s"), NOT_APPLICABLE),
    },
    "output that is a device": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, output=special_file(tmp, "device")),
            Error(r".*device: output_dir is a file; choose a folder for the run"),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, output=special_file(tmp, "device")),
            Error(r".*device: output_dir is a file; choose a folder for the run"),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=special_file(tmp, "device")),
            Error(
                r".*device: the output exists and is not a regular file \(a device, pipe or socket\), which writing "
                r"it would replace; choose another output path"
            ),
        ),  # fmt: skip
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, output=special_file(tmp, "device")),
            Error(r".*device: output_dir is a file; choose a folder for the comparison"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "output that is a FIFO": {
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, output=special_file(tmp, "fifo")),
            Error(
                r".*fifo: the output exists and is not a regular file \(a device, pipe or socket\), which writing "
                r"it would replace; choose another output path"
            ),
        ),  # fmt: skip
        "compare": (
            lambda data, tmp, model: run_compare(
                data, tmp, model, output=fifo_in_folder(tmp / "compare", "comparison.md")
            ),
            Error(
                r".*compare/comparison\.md: the output exists and is not a regular file \(a device, pipe or "
                r"socket\), which writing it would replace; choose another output path"
            ),
        ),  # fmt: skip
        **dict.fromkeys(("train", "rl", "eval -r", "eval -s"), NOT_APPLICABLE),
    },
    "progress file that is a folder": {
        "predict": (
            lambda data, tmp, model: run_predict(
                data, tmp, model, output=folder_beside(tmp / "out.jsonl", ".progress")
            ),
            Error(
                r".*out\.jsonl\.progress: exists and is a folder, where the run writes its \.progress file; remove it "
                r"or choose another output path"
            ),
        ),  # fmt: skip
        **dict.fromkeys(("train", "rl", "compare", "eval -r", "eval -s"), NOT_APPLICABLE),
    },
    "titles longer than any model writes": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--generation_max_new_tokens", "50000000"),
            Error(AT_MOST.format(name="generation_max_new_tokens", bound=1024, value=50000000)),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--generation_max_new_tokens", "50000000"),
            Error(AT_MOST.format(name="generation_max_new_tokens", bound=1024, value=50000000)),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--max_new_tokens", "50000000"),
            Error(AT_MOST.format(name="max_new_tokens", bound=1024, value=50000000)),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, "--max_new_tokens", "50000000"),
            Error(AT_MOST.format(name="max_new_tokens", bound=1024, value=50000000)),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "ten thousand beams": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--generation_num_beams", "10000"),
            Error(AT_MOST.format(name="generation_num_beams", bound=64, value=10000)),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--generation_num_beams", "10000"),
            Error(AT_MOST.format(name="generation_num_beams", bound=64, value=10000)),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--num_beams", "10000"),
            Error(AT_MOST.format(name="num_beams", bound=64, value=10000)),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, grid="- {strategy: beam, num_beams: 10000}\n"),
            Error(r".*grid\.yaml: setting 1: num_beams must be at most 64, got 10000"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "articles longer than any model reads": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--max_source_length", "10000000"),
            Error(AT_MOST.format(name="max_source_length", bound=8192, value=10000000)),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--max_source_length", "10000000"),
            Error(AT_MOST.format(name="max_source_length", bound=8192, value=10000000)),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--max_source_length", "10000000"),
            Error(AT_MOST.format(name="max_source_length", bound=8192, value=10000000)),
        ),
        **dict.fromkeys(("compare", "eval -r", "eval -s"), NOT_APPLICABLE),  # compare reads as the model was trained
    },
    "NaN setting": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--learning_rate", "nan"),
            Error(NOT_FINITE.format(name="learning_rate", value="nan")),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--temperature", "nan"),
            Error(NOT_FINITE.format(name="temperature", value="nan")),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--length_penalty", "nan", "--num_beams", "4"),
            Error(NOT_FINITE.format(name="length_penalty", value="nan")),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, grid="- {strategy: top_p, top_p: .nan}\n"),
            Error(r".*grid\.yaml: setting 1: top_p must be a finite number, got nan"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "infinite setting": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--weight_decay", "inf"),
            Error(NOT_FINITE.format(name="weight_decay", value="inf")),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--cliprange", "inf"),
            Error(NOT_FINITE.format(name="cliprange", value="inf")),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--temperature", "inf"),
            Error(NOT_FINITE.format(name="temperature", value="inf")),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(
                data, tmp, model, grid="- {strategy: temperature, temperature: .inf}\n"
            ),
            Error(r".*grid\.yaml: setting 1: temperature must be a finite number, got inf"),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "seed out of range": {
        "train": (
            lambda data, tmp, model: run_train(data, tmp, model, "--seed", "-1"),
            Error(r"command line: seed must be at least 0, got -1"),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--seed", "99999999999"),
            Error(AT_MOST.format(name="seed", bound=2**32 - 1, value=99999999999)),
        ),
        "predict": (
            lambda data, tmp, model: run_predict(data, tmp, model, "--seed", "-1"),
            Error(r"command line: seed must be at least 0, got -1"),
        ),
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, "--seed", "99999999999"),
            Error(AT_MOST.format(name="seed", bound=2**32 - 1, value=99999999999)),
        ),
        "eval -r": NOT_APPLICABLE,
        "eval -s": NOT_APPLICABLE,
    },
    "grid that is not YAML": {
        "compare": (
            lambda data, tmp, model: run_compare(data, tmp, model, grid="- {strategy: greedy\n- [beam\n"),
            Error(r".*grid\.yaml: not valid YAML: .*"),  # `check` insists on one line
        ),
        **dict.fromkeys(("train", "rl", "predict", "eval -r", "eval -s"), NOT_APPLICABLE),
    },
    "output another run is writing": {
        "train": (
            lambda data, tmp, model: run_train_resumed(data, tmp, model, output=locked_folder(tmp / "run")),
            Error(ANOTHER_RUN),
        ),
        "rl": (
            lambda data, tmp, model: run_rl(data, tmp, model, "--resume", "true", output=locked_folder(tmp / "rl")),
            Error(ANOTHER_RUN),
        ),
        "predict": (
            lambda data, tmp, model: before_the_model_loads(
                lambda: run_predict(data, tmp, model, output=(locked(tmp / "out.jsonl.progress"), tmp / "out.jsonl")[1])
            ),
            Error(
                r".*out\.jsonl\.progress: another titlegen-predict run is writing this output; wait for it to "
                r"finish, or choose another output path"
            ),
        ),  # fmt: skip
        **dict.fromkeys(("compare", "eval -r", "eval -s"), NOT_APPLICABLE),
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


def test_a_full_disk_is_a_one_line_error_and_the_rerun_loses_nothing(trained_dir, tmp_path, capsys, monkeypatch):
    data = write(tmp_path / "in.jsonl", GOOD)
    output = tmp_path / "out.jsonl"
    args = ["--model", str(trained_dir), "--input", str(data), "--batch_size", "2"]

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr("titlegen.progress.os.fsync", full)
        assert predict_main([*args, "--output", str(output)]) == 2
    stderr = capsys.readouterr().err
    message = f"error: {output}.progress: no space left on device; free some space and run the command again\n"
    assert stderr.endswith(message) and "Traceback" not in stderr, stderr
    assert not output.exists()
    assert predict_main([*args, "--output", str(output)]) == 0
    assert predict_main([*args, "--output", str(tmp_path / "clean.jsonl")]) == 0
    assert output.read_bytes() == (tmp_path / "clean.jsonl").read_bytes()


def test_model_weights_follow_the_umask(trained_dir, tmp_path):
    """safetensors writes its files private; titlegen's model folders are readable as the umask says, like every
    other file: another account can load a model trained in a shared folder."""
    from titlegen.prune import prune_vocabulary

    mask = os.umask(0o027)
    os.umask(mask)
    weights = list(trained_dir.rglob("*.safetensors"))
    assert weights and {stat.S_IMODE(p.stat().st_mode) for p in weights} == {0o666 & ~mask}
    os.umask(0o027)
    try:
        prune_vocabulary(str(trained_dir), [r["maintext"] for r in GOOD], tmp_path / "pruned", "")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "pruned" / "model.safetensors").stat().st_mode) == 0o640


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("command", ["export", "prune"])
def test_export_and_prune_refuse_a_device_or_fifo_as_output_before_any_work(command, kind, trained_dir, tmp_path,
                                                                           capsys):  # fmt: skip
    output = special_file(tmp_path, kind)
    before = snapshot(tmp_path)
    if command == "export":
        status = export_main([str(trained_dir), "-o", str(output)])
    else:
        status = prune_vocab_main([str(trained_dir), "--corpus", str(ARTICLES), "-o", str(output)])
    stderr = capsys.readouterr().err
    assert status == 2 and stderr == f"error: {output} already exists; choose another output folder\n", stderr
    assert snapshot(tmp_path) == before and stat.S_ISFIFO(output.lstat().st_mode) == (kind == "fifo")
