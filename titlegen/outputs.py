"""Output checks: every output a command writes is checked before any work, so that a bad path costs nothing.

An output that would overwrite an input, or that cannot be written, is a `TitlegenError` naming it. The writing
itself is atomic (`titlegen.data`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from titlegen import TitlegenError


def check_output_file(output: str | Path, inputs: Sequence[str | Path] = (), side_files: Sequence[str] = ()) -> None:
    """Refuses an output file that cannot be written, or whose writing would touch an input.

    Called before any work, so that a bad output path costs nothing. The output's parent folders are
    not created here.

    Args:
        output: The file the command will write.
        inputs: Files the command reads; none may be the output or one of its side files.
        side_files: Suffixes of the files written beside the output (e.g. ``.progress``).
    """
    output = Path(output)
    if output.is_dir():
        raise TitlegenError(f"{output}: is a folder; give the path of the file to write")
    written = [output, *(Path(f"{output}{suffix}") for suffix in side_files)]
    for path in inputs:
        for target in written:
            if Path(path).resolve() == target.resolve():
                what = "output file" if target == output else f"{target.name} file that the run writes"
                raise TitlegenError(f"{output}: the {what} is the input file {path}; choose another output path")
    check_writable_folder(output.parent, output)


def check_writable_folder(folder: str | Path, for_path: str | Path) -> None:
    """Refuses a folder in which files cannot be created (by trying), or a path through a file."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TitlegenError(f"{for_path}: cannot be created, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise TitlegenError(f"{for_path}: cannot write in {existing} ({err.strerror})") from None


def check_output_folder(folder: str | Path, what: str) -> None:
    """Refuses an output folder that is a file, or one in which files cannot be created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TitlegenError(f"{folder}: output_dir is a file; choose a folder for {what}")
    check_writable_folder(folder, folder)
