"""Loading and building models and tokenizers."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from titlegen import TitlegenError

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


def build_model(model_type: str, tokenizer, config_overrides: str | None = None):
    """Builds a randomly initialised seq2seq model whose vocabulary matches `tokenizer`.

    Args:
        model_type: A transformers model type, e.g. ``mt5``.
        tokenizer: Decides vocab_size and the pad/eos/decoder-start ids.
        config_overrides: ``"key=value,key=value"`` settings, e.g. ``"d_model=256,num_layers=4"``.
    """
    from transformers import AutoModelForSeq2SeqLM

    config = new_model_config(
        model_type,
        config_overrides,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForSeq2SeqLM.from_config(config)
    fix_tied_output_scale(model)
    return model


def new_model_config(model_type: str, config_overrides: str | None = None, **settings):
    """The config of a model built from scratch: `settings`, then the ``key=value`` `config_overrides`.

    The overrides are typed as the config's own values (``update_from_string``), then the config is built
    again with them, so that the settings its constructor derives follow: ``feed_forward_proj=relu`` set
    on a built T5 config would leave it gated, with GELU (``is_gated_act``, ``dense_act_fn``).
    """
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **settings)
    if not config_overrides:
        return config
    try:
        config.update_from_string(config_overrides)
    except ValueError as err:
        raise TitlegenError(f"config_overrides={config_overrides!r}: {err}") from err
    overridden = {pair.split("=", 1)[0] for pair in config_overrides.split(",")}
    return AutoConfig.for_model(model_type, **{**settings, **{key: getattr(config, key) for key in overridden}})


def load_config(name_or_path: str, cache_dir: str | None = None):
    """Loads a pretrained model's config by hub id or folder, with an actionable error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TitlegenError(f"cannot load the config of '{name_or_path}': {_reason(err, name_or_path)}") from err


def fix_tied_output_scale(model) -> None:
    """Rescales a freshly built T5-family model so that its first logits are near zero.

    transformers 5.x ties mT5's output layer to its input embedding but no longer multiplies the
    decoder output by d_model**-0.5, as T5 did for tied weights. With embeddings of std 1 (T5's init),
    the initial logits then have std ~sqrt(d_model) (about 17 for d_model=256) and the initial loss is
    ~140 instead of ln(vocab_size), which costs a CPU budget many steps to undo. An embedding std of
    d_model**-0.5 gives logits of std ~1; the pre-norm layers are unaffected by the input scale.
    """
    import torch

    config = model.config
    if getattr(config, "tie_word_embeddings", False) and hasattr(config, "d_model"):
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(mean=0.0, std=config.d_model**-0.5)


def freeze_encoder(model) -> int:
    """Stops gradients to the encoder (the shared embedding stays trainable for the decoder).

    Returns:
        The number of parameters frozen.
    """
    shared = {id(p) for p in model.get_input_embeddings().parameters()}
    frozen = 0
    for param in model.get_encoder().parameters():
        if id(param) not in shared:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def freeze_embeddings(model) -> int:
    """Stops gradients to the token embeddings: the input embedding and the output layer, tied or not.

    Returns:
        The number of parameters frozen.
    """
    frozen = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for param in module.parameters() if module is not None else ():
            param.requires_grad_(False)
            frozen[id(param)] = param.numel()
    return sum(frozen.values())


def untie_output_layer(model) -> None:
    """Gives a T5-family model an output layer of its own, as google/mt5-small and T5 v1.1 have.

    Their checkpoints store ``lm_head`` apart from the input embedding, but in transformers 5.x
    ``MT5Config`` always says ``tie_word_embeddings=True``, so a model built from a config shares one
    matrix. ``from_pretrained`` unties the two when a checkpoint holds different values for both; this
    does the same: a new, differently initialised ``lm_head``, dropped from the model's tied-weights map
    so that nothing ties it back. Saved and reloaded, the model stays untied.
    """
    import torch

    embeddings = model.get_input_embeddings().weight
    lm_head = torch.nn.Linear(embeddings.shape[1], embeddings.shape[0], bias=False)
    torch.nn.init.normal_(lm_head.weight, std=embeddings.shape[1] ** -0.5)  # initial logits of std ~1
    model.set_output_embeddings(lm_head)
    model.all_tied_weights_keys.pop("lm_head.weight", None)


def count_parameters(model) -> tuple[int, int]:
    """Returns (trainable, total) parameter counts; tied weights count once."""
    seen: dict[int, object] = {}
    for param in model.parameters():
        seen.setdefault(id(param), param)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _reason(err: Exception, name_or_path: str) -> str:
    """Why loading failed, in one line; for a name that is no local folder, how to do without the hub."""
    if Path(name_or_path).exists():
        return _first_line(err)
    return f"there is no folder '{name_or_path}' and the hub did not serve it ({_first_line(err)}). {OFFLINE_HINT}"
