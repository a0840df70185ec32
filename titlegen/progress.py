"""Prediction that survives being killed: finished titles wait in a side file until the output is whole.

``titlegen-predict`` appends each batch of titles to ``OUTPUT.progress`` (and fsyncs it) as soon as the
batch is generated. Killed and rerun with the same arguments, it reads them back and generates only
the articles still missing; once every title exists it writes OUTPUT atomically and deletes the side
file. OUTPUT therefore never exists half-written, and at most one batch of work is lost.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import write_jsonl

logger = logging.getLogger(__name__)

_FORMAT = "titlegen-predict progress v1"


def run_fingerprint(settings: dict, files: Iterable[str | Path]) -> str:
    """A digest of a run's settings and of the files it reads (path, size and modification time).

    Titles from an earlier run are reused only when this digest is unchanged, so that a changed
    input file, a retrained model or a new decoding flag starts the work over.
    """
    stats = []
    for path in files:
        stat = Path(path).stat()
        stats.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"settings": settings, "files": sorted(stats)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# The side file's suffix: OUTPUT.progress.
SUFFIX = ".progress"


class PredictionProgress:
    """The titles an interrupted prediction run already wrote, kept next to its output file.

    Use it as a context manager: it holds an exclusive lock on the side file for the whole run, so that two
    runs writing the same output never mix their titles; the second is refused with a message naming the file.

    Args:
        output_path: The output file; the side file is the same path with `SUFFIX` added.
        fingerprint: Identifies the run (see `run_fingerprint`); a side file left by a run with another
            fingerprint is discarded.
    """

    def __init__(self, output_path: str | Path, fingerprint: str):
        self.path = Path(f"{output_path}{SUFFIX}")
        self.fingerprint = fingerprint
        self._file = None
        self._created = False

    def __enter__(self) -> PredictionProgress:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created = not self.path.exists()
        file = open(self.path, "a+b")  # created with the umask's permissions, like any file; never truncated here
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise TitlegenError(
                f"{self.path}: another titlegen-predict run is writing this output; wait for it to finish, "
                "or choose another output path"
            ) from None
        self._file = file
        return self

    def __exit__(self, kind, *exc) -> None:
        # A run that fails before `load` (the model did not load, say) leaves no empty side file of its own behind.
        if kind is not None and self._created and self._file.tell() == 0 and self.path.stat().st_size == 0:
            self.path.unlink(missing_ok=True)
        self._file.close()  # releases the lock
        self._file = None

    def _header(self) -> bytes:
        return (json.dumps({"format": _FORMAT, "fingerprint": self.fingerprint}) + "\n").encode("utf-8")

    def load(self) -> dict[str, str]:
        """Returns the finished titles by id, and prepares the side file for appending.

        A line cut short by a kill is dropped. A new side file, or one from a run with other settings or
        inputs, is (re)started empty.
        """
        file = self._file
        file.seek(0)
        data = file.read()
        header = self._header()
        if not data.startswith(header):
            if data:
                logger.warning("%s is from a run with other settings or inputs: starting over", self.path)
            self._rewrite(header)
            return {}
        titles: dict[str, str] = {}
        end = len(header)  # the length of the whole, valid lines read so far
        for line in data[end:].split(b"\n")[:-1]:  # what follows the last newline was cut short
            try:
                record = json.loads(line)
                titles[record["id"]] = record["title"]
            except (ValueError, KeyError, TypeError):
                break  # nothing after a damaged line can be trusted
            end += len(line) + 1
        if end < len(data):
            self._rewrite(data[:end])
        return titles

    def _rewrite(self, data: bytes) -> None:
        # In place, not through a rename: the lock belongs to this file.
        self._file.truncate(0)
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Appends `data` and forces it to disk."""
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:  # a full disk, say: the message names the file, which a write error does not
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def append(self, records: Iterable[dict]) -> None:
        """Adds finished ``{"title", "id"}`` records and forces them to disk."""
        self._write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))

    def finish(self, output_path: str | Path, records: Iterable[dict]) -> None:
        """Writes the whole output atomically, then deletes the side file."""
        write_jsonl(output_path, records)
        self.path.unlink(missing_ok=True)
