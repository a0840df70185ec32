"""Reading and writing the course's jsonl files.

Every problem in an input file is reported with the file, the line number and the field, and every
output file is written atomically: it appears complete or not at all, with the permissions the umask gives
any new file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from titlegen import TitlegenError


class DataError(TitlegenError):
    """An input file does not hold what titlegen needs."""


def normalize_text(text: str) -> str:
    """Collapses every run of whitespace (newlines included) to one space and strips the ends.

    The course's articles contain newlines; tokenizers treat all whitespace alike, and titles must be
    one line.
    """
    return " ".join(text.split())


def read_jsonl(
    path: str | Path,
    fields: Sequence[str] = ("id", "maintext"),
    id_field: str = "id",
    may_be_empty: Sequence[str] = (),
) -> list[dict]:
    """Reads a jsonl file and validates the fields titlegen uses.

    Args:
        path: The file, one JSON object per line. Blank lines are skipped; a UTF-8 byte-order mark and
            CRLF line endings are accepted.
        fields: Fields every record must have as non-empty strings of text (an unpaired surrogate
            escape such as ``"\\ud800"`` is not text).
        id_field: The field that identifies a record; it must be unique within the file.
        may_be_empty: Fields of `fields` that may hold an empty or whitespace-only string.

    Returns:
        The records, in file order, with all their fields.

    Raises:
        DataError: naming the file, line and field of the first problem found.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]

    records: list[dict] = []
    ids: dict[str, str] = {}
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {err.start + 1} of the line)") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: {json_error(err)}") from None
        records.append(check_record(record, f"{path}:{lineno}", f"line {lineno}", fields, id_field, may_be_empty, ids))
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    return records


def json_error(err: json.JSONDecodeError) -> str:
    """What is wrong with a JSON document, for a message that names where it is."""
    return f"not valid JSON ({err.msg} at column {err.colno})"


def check_record(
    record: object,
    where: str,
    place: str,
    fields: Sequence[str],
    id_field: str,
    may_be_empty: Sequence[str],
    ids: dict[str, str],
) -> dict:
    """Validates one record of a file or a request, as `read_jsonl` does.

    Args:
        record: A decoded JSON value.
        where: Where it is, to begin a message (``data.jsonl:3``, ``articles[2]``).
        place: The same, for another record's message that refers to it (``line 3``, ``articles[2]``).
        fields, id_field, may_be_empty: As for `read_jsonl`.
        ids: The ids seen so far, each with its `place`; the record's id is added.

    Returns:
        The record.

    Raises:
        DataError: naming `where` and the field of the first problem found.
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in fields:
        if name not in record:
            raise DataError(f"{where}: field '{name}' is missing")
        value = record[name]
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if is_blank(value) and name not in may_be_empty:
            raise DataError(f"{where}: field '{name}' is empty")
        surrogate = _unpaired_surrogate(value)
        if surrogate is not None:
            raise DataError(
                f"{where}: field '{name}' holds an unpaired surrogate \\u{ord(surrogate):04x} "
                f"(character {value.index(surrogate) + 1}), which is not text"
            )
    if id_field in fields:
        key = record[id_field]
        if key in ids:
            raise DataError(f"{where}: field '{id_field}' repeats the id {key!r} of {ids[key]}")
        ids[key] = place
    return record


def _unpaired_surrogate(text: str) -> str | None:
    """The first lone UTF-16 surrogate in `text` (JSON's ``"\\ud800"`` decodes to one), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return text[err.start]
    return None


def is_blank(text: str) -> bool:
    """Whether a text shows nothing: only whitespace and invisible format characters (Unicode's category Cf:
    zero-width spaces and joiners, byte-order marks), which a model would title with an invisible title."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: str | Path) -> None:
    """Gives the safetensors files of a folder the permissions that the umask gives any other file.

    safetensors writes its files private (0600) whatever the umask, unlike every other file of a model folder,
    so another account could not load a model written into a shared folder.
    """
    mode = 0o666 & ~_umask()
    for path in Path(folder).glob("*.safetensors"):
        path.chmod(mode)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` to `path` as UTF-8 through a temporary file in the same folder and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; the output is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a full disk, say: name the file written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Writes records as UTF-8 jsonl (non-ASCII kept as is), atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str | Path, value) -> None:
    """Writes one JSON document, indented, atomically."""
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def split_records(records: list[dict], percentage: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Splits off `percentage` % of the records (at least one) for validation, by a seeded shuffle."""
    import random

    if len(records) < 2:
        raise DataError("cannot hold out validation data from fewer than 2 records; give a validation_file")
    n_eval = min(len(records) - 1, max(1, round(len(records) * percentage / 100)))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held_out]
    return train, [records[i] for i in sorted(held_out)]


@contextlib.contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yields a temporary folder that becomes `path` when the block succeeds, and vanishes when it fails.

    An existing file (a device or pipe included) or non-empty folder at `path` is refused, so a finished output is
    never overwritten, and before any work.
    """
    path = Path(path)
    if (path.exists() and not path.is_dir()) or (path.is_dir() and any(path.iterdir())):
        raise TitlegenError(f"{path} already exists; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary folder
    try:
        yield tmp
        os.replace(tmp, path)  # replaces an empty folder too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_training_data(data_args, seed: int) -> tuple[list[dict], list[dict]]:
    """The training and validation records of a training run, validated, cut to max_train/eval_samples.

    Without a validation_file, a seeded `validation_split_percentage` of train_file is held out.
    """
    columns = (data_args.id_column, data_args.text_column, data_args.summary_column)
    if not data_args.train_file:
        raise TitlegenError("train_file is not set (in the config or as --train_file)")
    train = read_jsonl(data_args.train_file, fields=columns, id_field=data_args.id_column)
    if data_args.validation_file:
        validation = read_jsonl(data_args.validation_file, fields=columns, id_field=data_args.id_column)
    else:
        train, validation = split_records(train, data_args.validation_split_percentage, seed)
    return train[: data_args.max_train_samples], validation[: data_args.max_eval_samples]
