"""Loading and building models and tokenizers."""

from __future__ import annotations

from pathlib import Path

from titlegen import TitlegenError

ADAPTER_CONFIG = "adapter_config.json"  # marks a LoRA adapter folder, as peft writes it
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OFFLINE_HINT = (
    "Without network access, point model_name_or_path at a local folder that holds the model "
    "(config.json and model.safetensors, e.g. one saved by titlegen-train), or train a model from "
    "scratch with an offline config such as trainer_args/tiny_offline.yaml."
)


def load_tokenizer(name_or_path: str, cache_dir: str | None = None):
    """Loads a tokenizer by hub id or folder, with an actionable error when it cannot be found."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TitlegenError(f"cannot load the tokenizer '{name_or_path}': {_reason(err, name_or_path)}") from err


def load_model(name_or_path: str, cache_dir: str | None = None, merge_adapter: bool = True, **kwargs):
    """Loads a pretrained seq2seq model by hub id or folder, or a LoRA adapter folder with its base model.

    Weights are read from safetensors only, and remote code is never run, so a folder from elsewhere
    cannot execute code when it is loaded.

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
    if Path(name_or_path).exists() and not (Path(name_or_path) / "config.json").is_file():
        raise TitlegenError(f"{name_or_path}: not a model folder (it has no config.json)")
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(
            name_or_path, cache_dir=cache_dir, use_safetensors=True, trust_remote_code=False, **kwargs
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing, damaged or mismatched weights
        raise TitlegenError(f"cannot load the model '{name_or_path}': {_reason(err, name_or_path)}") from err


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


def share_embedding_module(model) -> bool:
    """Makes a T5-family model's encoder and decoder look tokens up in its ``shared`` module itself.

    transformers 5 gives ``encoder.embed_tokens`` and ``decoder.embed_tokens`` modules of their own, tied to
    ``shared.weight``. FSDP2 (torch 2.13) refuses a parameter held by two FSDP groups, and accelerate puts
    ``shared`` (with ``lm_head`` when tied) in a group of its own while the two look-up modules stay in the root
    group: "Parameter 'shared.weight' is shared with a parameter already managed by another FSDP group". One
    module in three places is one parameter in one group. Forward, state dict and saved files stay the same.

    Returns:
        Whether the model had such tied look-ups (False, and nothing changed, for any other model).
    """
    shared = getattr(model, "shared", None)
    stacks = [getattr(model, name, None) for name in ("encoder", "decoder")]
    stacks = [s for s in stacks if s is not None and hasattr(s, "embed_tokens")]
    if shared is None or not stacks or any(s.embed_tokens.weight is not shared.weight for s in stacks):
        return False
    for stack in stacks:
        stack.embed_tokens = shared
    return True


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
    return _first_line(err) if Path(name_or_path).exists() else f"{_first_line(err)}. {OFFLINE_HINT}"
