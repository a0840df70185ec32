"""LoRA with peft: low-rank adapters on a pretrained model, and merging a trained adapter into it.

A ``use_lora`` run trains a rank-r update ``B @ A`` beside each chosen linear layer and keeps the
pretrained weights fixed, so gradients and optimizer state cover megabytes of adapters instead of the
whole model. It saves only the adapter (``adapter_config.json``, ``adapter_model.safetensors``), with
the tokenizer and run settings; `titlegen.model_folder.load_model` loads such a folder on top of its base
model, and `merge_adapter` writes the merged plain checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import atomic_output_dir, follow_umask
from titlegen.model_folder import ADAPTER_CONFIG, load_model, load_tokenizer

ATTENTION_MODULES = ("q", "k", "v", "o")  # mT5's attention projections; its feed-forward layers: wi_0, wi_1, wo


def add_lora(
    model,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = ATTENTION_MODULES,
):
    """Freezes a pretrained seq2seq model and adds trainable LoRA adapters to some of its linear layers.

    Args:
        model: A pretrained model (from ``from_pretrained``: its adapter records where to find it).
        r: Rank of each adapter.
        alpha: Scale; an adapter's update is multiplied by ``alpha / r``.
        dropout: Dropout on each adapter's input.
        target_modules: Names of the linear layers to adapt (matched against the ends of module names),
            or ``["all-linear"]`` for every linear layer except the output layer.

    Returns:
        The peft model; only the adapters' parameters require gradients.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    targets = "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules that the model does not have
        raise TitlegenError(f"lora_target_modules={list(target_modules)}: {str(err).splitlines()[0]}") from err
    config = peft_model.peft_config["default"]
    if config.base_model_name_or_path and Path(config.base_model_name_or_path).is_dir():
        # The adapter is loaded on top of the folder it names; a relative path would only work from here.
        config.base_model_name_or_path = str(Path(config.base_model_name_or_path).resolve())
    return peft_model


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path) -> None:
    """Writes an adapter merged into its base model as a plain checkpoint that loads without peft.

    The folder also gets the adapter folder's tokenizer, generation settings and run_config.yaml, so
    that titlegen-predict treats both alike. It is written atomically, and never over an existing one.
    """

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise TitlegenError(f"{adapter_dir}: not an adapter folder (it has no {ADAPTER_CONFIG})")
    with atomic_output_dir(output_dir) as tmp:  # refuses an existing output before any work
        model = load_model(str(adapter_dir), merge_adapter=True)
        tokenizer = load_tokenizer(str(adapter_dir))
        model.save_pretrained(tmp)
        follow_umask(tmp)
        tokenizer.save_pretrained(tmp)
        if (adapter_dir / "run_config.yaml").is_file():
            shutil.copyfile(adapter_dir / "run_config.yaml", tmp / "run_config.yaml")
