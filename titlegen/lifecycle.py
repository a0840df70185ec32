"""The command shell: how every titlegen command starts and ends.

A command (`titlegen.recipes`, `titlegen.cli`) goes through the same steps, each in its own module, in this
order:

1. settings (`titlegen.config.parse_args`): unknown, mistyped or out-of-range settings are refused;
2. outputs checked before any work (`titlegen.outputs`, `titlegen.checkpoints.prepare_run_dir`): an output
   that would overwrite an input or a finished run, or that cannot be written, is refused before anything is read;
3. inputs validated (`titlegen.data`), with file, line and field;
4. the model folder loaded and validated (`titlegen.model_folder`): weights, tokenizer and titlegen's settings
   checked against each other;
5. the process set up (`start_logging`, `titlegen.cpu.configure_process`): logging, seeds, the CPU switches;
6. the work, writing its outputs atomically (`titlegen.data`) and resumably;

and `run_command` turns every `TitlegenError` raised on the way into one line on stderr and exit status 2.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from titlegen import TitlegenError


def run_command(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Runs a command's main function; a `TitlegenError` becomes a one-line message and exit status 2."""
    try:
        main(argv)
    except TitlegenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk is no bug: outputs are written atomically and resumably, so the rerun, once there is room,
        # loses nothing.
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{os.strerror(err.errno).lower()}; free some space and run the command again",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or `titlegen.callbacks.Interrupted` after a checkpoint
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "exit_status", 130)
    return 0


def start_logging() -> None:
    """titlegen's log lines with a time stamp; transformers' own only from warnings up."""
    import transformers

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
