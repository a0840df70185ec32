"""The training recipe, recording which process saves each output: the script test_distributed.py launches.

Every call that writes an output of a run (titlegen's atomic writes, tokenizer training, the Trainer's
model and state saves) appends ``RANK PATH`` to the file named by $TITLEGEN_WRITES_LOG, then runs as usual.

With $TITLEGEN_HANG_AFTER_STEP=N, every process stops once it has saved checkpoint-N: it writes its process id
to ``$TITLEGEN_WRITES_LOG.hung-RANK`` and sleeps until the test kills it, so that a kill lands after that
checkpoint and before the next, whatever the machine's speed.
"""

import functools
import os
import sys
import time
from pathlib import Path

import transformers

import titlegen.data
import titlegen.tokenizer
from titlegen.recipes.train import main


def recorded(function, path_argument: int):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with open(os.environ["TITLEGEN_WRITES_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{os.environ.get('RANK', '0')} {args[path_argument]}\n")
        return function(*args, **kwargs)

    return wrapper


# Each function is replaced wherever a module of the package imported it.
for name, function, path_argument in (
    ("atomic_write_text", titlegen.data.atomic_write_text, 0),
    ("train_tokenizer", titlegen.tokenizer.train_tokenizer, 1),
):
    for module in [m for n, m in sys.modules.items() if n.startswith("titlegen")]:
        if getattr(module, name, None) is function:
            setattr(module, name, recorded(function, path_argument))
transformers.PreTrainedModel.save_pretrained = recorded(transformers.PreTrainedModel.save_pretrained, 1)
transformers.TrainerState.save_to_json = recorded(transformers.TrainerState.save_to_json, 1)


def hang_after_step(save_checkpoint):
    @functools.wraps(save_checkpoint)
    def wrapper(trainer, *args, **kwargs):
        result = save_checkpoint(trainer, *args, **kwargs)
        if str(trainer.state.global_step) == os.environ.get("TITLEGEN_HANG_AFTER_STEP"):
            marker = Path(f"{os.environ['TITLEGEN_WRITES_LOG']}.hung-{os.environ.get('RANK', '0')}")
            marker.write_text(str(os.getpid()))  # the launchers start their workers in sessions of their own
            time.sleep(3600)
        return result

    return wrapper


transformers.Trainer._save_checkpoint = hang_after_step(transformers.Trainer._save_checkpoint)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
