"""Output checks: every output a command writes is checked before any work, so that a bad path costs nothing.

An output that would overwrite an input, or that cannot be written, is a `TitlegenError` naming it. The writing
itself is atomic (`titlegen.data`).
"""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.model_folder import model_files


def check_output_file(
    output: str | Path,
    inputs: Sequence[str | Path] = (),
    side_files: Sequence[str] = (),
    model: str | Path | None = None,
) -> None:
    """Refuses an output file that cannot be written, or whose writing would touch an input or the model.

    Called before any work, so that a bad output path costs nothing. The output's parent folders are
    not created here. An output is written through a temporary file and a rename, which would replace a
    device or a pipe by a regular file: an existing output (or side file) that is not a regular file is
    refused, not written through.

    Args:
        output: The file the command will write.
        inputs: Files the command reads; none may be the output or one of its side files.
        side_files: Suffixes of the files written beside the output (e.g. ``.progress``).
        model: The model folder the command loads: none of its files (`model_files`) may be written. Other
            files inside the folder may.
    """
    output = Path(output)
    if output.is_dir():
        raise TitlegenError(f"{output}: is a folder; give the path of the file to write")
    written = [output, *(Path(f"{output}{suffix}") for suffix in side_files)]
    for target in written:
        check_not_special(target, output)
    for path in inputs:
        for target in written:
            if Path(path).resolve() == target.resolve():
                what = "output file" if target == output else f"{target.name} file that the run writes"
                raise TitlegenError(f"{output}: the {what} is the input file {path}; choose another output path")
    for path in model_files(model) if model is not None else ():
        for target in written:
            if path.resolve() == target.resolve():
                what = "output file" if target == output else f"{target.name} file that the run writes"
                raise TitlegenError(
                    f"{output}: the {what} is {path.name}, a file of the model {model}; choose another output path"
                )
    check_writable_folder(output.parent, output)


def check_not_special(target: Path, output: Path) -> None:
    """Refuses a path that exists as a folder, device, pipe or socket: an atomic write would replace it.

    A symbolic link is allowed: the rename replaces the link, never what it points to.
    """
    try:
        mode = target.lstat().st_mode
    except OSError:  # nothing there (or nothing that can be seen): the write finds out
        return
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return
    what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe or socket)"
    if target == output:
        raise TitlegenError(
            f"{target}: the output exists and is {what}, which writing it would replace; choose another output path"
        )
    raise TitlegenError(
        f"{target}: exists and is {what}, where the run writes its {target.name.removeprefix(output.name)} file; "
        "remove it or choose another output path"
    )


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
