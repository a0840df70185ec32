"""Building the model a run trains: from a pretrained folder or from a config, frozen in parts, with LoRA adapters.

Loading and checking a model folder is `titlegen.model_folder`'s job; this module builds on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from titlegen import TitlegenError
from titlegen.lora import add_lora
from titlegen.model_folder import load_model_folder, load_tokenizer
from titlegen.spans import encode_articles
from titlegen.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)


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


def starting_model(model_args, training_args, texts: Callable[[], Iterable[str]], output_dir: Path, resumed: bool):
    """The tokenizer and model a training run starts from: a pretrained folder or hub id, or a model built from
    ``model_type`` and ``config_overrides`` with a SentencePiece tokenizer trained on the run's `texts`.

    Args:
        model_args: `titlegen.arguments.ModelArguments`.
        training_args: The run's ``Seq2SeqTrainingArguments``: under a launcher, the process that saves trains
            the tokenizer while the others wait, then load it.
        texts: Gives the training text (articles and titles) for a new tokenizer; called only when one is trained.
        output_dir: The run's folder; a new tokenizer is written to its ``tokenizer/``.
        resumed: Whether the run resumes: a new model then loads the tokenizer the interrupted run trained.

    Returns:
        ``(tokenizer, model)``.
    """
    if model_args.model_name_or_path:
        start = load_model_folder(model_args.model_name_or_path, model_args.cache_dir, model_args.tokenizer_name)
        return start.tokenizer, start.model
    tokenizer_dir = output_dir / "tokenizer"
    if model_args.tokenizer_name:
        tokenizer = load_tokenizer(model_args.tokenizer_name, model_args.cache_dir)
    elif resumed and tokenizer_dir.is_dir():  # the tokenizer the interrupted run trained
        tokenizer = load_tokenizer(str(tokenizer_dir))
    else:
        # Under a launcher, the process that saves trains it and the others wait, then load it: process 0 alone when
        # output_dir is shared by the machines (the default), process 0 of each machine with save_on_each_node, as
        # transformers saves checkpoints. Two machines writing one shared folder at once would race.
        with training_args.main_process_first(local=training_args.save_on_each_node, desc="training the tokenizer"):
            if not training_args.should_save:
                tokenizer = load_tokenizer(str(tokenizer_dir))
            else:
                logger.info("training a %s SentencePiece tokenizer of at most %d tokens",
                            model_args.tokenizer_type, model_args.tokenizer_vocab_size)  # fmt: skip
                corpus = texts()
                if model_args.tokenizer_copy_slots:
                    corpus = encode_articles(list(corpus))[0]
                tokenizer = train_tokenizer(
                    corpus,
                    tokenizer_dir,
                    model_args.tokenizer_vocab_size,
                    model_type=model_args.tokenizer_type,
                    copy_slots=model_args.tokenizer_copy_slots,
                )
    return tokenizer, build_model(model_args.model_type, tokenizer, model_args.config_overrides)


def adapt_for_training(
    model,
    lora_args,
    freeze_encoder_weights: bool = False,
    freeze_embedding_weights: bool = False,
    fsdp: bool = False,
):
    """The model as a run trains it: parts frozen as asked, then LoRA adapters when ``lora_args.use_lora``.

    One set-up for titlegen-train, titlegen-rl and the memory estimate (`titlegen.memory.meta_model`), so that what
    is estimated is what is trained.

    Args:
        model: The starting model.
        lora_args: `titlegen.arguments.LoraArguments`.
        freeze_encoder_weights: Train only the decoder (`freeze_encoder`).
        freeze_embedding_weights: Keep the token embeddings fixed (`freeze_embeddings`).
        fsdp: The run shards the model with FSDP: one FSDP group for the embedding's one weight
            (`share_embedding_module`).

    Returns:
        The model to train: `model` itself, or the peft model around it.
    """
    if freeze_encoder_weights:
        logger.info("froze %d encoder parameters", freeze_encoder(model))
    if freeze_embedding_weights:
        logger.info("froze %d embedding parameters", freeze_embeddings(model))
    if fsdp:
        share_embedding_module(model)
    if lora_args.use_lora:
        model = add_lora(
            model, lora_args.lora_r, lora_args.lora_alpha, lora_args.lora_dropout, lora_args.lora_target_modules
        )
    return model


def log_parameters(model) -> None:
    """Logs how many of the model's parameters a run trains."""
    trainable, total = count_parameters(model)
    logger.info("parameters: %d trainable of %d (%.1f%%)", trainable, total, 100 * trainable / total)
