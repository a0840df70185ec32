"""Titles at engine speed: a CTranslate2 export (`titlegen.engines.export`) decoded by CTranslate2.

`CT2Engine` decodes an export with the contract of `titlegen.generation.generate_titles`: it chooses the device
and compute type, maps generate arguments onto CTranslate2's options, and decodes.

What CTranslate2 4.8.5 gets wrong or cannot do in decoding, and what titlegen does about it (what its converter
gets wrong is in `titlegen.engines.export`):

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

import copy
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from titlegen import TitlegenError
from titlegen.backends import EXPORT_FORMAT, EXPORT_MARKER
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
from titlegen.model_folder import load_tokenizer

logger = logging.getLogger(__name__)

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
        self._warned_no_loops = False

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
        requested = generate_kwargs.pop(NO_LOOPS, None)
        if requested:
            raise TitlegenError(
                "the ct2 backend cannot honour no_loops (the guard against looping titles, titlegen/loops.py: it "
                "depends on each title written so far); decode with --backend transformers, or without the guard: "
                "--no_loops false"
            )
        if requested is None and is_no_loops(config) and not self._warned_no_loops:
            # The export's own default: the documented command (run.sh) decodes it, without the guard, rather than
            # refusing. What the titles lose is measured in bench/README.md (decoding guards).
            logger.warning(
                "%s: decoding without the loop guard (no_loops) that the model's generation config asks for, which "
                "CTranslate2 cannot apply; use the model folder it was exported from to decode with it",
                self.model_dir,
            )
            self._warned_no_loops = True
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
