"""What every benchmark prints and reads: the machine it ran on, the real data, a markdown table."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from titlegen.corpus import data_dir
from titlegen.recipes.train import train

ROOT = Path(__file__).resolve().parents[1]
LCSTS = data_dir() / "lcsts"  # $TITLEGEN_DATA, else ../shared/data (titlegen/corpus.py)


def machine() -> str:
    """One line: date, CPU, cores torch uses, load average and library versions."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{datetime.date.today()} | {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()} | "
        f"load average {load} | torch {torch.__version__}, transformers {transformers.__version__}"
    )


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; floats get two decimals."""

    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def offline_model(model: str | None, folder: Path, *train_args: str) -> Path:
    """The given model folder, or one trained (once, resumably) into `folder` with trainer_args/tiny_offline.yaml
    and `train_args` on top."""
    if model:
        return Path(model)
    if not (folder / "model.safetensors").is_file():
        print(f"no --model given: training one with trainer_args/tiny_offline.yaml into {folder}", flush=True)
        # --resume: a training that was interrupted continues from its last checkpoint.
        config = str(ROOT / "trainer_args" / "tiny_offline.yaml")
        train(["--config", config, "--output_dir", str(folder), "--report_to", "none", "--resume", "true", *train_args])
    return folder
