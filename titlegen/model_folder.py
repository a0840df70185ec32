"""Model folders: loading a model and its tokenizer, by folder or hub id, and checking that they fit together.

Every command that starts from a model goes through `load_model_folder`: a full model folder as training
writes it, a pruned one, a LoRA adapter folder (loaded with its base model) or a hub id. What is read, and
why a folder from elsewhere cannot run code when it is loaded, is in README.md (Loading models). A missing
or damaged part is a `TitlegenError` naming the folder and the file, found before the model is used.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titlegen import TitlegenError
from titlegen.arguments import DataArguments
from titlegen.config import read_yaml

# The files a model folder's loading reads: what a run that uses the model depends on (see `model_files`).
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "run_config.yaml",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",  # the hub's mT5 checkpoints, whole or sharded
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "pruned_vocab.json",
    "model.bin",  # a CTranslate2 export's weights, and what else titlegen-export writes
    "*vocabulary*",
    "titlegen_export.json",
)
# What a tokenizer folder holds: one of these files has the vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "vocab.json")


ADAPTER_CONFIG = "adapter_config.json"  # marks a LoRA adapter folder, as peft writes it
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OFFLINE_HINT = (
    "Without network access, point model_name_or_path at a local folder that holds the model "
    "(config.json and model.safetensors or pytorch_model.bin, e.g. one saved by titlegen-train or downloaded "
    "from the hub), or train a model from scratch with an offline config such as trainer_args/tiny_offline.yaml."
)
# What a hub id looks like ("google/mt5-small", "t5-small"); anything else that names no folder is a missing folder.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# The weights files a model folder may hold, in the order transformers prefers them.
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_tokenizer(name_or_path: str, cache_dir: str | None = None):
    """Loads a tokenizer by hub id or folder, with an actionable error when it cannot be found."""
    from transformers import AutoTokenizer

    check_model_name(name_or_path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TitlegenError(f"cannot load the tokenizer '{name_or_path}': {_reason(err, name_or_path)}") from err
    return restore_byte_fallback(tokenizer)


def check_model_name(name_or_path: str, what: str = "model") -> None:
    """Refuses a folder that does not exist and an unreadable config.json, naming the folder or file.

    Without this, transformers takes a missing folder for a hub id ("Repo id must be in the form ...") and
    reports a damaged config.json as a tokenizer error, since the tokenizer's loading reads it first.
    """
    path = Path(name_or_path)
    if not path.exists():
        if not HUB_ID.fullmatch(name_or_path):
            raise TitlegenError(f"{name_or_path}: no such {what} folder")
        return  # a hub id, or a relative folder that is missing: from_pretrained's error says which
    config = path / "config.json"
    if not config.is_file():
        return
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TitlegenError(f"{config}: not valid JSON ({err})") from None
    if not isinstance(settings, dict):
        raise TitlegenError(f"{config}: holds a {type(settings).__name__}, not a JSON object of settings")


def restore_byte_fallback(tokenizer):
    """A tokenizer converted from a byte-fallback SentencePiece model, with its byte fallback back.

    mT5's ``spiece.model`` (as the hub serves it, with no ``tokenizer.json``) spells any character outside
    its vocabulary as UTF-8 byte pieces. transformers 5.x's ``T5Tokenizer`` rebuilds that model with
    ``byte_fallback=False`` whenever it is loaded, even from its own ``tokenizer.json``, so such characters
    become ``<unk>`` and titles lose them. The backend's model and decoder are rebuilt here with byte
    fallback, as SentencePiece itself encodes and decodes, and returned as the plain tokenizer that titlegen
    trains (`titlegen.tokenizer`), which saves a ``tokenizer.json`` that loads unchanged.

    Returns:
        `tokenizer` itself when there is nothing to restore.
    """
    from tokenizers import decoders
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if backend is None or not vocab_file or not Path(vocab_file).is_file():
        return tokenizer
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "Unigram" or spec["model"].get("byte_fallback") or not _has_byte_fallback(vocab_file):
        return tokenizer
    vocab = [(piece, score) for piece, score in spec["model"]["vocab"]]
    backend.model = Unigram(vocab, unk_id=spec["model"]["unk_id"], byte_fallback=True)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), backend.decoder])
    restored = PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=tokenizer.model_max_length, **tokenizer.special_tokens_map
    )
    restored.name_or_path = tokenizer.name_or_path
    restored.vocab_file = vocab_file  # the SentencePiece model, which vocabulary pruning rewrites too
    return restored


def _has_byte_fallback(model_file: str | Path) -> bool:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as err:  # protobuf's DecodeError; a file the tokenizer already read is rarely damaged
        raise TitlegenError(f"{model_file}: not a SentencePiece model ({err})") from None
    return proto.trainer_spec.byte_fallback


def load_model(name_or_path: str, cache_dir: str | None = None, merge_adapter: bool = True, **kwargs):
    """Loads a pretrained seq2seq model by hub id or folder, or a LoRA adapter folder with its base model.

    Weights are read from ``model.safetensors`` or, where a folder has none (the hub's mT5 checkpoints),
    from ``pytorch_model.bin`` with torch's weights-only unpickler, which builds tensors and plain containers
    and refuses any other object; remote code is never run. So a folder from elsewhere cannot execute code
    when it is loaded. Weights that are not finite (a damaged file) are refused.

    Args:
        name_or_path: Hub id, model folder, or adapter folder (one with ``adapter_config.json``, as a
            ``use_lora`` run writes). An adapter's base model is loaded from the ``base_model_name_or_path``
            its config names.
        cache_dir: Where downloaded models are cached.
        merge_adapter: Merge an adapter into the base weights and return a plain model, which generates
            as fast as the base model; otherwise return the peft model with the adapter kept apart.
        **kwargs: Passed to ``from_pretrained`` (e.g. ``dtype``).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM

    if (Path(name_or_path) / ADAPTER_CONFIG).is_file():
        return _load_adapter(name_or_path, cache_dir, merge_adapter, **kwargs)
    check_model_name(name_or_path)
    if Path(name_or_path).exists() and not (Path(name_or_path) / "config.json").is_file():
        raise TitlegenError(f"{name_or_path}: not a model folder (it has no config.json)")
    try:
        # use_safetensors=None: safetensors where there are any, else the .bin files; weights_only=True is
        # transformers' default, stated here because the safety of loading a .bin rests on it.
        model = AutoModelForSeq2SeqLM.from_pretrained(
            name_or_path,
            cache_dir=cache_dir,
            use_safetensors=None,
            weights_only=True,
            trust_remote_code=False,
            **kwargs,
        )
    except pickle.UnpicklingError as err:  # a .bin holding objects other than tensors: never unpickled
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise TitlegenError(
            f"cannot load the model '{name_or_path}': its .bin weights hold objects other than tensors"
            f"{f' ({found.group(1)})' if found else ''}, which are not loaded because unpickling them could run code"
        ) from err
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing, damaged or mismatched weights
        raise TitlegenError(f"cannot load the model '{name_or_path}': {_reason(err, name_or_path)}") from err
    check_finite_weights(model, name_or_path)
    return model


def check_finite_weights(model, name_or_path: str) -> None:
    """Refuses a model with a NaN or infinite weight: a damaged or random weights file, whose titles would be
    noise. Names the tensor and, for a local folder, the file it came from."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            raise TitlegenError(
                f"{_weights_file(name_or_path, name)}: weight {name} holds NaN or infinite values; "
                "the weights file is damaged"
            )


def _weights_file(name_or_path: str, tensor: str) -> str:
    """The file of a model folder that holds `tensor` (as far as its index says), else the folder."""
    folder = Path(name_or_path)
    for name in WEIGHTS_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shard = json.loads(path.read_text(encoding="utf-8"))["weight_map"].get(tensor)
            except (ValueError, KeyError, AttributeError):
                shard = None
            return str(folder / shard) if shard else str(folder)
        return str(path)
    return name_or_path


def _load_adapter(adapter_dir: str, cache_dir: str | None, merge: bool, **kwargs):
    from peft import PeftConfig, PeftModel
    from transformers import GenerationConfig

    if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():
        raise TitlegenError(
            f"{adapter_dir}: no {ADAPTER_WEIGHTS}; adapters are loaded from safetensors only, since a pickled "
            "adapter_model.bin can run code when it is loaded"
        )
    base = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not base:
        raise TitlegenError(f"{adapter_dir}/{ADAPTER_CONFIG}: base_model_name_or_path is not set")
    try:
        base_model = load_model(base, cache_dir, **kwargs)
    except TitlegenError as err:
        raise TitlegenError(f"{adapter_dir}: cannot load the adapter's base model: {err}") from err
    model = PeftModel.from_pretrained(base_model, adapter_dir)
    if merge:
        model = model.merge_and_unload()
    if (Path(adapter_dir) / "generation_config.json").is_file():  # the title settings of the adapter's run
        model.generation_config = GenerationConfig.from_pretrained(adapter_dir)
    return model


def load_config(name_or_path: str, cache_dir: str | None = None):
    """Loads a pretrained model's config by hub id or folder, with an actionable error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TitlegenError(f"cannot load the config of '{name_or_path}': {_reason(err, name_or_path)}") from err


@dataclass
class ModelFolder:
    """A loaded, validated model and its tokenizer."""

    model: Any
    tokenizer: Any


def load_model_folder(
    name_or_path: str, cache_dir: str | None = None, tokenizer_name: str | None = None, **kwargs
) -> ModelFolder:
    """Loads a model folder (full, pruned or LoRA adapter) or hub id, and checks its parts fit together.

    Checked before the model is used: the folder holds a tokenizer, every token id of the tokenizer and of
    the generation config has a row in the model's embedding, and run_config.yaml (when there is one) is
    readable. A missing or damaged file is a `TitlegenError` naming the folder and the file.

    Args:
        name_or_path: Model folder, adapter folder, or hub id.
        cache_dir: Where downloaded models are cached.
        tokenizer_name: A tokenizer folder or hub id to use instead of the model's own.
        **kwargs: Passed to `load_model` (e.g. ``dtype``).
    """
    check_model_name(name_or_path)  # a missing folder or damaged config.json, named as such
    tokenizer_name = tokenizer_name or name_or_path
    if Path(tokenizer_name).is_dir():
        check_tokenizer_files(Path(tokenizer_name))
    trained_settings(name_or_path)  # a damaged run_config.yaml fails here, before the weights load
    tokenizer = load_tokenizer(tokenizer_name, cache_dir)
    model = load_model(name_or_path, cache_dir, **kwargs)
    check_model_fits_tokenizer(model, tokenizer, name_or_path)
    return ModelFolder(model, tokenizer)


def check_tokenizer_files(folder: Path) -> None:
    """Refuses a model folder without a tokenizer: transformers would build an empty one and write empty titles."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TitlegenError(
            f"{folder}: no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)}); "
            "copy in the tokenizer the model was trained with"
        )


def check_model_fits_tokenizer(model, tokenizer, where: str) -> None:
    """Refuses a tokenizer or generation config whose token ids the model's embedding has no row for."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise TitlegenError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows}; "
            "the tokenizer is not the one the model was trained with"
        )
    config = model.generation_config
    for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
        ids = getattr(config, name, None)
        for token_id in ids if isinstance(ids, list) else [ids]:
            if token_id is not None and not 0 <= token_id < rows:
                raise TitlegenError(f"{where}/generation_config.json: {name} {token_id} is not a token of the model")


def model_files(name_or_path: str | Path) -> list[Path]:
    """The files of a model folder that its loading reads (none for a hub id).

    A run's fingerprint covers these, and only these: files that a run writes into the folder (a
    prediction and its progress file, say) do not make the model look changed.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        return []
    return sorted({p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def trained_settings(model_dir: str | Path, overrides: Any = None) -> DataArguments:
    """The data settings a model folder was trained with: its run_config.yaml over `DataArguments`' defaults.

    A hub id, or a folder without run_config.yaml, gets the defaults. `overrides`, a dataclass instance of a
    command's preprocessing settings, replaces each setting it gives (one that is None keeps the trained value).
    """
    settings = DataArguments()
    names = {f.name for f in dataclasses.fields(DataArguments)}
    path = Path(model_dir) / "run_config.yaml"
    saved = read_yaml(str(path)) if path.is_file() else {}
    given = vars(overrides).items() if overrides is not None else ()
    return dataclasses.replace(
        settings,
        **{k: v for k, v in saved.items() if k in names},
        **{k: v for k, v in given if v is not None and k in names},
    )


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _reason(err: Exception, name_or_path: str) -> str:
    """Why loading failed, in one line; for a name that is no local folder, how to do without the hub."""
    if Path(name_or_path).exists():
        return _first_line(err)
    return f"there is no folder '{name_or_path}' and the hub did not serve it ({_first_line(err)}). {OFFLINE_HINT}"
