"""Titles at engine speed: export a model to CTranslate2 and decode it there.

`export_model` (``titlegen-export``) writes a CTranslate2 model folder that also holds the tokenizer, the
generation settings (generation_config.json) and run_config.yaml, so that a command given that folder needs
nothing else. `CT2Engine` decodes such a folder with the contract of `titlegen.generation.generate_titles`;
`training_engine` exports a model in training for one evaluation (``generation_backend: ct2``).

What CTranslate2 4.8.5 gets wrong or cannot do, and what titlegen does about it:

* Its converter scales the decoder output of every T5-family model whose config says
  ``tie_word_embeddings``, and transformers 5.x says so for every mT5, although mT5 never scales its output
  (T5 does only when its weights are tied). Greedy titles survive a uniform scale of the logits; beam
  search and every score do not. `export_model` sets the scale the model really uses, and checks the
  exported log-probabilities against the model's before it writes the folder.
* Its sampling draws from one random generator per worker thread, seeded once when the thread first
  samples (``set_random_seed`` does not reseed it), so a sampled title depends on every title sampled
  before it. Seeded sampling, whose titles must depend only on their article and the seed, is refused;
  sampling without a seed is allowed.
* It has no per-article logits processor. ``article_tokens_only`` is honoured exactly by decoding each
  article alone, with every token outside it suppressed (slower than batches: see bench/README.md).
* Its beam search stops as soon as num_beams titles are finished (transformers' ``early_stopping=True``; the
  default goes on while a running beam could still win), and it suppresses tokens and applies
  ``no_repeat_ngram_size`` and ``repetition_penalty`` to the logits before its softmax (transformers' beam
  search changes the log-probabilities after it, unless ``renormalize_logits``). Greedy titles are the same;
  some beam titles differ (counted in bench/README.md). Both are taken as they are, not refused.
* mT5 overflows in float16 (CTranslate2 issue 1074). On a GPU the engine prefers bfloat16, and when a batch
  still comes back with non-finite scores it reloads the model in a float32 compute type, warns, and
  decodes the batch again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.backends import DEFAULT_QUANTIZATION, EXPORT_MARKER, QUANTIZATIONS, is_export
from titlegen.data import atomic_output_dir, write_json
from titlegen.generation import (
    ARTICLE_TOKENS_ONLY,
    DEFAULT_TOP_K,
    article_inputs,
    decode_titles,
    is_article_tokens_only,
    length_sorted_batches,
    titles_in_batches,
)
from titlegen.loops import NO_LOOPS, is_no_loops
from titlegen.model_folder import load_model_folder, load_tokenizer

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "titlegen ctranslate2 export v1"
# The export's log-probabilities may differ from the model's by at most this much per token: float32
# weights compute the same function in another order; quantized ones round every weight.
LOG_PROB_TOLERANCE = {"float32": 1e-3}
QUANTIZED_LOG_PROB_TOLERANCE = 0.5

# Generate arguments that describe the model or the form of generate's output, not which title it writes.
_NOT_DECODING = {
    "decoder_start_token_id", "pad_token_id", "bos_token_id", "transformers_version", "_from_model_config",
    "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "low_memory", "prefill_chunk_size",
}  # fmt: skip
# Values of further arguments that ask for nothing (transformers' own defaults at generate time).
_NEUTRAL = {
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "num_beam_groups": 1, "renormalize_logits": False,
    "remove_invalid_values": False, "num_return_sequences": 1, "guidance_scale": 1.0, "early_stopping": False,
}  # fmt: skip
# Arguments `translate_options` maps onto CTranslate2's options.
_MAPPED = {
    "max_new_tokens", "max_length", "min_new_tokens", "min_length", "num_beams", "do_sample", "temperature",
    "top_k", "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "eos_token_id",
    "bad_words_ids",
}  # fmt: skip
# transformers' max_length when nothing sets a length; it counts the decoder start token.
DEFAULT_MAX_LENGTH = 20


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


def choose_device(device: str | None = None) -> str:
    """``cuda`` when asked or when CTranslate2 sees a GPU, else ``cpu``."""
    import ctranslate2

    gpus = ctranslate2.get_cuda_device_count()
    if device is None:
        return "cuda" if gpus else "cpu"
    if device not in ("cpu", "cuda"):
        raise TitlegenError(f"unknown device '{device}'; choose cpu or cuda")
    if device == "cuda" and not gpus:
        raise TitlegenError("device cuda: CTranslate2 finds no CUDA GPU here")
    return device


def choose_compute_type(device: str, quantization: str, supported: set[str], requested: str | None = None) -> str:
    """The compute type to load an export with.

    CPU: the export's own type (int8 by default), or int8 or float32 where the CPU lacks it. GPU: half
    precision, bfloat16 where the GPU has it, because mT5 overflows in float16; int8 weights stay int8.

    Args:
        device: ``cpu`` or ``cuda``.
        quantization: The type the export was written in.
        supported: The device's compute types (``ctranslate2.get_supported_compute_types``).
        requested: A type asked for on the command line, used as it is.
    """
    if requested is not None:
        if requested not in supported:
            raise TitlegenError(
                f"compute type '{requested}' is not available on {device}; choose one of {', '.join(sorted(supported))}"
            )
        return requested
    int8 = quantization.startswith("int8")
    if device == "cpu":
        if quantization in supported:
            return quantization
        return "int8" if int8 and "int8" in supported else "float32"
    half = "bfloat16" if "bfloat16" in supported else "float16"
    preferred = f"int8_{half}" if int8 else half
    if preferred in supported:
        return preferred
    return "int8_float32" if int8 and "int8_float32" in supported else "float32"


def safe_compute_type(compute_type: str) -> str | None:
    """The compute type to fall back to after non-finite scores: float32 arithmetic, the same weights.

    None when `compute_type` already computes in float32, where non-finite scores mean broken weights.
    """
    if compute_type in ("float32", "int8_float32", "int8"):  # plain int8 computes in float32 too
        return None
    return "int8_float32" if compute_type.startswith("int8") else "float32"


def translate_options(config) -> dict:
    """CTranslate2's ``translate_batch`` options for a transformers GenerationConfig.

    Every argument that changes which title is written is mapped, or refused.

    Raises:
        TitlegenError: naming the first argument CTranslate2 cannot honour.
    """
    for name, value in config.to_dict().items():
        if value is None or name in _MAPPED or name in _NOT_DECODING or _NEUTRAL.get(name, object()) == value:
            continue
        if name in (ARTICLE_TOKENS_ONLY, NO_LOOPS):
            continue  # titlegen's own (see `CT2Engine.decoding`)
        if name == "early_stopping" and value is True:
            continue  # CTranslate2's beam search stops once num_beams titles are finished, as early_stopping does
        raise TitlegenError(f"the ct2 backend cannot honour {name}={value!r}; use --backend transformers")
    if config.max_new_tokens is not None:
        max_new_tokens = config.max_new_tokens
    else:
        max_new_tokens = (config.max_length or DEFAULT_MAX_LENGTH) - 1
    if config.min_new_tokens is not None:
        min_new_tokens = config.min_new_tokens
    else:
        min_new_tokens = max((config.min_length or 0) - 1, 0)
    options = {
        "beam_size": config.num_beams or 1,
        "max_decoding_length": max_new_tokens,
        "min_decoding_length": min_new_tokens,
        "length_penalty": 1.0 if config.length_penalty is None else config.length_penalty,
        "repetition_penalty": config.repetition_penalty or 1.0,
        "no_repeat_ngram_size": config.no_repeat_ngram_size or 0,
    }
    if config.eos_token_id is not None:
        eos = config.eos_token_id
        options["end_token"] = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if config.bad_words_ids:
        options["bad_words_ids"] = [list(ids) for ids in config.bad_words_ids]  # tokens once the vocabulary is known
    if config.do_sample:
        if options["beam_size"] > 1:
            raise TitlegenError("the ct2 backend cannot sample within beam search (do_sample with num_beams > 1)")
        options["sampling_topk"] = DEFAULT_TOP_K if config.top_k is None else config.top_k  # 0: every token
        options["sampling_topp"] = 1.0 if config.top_p is None else config.top_p
        options["sampling_temperature"] = 1.0 if config.temperature is None else config.temperature
    return options


def is_sampling(options: Mapping) -> bool:
    """Whether `translate_options` samples (top-k 1 picks the likeliest token: that is greedy search)."""
    return options.get("sampling_topk", 1) != 1


class CT2Engine:
    """A ``titlegen-export`` folder decoded by CTranslate2.

    Args:
        model_dir: The export.
        device: ``cpu`` or ``cuda`` (default: CUDA when there is a GPU).
        compute_type: A CTranslate2 compute type (default: `choose_compute_type`).
        threads: CPU threads per decoding (CTranslate2's ``intra_threads``; default: its own choice).
    """

    backend = "ct2"

    def __init__(
        self,
        model_dir: str | Path,
        device: str | None = None,
        compute_type: str | None = None,
        threads: int | None = None,
    ):
        import ctranslate2
        from transformers import GenerationConfig

        self.model_dir = Path(model_dir)
        info = json.loads((self.model_dir / EXPORT_MARKER).read_text(encoding="utf-8"))
        if info.get("format") != EXPORT_FORMAT:
            raise TitlegenError(f"{self.model_dir / EXPORT_MARKER}: not a {EXPORT_FORMAT!r} file")
        self.quantization = info["quantization"]
        self.model_type = info["model_type"]
        self.tokenizer = load_tokenizer(str(self.model_dir))
        self.generation_config = (
            GenerationConfig.from_pretrained(self.model_dir)
            if (self.model_dir / "generation_config.json").is_file()
            else GenerationConfig()
        )
        self.device = choose_device(device)
        self.supported = set(ctranslate2.get_supported_compute_types(self.device))
        self.compute_type = choose_compute_type(self.device, self.quantization, self.supported, compute_type)
        self.threads = threads
        self.translator = self._load_translator(self.compute_type)
        self.vocabulary = json.loads((self.model_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))
        self.token_ids = {token: i for i, token in enumerate(self.vocabulary)}

    def _load_translator(self, compute_type: str):
        import ctranslate2

        return ctranslate2.Translator(
            str(self.model_dir), device=self.device, compute_type=compute_type, intra_threads=self.threads or 0
        )

    def decoding(self, seed: int | None = None, **generate_kwargs) -> tuple[dict, bool]:
        """The CTranslate2 options for generate arguments, and whether titles keep to their article's tokens.

        Raises:
            TitlegenError: for an argument CTranslate2 cannot honour, or seeded sampling (see the module).
        """
        config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        restrict = generate_kwargs.pop(ARTICLE_TOKENS_ONLY, is_article_tokens_only(config))
        if generate_kwargs.pop(NO_LOOPS, is_no_loops(config)):
            raise TitlegenError(
                "the ct2 backend cannot honour no_loops (the guard against looping titles this model decodes with, "
                "titlegen/loops.py: it depends on each title written so far); decode with --backend transformers, "
                "or without the guard: --no_loops false"
            )
        unknown = config.update(**generate_kwargs)  # what is not a GenerationConfig setting (e.g. logits_processor)
        if unknown:
            raise TitlegenError(
                f"the ct2 backend cannot honour {', '.join(sorted(unknown))}; use --backend transformers"
            )
        options = translate_options(config)
        if is_sampling(options) and seed is not None:
            raise TitlegenError(
                "the ct2 backend cannot seed sampling per article (CTranslate2 samples from one generator for "
                "all titles); sample with --backend transformers"
            )
        if "bad_words_ids" in options:
            options["suppress_sequences"] = [[self.vocabulary[i] for i in ids] for ids in options.pop("bad_words_ids")]
        return options, bool(restrict)

    def check_decoding(self, seed: int | None = None, **generate_kwargs) -> None:
        """Raises `TitlegenError` for generate arguments CTranslate2 cannot honour (see `decoding`)."""
        self.decoding(seed, **generate_kwargs)

    def generate_titles(
        self,
        articles: Sequence[str],
        *,
        batch_size: int = 16,
        max_source_length: int = 256,
        source_prefix: str = "",
        seed: int | None = None,
        progress: bool = True,
        done: Mapping[int, str] | None = None,
        on_batch: Callable[[list[int], list[str]], None] | None = None,
        **generate_kwargs,
    ) -> list[str]:
        """Generates one title per article, returned in the order of `articles`.

        Arguments as for `titlegen.generation.generate_titles`, except that sampling takes no `seed` (see the
        module): every argument is checked before the first title is written.
        """
        options, restrict = self.decoding(seed, **generate_kwargs)
        texts, encoded, spans = article_inputs(self.tokenizer, articles, max_source_length, source_prefix)
        batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)

        def title_batch(batch: list[int]) -> list[str]:
            ids = self.generate_ids([encoded[i] for i in batch], options, restrict)
            batch_spans = None if spans is None else [spans[i] for i in batch]
            return decode_titles(self.tokenizer, padded(ids, self.tokenizer.pad_token_id), batch_spans)

        return titles_in_batches(batches, title_batch, len(texts), done, on_batch, progress)

    def generate_ids(self, encoded: Sequence[Sequence[int]], options: Mapping, restrict: bool) -> list[list[int]]:
        """The title token ids (without end-of-title) for one batch of article token ids.

        Args:
            encoded: Token ids of each article, without padding.
            options: CTranslate2 options, as `decoding` returns them.
            restrict: Keep each title to its article's tokens.
        """
        sources = [[self.vocabulary[i] for i in ids] for ids in encoded]
        if restrict:
            # CTranslate2 suppresses tokens for a whole call, so each article is a call of its own.
            hypotheses = [
                self._translate([source], self._outside_article(ids, options), options)[0]
                for source, ids in zip(sources, encoded, strict=True)
            ]
        else:
            hypotheses = self._translate(sources, [], options)
        return [[self.token_ids[token] for token in tokens] for tokens in hypotheses]

    def _outside_article(self, article_ids: Sequence[int], options: Mapping) -> list[list[str]]:
        """Every token but the article's own and end-of-title, as single-token sequences to suppress."""
        allowed = set(article_ids) | set(options.get("end_token", [self.tokenizer.eos_token_id]))
        return [[token] for i, token in enumerate(self.vocabulary) if i not in allowed]

    def _translate(self, sources: list[list[str]], suppress: list[list[str]], options: Mapping) -> list[list[str]]:
        """The best hypothesis (tokens) for each source; reloads in float32 compute after non-finite scores."""
        options = dict(options)
        suppress = options.pop("suppress_sequences", []) + suppress
        results = self.translator.translate_batch(
            sources, suppress_sequences=suppress or None, return_scores=True, **options
        )
        if all(math.isfinite(score) for result in results for score in result.scores):
            return [result.hypotheses[0] for result in results]
        safe = safe_compute_type(self.compute_type)
        if safe is None:
            raise TitlegenError(
                f"{self.model_dir}: non-finite title scores in {self.compute_type} compute; the model's weights "
                "hold NaN or infinity"
            )
        logger.warning(
            "non-finite title scores in %s compute (mT5 overflows in float16: CTranslate2 issue 1074); "
            "reloading the model in %s and decoding again",
            self.compute_type,
            safe,
        )
        self.compute_type = safe
        self.translator = self._load_translator(safe)
        return self._translate(sources, suppress, {**options, "suppress_sequences": []})


def padded(ids: Sequence[Sequence[int]], pad_token_id: int) -> list[list[int]]:
    """Token id lists of one length (at least one column), padded as generate's output is: `decode_titles` and
    Seq2SeqTrainer's evaluation take a rectangle."""
    longest = max([1, *map(len, ids)])
    return [list(row) + [pad_token_id] * (longest - len(row)) for row in ids]
