"""Export a model to CTranslate2 (``titlegen-export``), checked against the model before the folder is written.

`export_model` writes a CTranslate2 model folder that also holds the tokenizer, the generation settings
(generation_config.json) and run_config.yaml, so that a command given that folder needs nothing else; `CT2Engine`
(`titlegen.engines.ct2`) decodes it. `training_engine` exports a model in training for one evaluation
(``generation_backend: ct2``).

What CTranslate2 4.8.5's converter gets wrong, and what titlegen does about it: it scales the decoder output of
every T5-family model whose config says ``tie_word_embeddings``, and transformers 5.x says so for every mT5,
although mT5 never scales its output (T5 does only when its weights are tied). Greedy titles survive a uniform
scale of the logits; beam search and every score do not. `export_model` sets the scale the model really uses,
and checks the exported log-probabilities against the model's before it writes the folder.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Iterator
from pathlib import Path

from titlegen import TitlegenError
from titlegen.backends import DEFAULT_QUANTIZATION, EXPORT_FORMAT, EXPORT_MARKER, QUANTIZATIONS, is_export
from titlegen.data import atomic_output_dir, write_json
from titlegen.engines.ct2 import CT2Engine, choose_device
from titlegen.model_folder import load_model_folder

# The export's log-probabilities may differ from the model's by at most this much per token: float32
# weights compute the same function in another order; quantized ones round every weight.
LOG_PROB_TOLERANCE = {"float32": 1e-3}
QUANTIZED_LOG_PROB_TOLERANCE = 0.5


def export_model(model_dir: str | Path, output_dir: str | Path, quantization: str = DEFAULT_QUANTIZATION) -> dict:
    """Writes a model folder (a LoRA adapter is merged first) as a CTranslate2 model that titlegen can decode.

    The folder, written atomically, holds CTranslate2's model.bin, config.json and vocabulary, the tokenizer,
    generation_config.json, the source's run_config.yaml and ``titlegen_export.json`` (what was exported
    from where, and how well its log-probabilities agree with the model's).

    Args:
        model_dir: A model folder or hub id, or a LoRA adapter folder.
        output_dir: The folder to write; it must not exist (or be empty).
        quantization: The weight type, one of `QUANTIZATIONS`.

    Returns:
        What ``titlegen_export.json`` holds.

    Raises:
        TitlegenError: for an unknown quantization, a model CTranslate2 cannot convert, or an export whose
            log-probabilities are not the model's.
    """

    if quantization not in QUANTIZATIONS:
        raise TitlegenError(f"unknown quantization '{quantization}'; choose one of {', '.join(QUANTIZATIONS)}")
    if is_export(model_dir):
        raise TitlegenError(f"{model_dir}: already a CTranslate2 export; export the model folder it came from")
    with atomic_output_dir(output_dir) as tmp:  # refuses an existing output before any work
        folder = load_model_folder(str(model_dir))  # checked: tokenizer, weights, settings
        info = write_export(folder.model.float().eval(), folder.tokenizer, tmp, quantization, source=str(model_dir))
        if (Path(model_dir) / "run_config.yaml").is_file():
            shutil.copyfile(Path(model_dir) / "run_config.yaml", tmp / "run_config.yaml")
    return info


def write_export(model, tokenizer, folder: str | Path, quantization: str, source: str) -> dict:
    """Writes a loaded model (float32, on CPU) as a CTranslate2 export into an empty `folder`.

    Quantizing rounds the model's own tensors in place: give it a model that is not used afterwards.

    Returns:
        What ``titlegen_export.json`` holds.
    """

    probe = LogProbProbe(model, tokenizer)  # before converting: quantization rounds the model's tensors
    _converter(model, tokenizer).convert(str(folder), quantization=quantization, force=True)
    tokenizer.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    error = probe.error(folder)
    tolerance = LOG_PROB_TOLERANCE.get(quantization, QUANTIZED_LOG_PROB_TOLERANCE)
    if not error <= tolerance:
        raise TitlegenError(
            f"{source}: the {quantization} export's log-probabilities differ from the model's by up to "
            f"{error:.3g} per token (at most {tolerance} expected); CTranslate2 does not convert this model "
            "faithfully"
        )
    info = {
        "format": EXPORT_FORMAT,
        "source": source,
        "model_type": model.config.model_type,
        "quantization": quantization,
        "log_prob_error": error,
        "ctranslate2": _ctranslate2_version(),
    }
    write_json(Path(folder) / EXPORT_MARKER, info)
    return info


@contextlib.contextmanager
def training_engine(model, tokenizer) -> Iterator[CT2Engine]:
    """A CTranslate2 engine of a model in training, for one evaluation.

    A float32 copy of the weights (a LoRA model's adapters merged into it) is exported to a temporary folder
    and loaded in int8 compute on CPU (as ``titlegen-export``'s default), in half precision on a GPU.
    """
    import tempfile

    import torch
    from accelerate.utils import extract_model_from_parallel

    # Under mixed precision, accelerate wraps the model's forward in autocast; the copy's is unwrapped.
    snapshot = extract_model_from_parallel(copy.deepcopy(model), keep_fp32_wrapper=False)
    if hasattr(snapshot, "merge_and_unload"):  # a peft model
        snapshot = snapshot.merge_and_unload()
    snapshot = snapshot.to(device="cpu", dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory(prefix="titlegen-ct2-") as folder:
        write_export(snapshot, tokenizer, folder, "float32", source="the model in training")
        del snapshot
        device = choose_device()
        compute_type = "int8" if device == "cpu" else None
        # As many threads as training uses: CTranslate2's own default may take more than the process has.
        yield CT2Engine(folder, device=device, compute_type=compute_type, threads=torch.get_num_threads())


def _ctranslate2_version() -> str:
    import ctranslate2

    return ctranslate2.__version__


def scales_decoder_outputs(config) -> bool:
    """Whether a T5-family model multiplies its decoder output by d_model**-0.5 before the output layer.

    transformers 5.x: T5 does when its weights are tied (``scale_decoder_outputs``, set from the checkpoint's
    own ``tie_word_embeddings``), UMT5 when ``tie_word_embeddings``, mT5 never.
    """
    if config.model_type == "t5":
        return bool(getattr(config, "scale_decoder_outputs", config.tie_word_embeddings))
    if config.model_type == "umt5":
        return bool(config.tie_word_embeddings)
    return False


def _converter(model, tokenizer):
    """A CTranslate2 converter of an already loaded model (so that merged adapters and pruned models convert
    as they are), which scales T5-family outputs as the model does."""
    from ctranslate2.converters import Converter
    from ctranslate2.converters.transformers import _MODEL_LOADERS, T5Loader
    from ctranslate2.specs import model_spec

    class LoadedModelConverter(Converter):
        def _load(self):
            # The registry of CTranslate2's own converter, by config class; a private name, in a pinned version.
            loader = _MODEL_LOADERS.get(type(model.config).__name__)
            if loader is None:
                raise TitlegenError(f"CTranslate2 cannot convert {model.config.model_type} models")
            spec = loader(model, tokenizer)
            if isinstance(loader, T5Loader):
                scale = scales_decoder_outputs(model.config)
                spec.decoder.scale_outputs = model.config.d_model**-0.5 if scale else model_spec.OPTIONAL
            return spec

    return LoadedModelConverter()


class LogProbProbe:
    """The model's log-probabilities of a fixed title for a fixed article, to check an export against.

    Source and target are spread-out token ids: their sense does not matter, as any wrong scale or weight
    shows on every token.
    """

    def __init__(self, model, tokenizer, lengths: tuple[int, int] = (24, 12)):
        import torch

        vocabulary = min(len(tokenizer), model.config.vocab_size)
        special = set(tokenizer.all_special_ids)
        ordinary = [i for i in range(vocabulary) if i not in special]
        source = [ordinary[(7 * i) % len(ordinary)] for i in range(lengths[0])] + [tokenizer.eos_token_id]
        target = [ordinary[(13 * i + 5) % len(ordinary)] for i in range(lengths[1])]
        self.source = tokenizer.convert_ids_to_tokens(source)
        self.target = tokenizer.convert_ids_to_tokens(target)
        labels = torch.tensor([target + [tokenizer.eos_token_id]])  # CTranslate2 scores the end-of-title too
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([source]), labels=labels).logits.float()
        self.log_probs = torch.log_softmax(logits, dim=-1)[0].gather(1, labels[0][:, None])[:, 0].tolist()

    def error(self, export_dir: str | Path) -> float:
        """The largest difference per token between the model's log-probabilities and the export's.

        The export runs on CPU in float32 compute, so that only its weights' rounding separates it from
        the model.
        """
        import ctranslate2

        translator = ctranslate2.Translator(str(export_dir), device="cpu", compute_type="float32", intra_threads=1)
        (scored,) = translator.score_batch([self.source], [self.target])
        return max(abs(a - b) for a, b in zip(scored.log_probs, self.log_probs, strict=True))
