"""Model folders in the hub's own layout, as a download of google/mt5-small's main branch has them.

``config.json`` (``tokenizer_class: T5Tokenizer``, ``tie_word_embeddings: false``), ``generation_config.json``,
``spiece.model`` with ``tokenizer_config.json`` and ``special_tokens_map.json`` (no ``tokenizer.json``), and
the weights as ``pytorch_model.bin`` written by ``torch.save`` (or sharded, with ``pytorch_model.bin.index.json``),
no safetensors. Only the sizes are a tiny model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import TINY_MODEL

# The extra rows of mT5's embedding: vocab_size 250112 for the 250100 pieces of its spiece.model.
EXTRA_ROWS = 12
SPECIAL_TOKENS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def write_hub_layout(folder: Path, spiece_model: Path, shards: int = 1, seed: int = 0) -> Path:
    """Writes a tiny mT5 with an untied output layer in the hub's layout.

    Args:
        folder: The folder to write (created).
        spiece_model: The SentencePiece model to hand out as ``spiece.model``.
        shards: 1 for ``pytorch_model.bin``, more for ``pytorch_model-0000i-of-0000n.bin`` and its index.
        seed: Seeds the random weights.
    """
    import sentencepiece as spm
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration

    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(spiece_model.read_bytes())
    pieces = spm.SentencePieceProcessor(model_file=str(spiece_model)).get_piece_size()
    sizes = {key: int(value) for key, value in (pair.split("=") for pair in TINY_MODEL.split(",") if "." not in pair)}
    config = {
        "architectures": ["MT5ForConditionalGeneration"],
        **sizes,
        "decoder_start_token_id": 0,
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "mt5",
        "pad_token_id": 0,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "tokenizer_class": "T5Tokenizer",
        "transformers_version": "4.10.0.dev0",
        "use_cache": True,
        "vocab_size": pieces + EXTRA_ROWS,
    }
    write_json(folder / "config.json", config)
    write_json(
        folder / "generation_config.json",
        {"_from_model_config": True, "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0},
    )
    write_json(folder / "special_tokens_map.json", SPECIAL_TOKENS)
    write_json(
        folder / "tokenizer_config.json",
        {**SPECIAL_TOKENS, "extra_ids": 0, "additional_special_tokens": None, "special_tokens_map_file": None,
         "tokenizer_file": None, "name_or_path": "google/mt5-small", "sp_model_kwargs": {},
         "tokenizer_class": "T5Tokenizer"},
    )  # fmt: skip

    torch.manual_seed(seed)
    model = MT5ForConditionalGeneration(MT5Config.from_pretrained(folder))
    # MT5Config says tie_word_embeddings=True whatever config.json holds: untie as the hub's weights are.
    embeddings = model.get_input_embeddings().weight
    model.lm_head = torch.nn.Linear(embeddings.shape[1], embeddings.shape[0], bias=False)
    torch.nn.init.normal_(model.lm_head.weight, std=embeddings.shape[1] ** -0.5)
    with torch.no_grad():
        embeddings.normal_(std=embeddings.shape[1] ** -0.5)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    names = list(state)
    weight_map = {}
    for index in range(shards):
        shard = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = names[index::shards]
        torch.save({name: state[name] for name in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(folder / "pytorch_model.bin.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return folder


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
