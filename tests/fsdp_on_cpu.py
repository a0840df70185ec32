"""The training recipe under FSDP on CPU: the script test_distributed.py launches with the FSDP config.

accelerate 1.16 shards with FSDP on GPUs and other accelerators only: on CPU its state says MULTI_CPU and the
Trainer wraps the model in DDP, FSDP config or not (titlegen-train refuses that run, see the recipe). torch's
FSDP2 itself runs on CPU with gloo, so this script lifts that one decision, making accelerate's state FSDP when
an FSDP plugin is given, and leaves everything else as it is: accelerate's FSDP2 preparation (the wrap policy,
the embedding's group), transformers' FSDP saving, titlegen's recipe. It writes what the first training step
saw (the model's FSDP units and its parameters' type) to $TITLEGEN_FSDP_LOG, so that a test knows the model
was sharded, not replicated.
"""

import functools
import json
import os
import sys

import accelerate.state
import transformers
from accelerate.utils import DistributedType

from titlegen.recipes.train import main

accelerator_state = accelerate.state.AcceleratorState.__init__


@functools.wraps(accelerator_state)
def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    accelerator_state(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = DistributedType.FSDP
        # Later states copy the process state's type back in: it says FSDP too.
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = fsdp_on_cpu
training_step = transformers.Trainer.training_step


@functools.wraps(training_step)
def recorded_step(trainer, model, *args, **kwargs):
    if trainer.state.global_step == 0 and os.environ.get("RANK", "0") == "0":
        from torch.distributed.fsdp import FSDPModule

        seen = {
            "fsdp_units": sorted(type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)),
            "parameter_types": sorted({type(p).__name__ for p in model.parameters()}),
        }
        with open(os.environ["TITLEGEN_FSDP_LOG"], "w", encoding="utf-8") as log:
            json.dump(seen, log)
    return training_step(trainer, model, *args, **kwargs)


transformers.Trainer.training_step = recorded_step

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
