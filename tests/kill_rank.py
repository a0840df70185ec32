"""The prediction recipe, with the process of rank $TITLEGEN_KILL_RANK killed (SIGKILL, as by the OOM killer or a
lost machine) right after it saved its first batch of titles: the script test_sharding.py launches."""

import os
import signal
import sys

import titlegen.progress
from titlegen.recipes.predict import main

append = titlegen.progress.PredictionProgress.append


def append_then_die(self, records):
    append(self, records)
    if os.environ.get("RANK") == os.environ["TITLEGEN_KILL_RANK"]:
        os.kill(os.getpid(), signal.SIGKILL)


titlegen.progress.PredictionProgress.append = append_then_die

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
