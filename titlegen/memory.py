"""Memory: what one training step needs, counted before a GPU is rented.

mT5's 250,112-token vocabulary dominates its memory: the input embedding and the (untied) output layer
hold 256M of mT5-small's 300M weights, and the logits of a batch are batch x target length x 250,112
floats, kept three times over at the peak. `estimate_training_memory` adds up the parts of a training
step from the model's shapes, so that a batch size can be chosen before a GPU is rented; a model built
on the ``meta`` device is enough (`meta_model`). What to do when a run runs out of memory anyway is
`titlegen.memory_advice`'s job.

The activations are counted from transformers' T5 code (``modeling_t5.py``, which mT5 and UMT5 copy)
as PyTorch runs it on CPU, and `bench/memory.py` checks the totals against measured peaks. On CUDA,
dropout keeps 1-byte masks instead of 4-byte noise and the attention kernels keep no S x S
probabilities, so there the estimate errs on the safe side.
"""

from __future__ import annotations

import dataclasses

from titlegen import TitlegenError
from titlegen.model_folder import load_config
from titlegen.modeling import adapt_for_training, new_model_config, untie_output_layer

GIB = 2**30
FP32, BF16 = 4, 2

# The settings an estimate depends on, by their config names.
SETTINGS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_source_length",
    "max_target_length",
    "optim",
    "bf16",
    "activation_checkpointing",
)

# Optimizer state in bytes per trainable weight, by transformers' `optim` names. Adafactor (factored
# second moments and no momentum, as `optim: adafactor` sets it up) is counted from the weights' shapes.
OPTIMIZER_STATE = {
    "adamw_torch_fused": 2 * FP32,  # first and second moments
    "adamw_torch": 2 * FP32,
    "adagrad": FP32,  # the sum of squared gradients
    "sgd": 0,  # no momentum, unless optim_args gives one
}
# Temporaries of the optimizer step in bytes per trainable weight: torch's AdamW computes the update of
# all weights at once on CUDA (its foreach implementation); the fused kernel needs none.
STEP_TEMPORARIES = {"adamw_torch": FP32}


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device needs for one training step, by part, and their peak."""

    parameters: int
    trainable: int
    optim: str
    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    logits: int
    step_temporaries: int
    peak: int
    notes: tuple[str, ...] = ()

    def table(self) -> str:
        """The parts as an aligned text table, in GiB."""
        rows = [
            ("weights", self.weights, f"{self.parameters:,} parameters, fp32"),
            ("gradients", self.gradients, f"{self.trainable:,} trainable, fp32"),
            ("optimizer state", self.optimizer_state, self.optim),
            ("activations", self.activations, "kept for the backward pass, per micro-batch"),
            ("logits", self.logits, "batch x target length x vocabulary floats, 3 copies in the loss's backward"),
            ("optimizer step", self.step_temporaries, "temporaries while the weights are updated"),
            ("peak", self.peak, "weights + optimizer state + the larger of the backward pass and the step"),
        ]
        lines = [f"  {name:<16}{size / GIB:7.2f} GiB   {note}".rstrip() for name, size, note in rows]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])


def estimate_training_memory(
    model,
    *,
    per_device_train_batch_size: int,
    max_source_length: int,
    max_target_length: int,
    optim: str = "adamw_torch_fused",
    bf16: bool = False,
    activation_checkpointing: bool = False,
    gradient_accumulation_steps: int = 1,
) -> MemoryEstimate:
    """Estimates the peak memory of one training step of a T5-family model on one device.

    Every batch is taken to be full length (padded to the longest example, as the collator does, so
    this is the worst case). Arguments are named as the config settings they come from.

    Args:
        model: The model to train, on any device (``meta`` costs nothing); frozen weights
            (``requires_grad=False``) get no gradient and no optimizer state.
        per_device_train_batch_size: Examples per micro-batch.
        max_source_length: Article tokens.
        max_target_length: Title tokens.
        optim: The optimizer, as transformers names it (``adamw_torch_fused``, ``adafactor``, ...).
        bf16: bfloat16 autocast (the weights stay fp32).
        activation_checkpointing: Layers keep only their inputs and are recomputed in the backward pass.
        gradient_accumulation_steps: Above 1, the gradients stay allocated while later micro-batches run.

    Returns:
        The parts and their peak, in bytes.
    """
    import torch

    config = model.config
    if not all(hasattr(config, name) for name in ("d_model", "d_ff", "d_kv", "num_heads")):
        raise TitlegenError(
            f"memory estimates know the T5 family (t5, mt5, umt5); model_type {config.model_type!r} is not one"
        )
    weights = {id(p): p for p in model.parameters()}.values()  # tied weights count once
    trainable = [p for p in weights if p.requires_grad]
    n_parameters = sum(p.numel() for p in weights)
    n_trainable = sum(p.numel() for p in trainable)
    notes = []

    if optim == "adafactor":
        optimizer_state = FP32 * sum(_adafactor_floats(p.shape) for p in trainable)
        # Updating one weight holds two temporaries of its size at once.
        step_temporaries = 2 * FP32 * max((p.numel() for p in trainable), default=0)
    else:
        if optim not in OPTIMIZER_STATE:
            notes.append(f"optimizer {optim!r} is not known here: counted as AdamW (8 bytes per weight)")
        optimizer_state = OPTIMIZER_STATE.get(optim, 2 * FP32) * n_trainable
        step_temporaries = STEP_TEMPORARIES.get(optim, 0) * n_trainable

    batch = per_device_train_batch_size
    activations = batch * activation_bytes_per_example(
        config, max_source_length, max_target_length, bf16=bf16, activation_checkpointing=activation_checkpointing
    )
    if bf16:
        # Autocast keeps a bfloat16 copy of every linear layer's weight from the forward to the backward pass.
        linear = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
        activations += BF16 * sum(w.numel() for w in linear.values())
    # The loss keeps fp32 log-probabilities; its backward adds their gradient and the logits' gradient.
    # They stay fp32 under autocast too, which runs cross entropy in fp32.
    logits_copy = FP32 * batch * max_target_length * config.vocab_size
    gradients = FP32 * n_trainable
    held = gradients if gradient_accumulation_steps > 1 else 0  # from the earlier micro-batches
    output_grad = FP32 * _trainable_numel(model.get_output_embeddings().weight)
    embedding_grad = FP32 * _trainable_numel(model.get_input_embeddings().weight)
    backward = max(
        held + activations + 3 * logits_copy,  # the loss's backward, with every activation still kept
        held + activations + logits_copy + output_grad,  # the output layer's weight gradient
        # Last, the shared embedding gets its second gradient (encoder and decoder both look tokens up).
        gradients + embedding_grad,
    )
    peak = FP32 * n_parameters + optimizer_state + max(backward, gradients + step_temporaries)
    return MemoryEstimate(
        parameters=n_parameters,
        trainable=n_trainable,
        optim=optim,
        weights=FP32 * n_parameters,
        gradients=gradients,
        optimizer_state=optimizer_state,
        activations=activations,
        logits=3 * logits_copy,
        step_temporaries=step_temporaries,
        peak=peak,
        notes=tuple(notes),
    )


def _trainable_numel(weight) -> int:
    return weight.numel() if weight.requires_grad else 0


def _adafactor_floats(shape) -> int:
    """Adafactor's second-moment floats for one weight: a row and a column factor for a matrix."""
    numel = 1
    for size in shape:
        numel *= size
    if len(shape) < 2:
        return numel
    return numel // shape[-1] + numel // shape[-2]


def activation_bytes_per_example(
    config, source_length: int, target_length: int, *, bf16: bool = False, activation_checkpointing: bool = False
) -> int:
    """Bytes a T5-family model keeps for its backward pass per example, the logits aside.

    Counted per token from transformers' T5 layers as PyTorch runs them on CPU: each RMS norm keeps
    its input, normalised input and output (3 x d_model); attention keeps q, k, v and its output
    (4 x inner), and per head 1 + 2 x dropout rows of attention probabilities (softmax, dropout
    noise, dropped probabilities); the gated-GELU feed-forward keeps 7 + dropout tensors of d_ff (its
    tanh GELU is written out in elementwise steps); each residual dropout keeps its fp32 noise. Under
    bf16 autocast the feed-forward's tensors are bfloat16; norms, attention and residuals stay fp32.
    """
    d, ff, heads = config.d_model, config.d_ff, config.num_heads
    inner = heads * config.d_kv
    dropout = 1 if config.dropout_rate > 0 else 0
    ff_tensors = (7 if getattr(config, "is_gated_act", False) else 2) + dropout
    ff_bytes = BF16 if bf16 else FP32
    src, tgt = source_length, target_length
    encoder_layers = config.num_layers
    decoder_layers = config.num_decoder_layers if config.num_decoder_layers is not None else config.num_layers

    # Per source token: self-attention and feed-forward sublayers.
    encoder_layer = src * (
        FP32 * ((6 + 2 * dropout) * d + 4 * inner + (1 + 2 * dropout) * heads * src) + ff_bytes * ff_tensors * ff
    )
    # Per target token: self-attention, cross-attention and feed-forward; the cross-attention also
    # keeps k and v of every source token.
    decoder_layer = (
        tgt
        * (
            FP32 * ((9 + 3 * dropout) * d + 6 * inner + (1 + 2 * dropout) * heads * (tgt + src))
            + ff_bytes * ff_tensors * ff
        )
        + FP32 * 2 * inner * src
    )
    if activation_checkpointing:
        # Each layer keeps only its input; the backward pass recomputes one layer at a time.
        layers = FP32 * d * (encoder_layers * src + decoder_layers * tgt) + max(encoder_layer, decoder_layer)
    else:
        layers = encoder_layers * encoder_layer + decoder_layers * decoder_layer
    # Outside the layers: the embeddings' dropout, the final norms and their dropout, the output layer's input.
    ends = FP32 * d * ((2 + 2 * dropout) * src + (3 + 2 * dropout) * tgt)
    return layers + ends


def meta_model(model_args, lora_args):
    """The model a training run with `model_args` (and `lora_args`) would train, built on the ``meta`` device.

    Frozen parts and LoRA adapters are applied as the training recipe applies them. A model built from
    scratch gets tokenizer_vocab_size tokens, the most its tokenizer can have.
    """
    import torch
    from transformers import AutoModelForSeq2SeqLM, PretrainedConfig

    if model_args.model_name_or_path:
        config = load_config(model_args.model_name_or_path, model_args.cache_dir)
        saved, _ = PretrainedConfig.get_config_dict(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    else:
        config = new_model_config(
            model_args.model_type, model_args.config_overrides, vocab_size=model_args.tokenizer_vocab_size
        )
        saved = {}
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        if tied and saved.get("tie_word_embeddings") is False:
            # google/mt5-small keeps its output layer apart, and from_pretrained loads it so, although
            # MT5Config always says tie_word_embeddings=True; its config.json says false.
            untie_output_layer(model)
        model = adapt_for_training(model, lora_args, model_args.freeze_encoder, model_args.freeze_embeddings)
    return model


def format_bytes(size: int) -> str:
    """``1.4 GiB``, ``35.2 MiB`` or ``12.0 KiB``: three significant figures or so."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.1f} KiB"


def format_value(value) -> str:
    """A setting's value as it is written on the command line (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def memory_settings(*configs) -> dict:
    """The settings in `SETTINGS`, read from parsed config dataclasses (enums as their values)."""
    return {name: _value(getattr(c, name)) for name in SETTINGS for c in configs if hasattr(c, name)}


def _value(setting):
    return getattr(setting, "value", setting)
