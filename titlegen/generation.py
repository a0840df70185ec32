"""Batched title generation: length-sorted batches, inference mode, original order restored.

Beyond what transformers' ``generate`` does:

* Beam search reorders the cross-attention cache at every step, although it holds the same keys and
  values for every beam of an article; `beam_search_cache` skips that copy (the titles stay the same).
* Sampling draws every row of a batch from one random generator, so a sampled title changes with the
  batch size and with the articles batched beside it; `ArticleSeededSampling` gives each article its own.
* On CPU, eager attention decodes faster than SDPA (the same computation, rounded differently in bf16).
* `ArticleTokensOnly` restricts each title to tokens of its own article: a small model trained from scratch
  mostly copies, and misspells what it copies (``article_tokens_only``, saved in generation_config.json).
* Byte-fallback pieces only ever form whole UTF-8 characters (`titlegen.characters`); with ``no_loops`` (saved
  likewise) no unit of 1-4 tokens comes three times in a row (`titlegen.loops`); a tokenizer with copy slots has
  its articles encoded and its titles decoded with them (`titlegen.spans`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence

from titlegen.characters import WholeCharacters, byte_piece_ids, drop_broken_characters
from titlegen.loops import NO_LOOPS, NoLoops, is_no_loops
from titlegen.preprocessing import source_inputs
from titlegen.spans import decode_title

# transformers samples from the 50 likeliest tokens unless top_k says otherwise.
DEFAULT_TOP_K = 50

# titlegen's own decoding setting, beside transformers' GenerationConfig arguments (and saved with them).
ARTICLE_TOKENS_ONLY = "article_tokens_only"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Groups indices into batches of similar length, longest first.

    Padding to the longest input of a batch wastes less compute when lengths are alike; the longest
    batch runs first so that an out-of-memory error shows at once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def title_generation_config(
    model,
    max_new_tokens: int,
    num_beams: int = 1,
    article_tokens_only: bool = False,
    no_loops: bool = False,
):
    """A generation config that writes whole titles: max_new_tokens set, no other lengths.

    Setting only max_new_tokens avoids generate's default max_length=20, which cuts titles short.
    `article_tokens_only` and `no_loops` (`titlegen.loops`) are kept in the config (and its generation_config.json)
    for `generate_titles`.
    """
    from transformers import GenerationConfig

    config = model.config
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    if article_tokens_only:
        setattr(generation_config, ARTICLE_TOKENS_ONLY, True)
    if no_loops:
        setattr(generation_config, NO_LOOPS, True)
    return generation_config


def is_article_tokens_only(config) -> bool:
    """Whether a generation config restricts titles to their article's tokens."""
    return bool(getattr(config, ARTICLE_TOKENS_ONLY, False))


def article_inputs(
    tokenizer, articles: Sequence[str], max_source_length: int, source_prefix: str = ""
) -> tuple[list[str], list[list[int]], list[list[str]] | None]:
    """What a model reads of each article: its text, its token ids (cut to `max_source_length`), and, with a
    tokenizer that has copy slots, the article's spans that its title's slots stand for (else None).

    Every engine encodes articles here, and decodes titles with `decode_titles`, so that they read and write alike.
    """
    texts, spans = source_inputs(tokenizer, articles, source_prefix)
    return texts, tokenizer(texts, max_length=max_source_length, truncation=True)["input_ids"], spans


def decode_titles(tokenizer, token_ids, spans: Sequence[Sequence[str]] | None = None) -> list[str]:
    """Decodes generated (or label) token ids to titles; -100 padding is treated as pad.

    With a tokenizer that has copy slots, `spans` gives each title's article spans (`titlegen.spans`).
    """
    import numpy as np

    token_ids = np.where(np.asarray(token_ids) < 0, tokenizer.pad_token_id, token_ids)
    titles = [drop_broken_characters(t) for t in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
    if spans is not None:
        titles = [decode_title(t, s) for t, s in zip(titles, spans, strict=True)]
    return [t.strip() for t in titles]


def generate_titles(
    model,
    tokenizer,
    articles: Sequence[str],
    *,
    batch_size: int = 16,
    max_source_length: int = 256,
    source_prefix: str = "",
    bf16: bool = False,
    seed: int | None = None,
    progress: bool = True,
    done: Mapping[int, str] | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Generates one title per article, returned in the order of `articles`.

    Batches are formed from all articles, whatever is `done`, so a resumed run pads and decodes every
    batch exactly as an uninterrupted run would.

    Args:
        model: A seq2seq model.
        tokenizer: Its tokenizer.
        articles: Article texts.
        batch_size: Articles per ``generate`` call.
        max_source_length: Articles are truncated to this many tokens.
        source_prefix: Text put before each article, as in training.
        bf16: Run under bfloat16 autocast (on CPU and CUDA).
        seed: When sampling, each article draws from its own generator seeded with `seed` and its text,
            so that its title is the same in any batch. None draws from torch's global generator.
        progress: Show a progress bar with titles per second.
        done: Titles already generated, by article index (e.g. by an interrupted run); a batch whose
            articles all have one is not generated again.
        on_batch: Called after each generated batch with its article indices and titles, e.g. to save
            progress.
        **generate_kwargs: Passed to ``model.generate`` (``num_beams``, ``max_new_tokens``,
            ``generation_config``, ...), and ``article_tokens_only`` (default: the generation config's).
    """
    import torch

    texts, encoded, spans = article_inputs(tokenizer, articles, max_source_length, source_prefix)
    batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    device = next(model.parameters()).device
    if bf16:
        # Autocast casts each weight to bfloat16 once and caches it, but not under inference_mode, where it casts
        # every weight again at every call (linear layers run ~3x slower on CPU); no_grad keeps the cache.
        no_grad = torch.no_grad()
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        no_grad, autocast = torch.inference_mode(), contextlib.nullcontext()
    config = copy.deepcopy(generate_kwargs.get("generation_config") or model.generation_config)
    restrict = generate_kwargs.pop(ARTICLE_TOKENS_ONLY, is_article_tokens_only(config))
    no_loops = generate_kwargs.pop(NO_LOOPS, is_no_loops(config))
    byte_ids = byte_piece_ids(tokenizer)
    config.update(**generate_kwargs)
    model.eval()

    def title_batch(batch: list[int]) -> list[str]:
        inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(device)
        batch_arguments = _batch_arguments(
            model, config, inputs, [texts[i] for i in batch], seed, restrict, byte_ids, no_loops
        )
        output = model.generate(**inputs, **{**generate_kwargs, **batch_arguments})
        return decode_titles(tokenizer, output.cpu(), None if spans is None else [spans[i] for i in batch])

    with no_grad, autocast, _eager_attention_on_cpu(model):
        return titles_in_batches(batches, title_batch, len(texts), done, on_batch, progress)


def titles_in_batches(
    batches: Sequence[list[int]],
    title_batch: Callable[[list[int]], list[str]],
    count: int,
    done: Mapping[int, str] | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    progress: bool = True,
) -> list[str]:
    """The titles of `count` articles, written a batch at a time by `title_batch`, in the order of the articles.

    What every engine shares: a batch whose articles all have a title in `done` (an interrupted run's) is
    skipped, `on_batch` sees each new batch's titles (to save progress), and a progress bar counts titles.
    """
    from tqdm.auto import tqdm

    done = done or {}
    titles: list[str | None] = [done.get(i) for i in range(count)]
    todo = [batch for batch in batches if any(titles[i] is None for i in batch)]
    skipped = count - sum(len(batch) for batch in todo)
    with tqdm(total=count, initial=skipped, desc="generating", unit="title", disable=not progress) as bar:
        for batch in todo:
            batch_titles = title_batch(batch)
            for i, title in zip(batch, batch_titles, strict=True):
                titles[i] = title
            if on_batch is not None:
                on_batch(batch, batch_titles)
            bar.update(len(batch))
    return titles


@contextlib.contextmanager
def _eager_attention_on_cpu(model):
    """Switches a CPU model to transformers' eager attention for the duration, then back.

    Decoding attends from one new token at a time; for that, torch's SDPA kernels on CPU are slower than the
    plain matmul-softmax-matmul of eager attention under bf16 (bench/README.md).
    """
    previous = model.config._attn_implementation
    if model.device.type != "cpu" or previous != "sdpa":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _batch_arguments(
    model,
    config,
    inputs,
    texts: list[str],
    seed: int | None,
    restrict: bool,
    byte_ids: dict[int, int] | None = None,
    no_loops: bool = False,
) -> dict:
    """generate arguments for one batch: the beam search cache or per-article sampling, `restrict` titles to
    their articles' tokens, keep byte pieces in whole characters (the tokenizer's `byte_ids`, if any) and, with
    `no_loops`, keep titles from looping."""
    from transformers import LogitsProcessorList

    arguments = {}
    num_beams = config.num_beams or 1
    if num_beams > 1 and model.config.is_encoder_decoder and config.cache_implementation is None:
        arguments = {"past_key_values": beam_search_cache(model)}
    elif config.do_sample and num_beams == 1 and seed is not None:
        arguments = article_seeded_sampling(config, [article_seed(seed, t) for t in texts]) or {}
    guards = title_guards(model, inputs, restrict=restrict, no_loops=no_loops, byte_ids=byte_ids)
    if guards:
        # First, so that sampling warpers see only the allowed tokens.
        arguments["logits_processor"] = LogitsProcessorList([*guards, *arguments.get("logits_processor", [])])
    return arguments


def title_guards(model, inputs, *, restrict: bool, no_loops: bool, byte_ids: dict[int, int] | None) -> list:
    """The logits processors that keep a batch's titles to what a title may be: whole characters (the tokenizer's
    `byte_ids`, if any), no loops (`no_loops`) and their articles' tokens (`restrict`).

    Each only rules tokens out, whatever the scores, so their order does not matter. Shared by `generate_titles`
    and evaluation during training (`titlegen.trainer.TitleTrainer`).
    """
    eos_token_id = model.config.eos_token_id
    guards = []
    if byte_ids:
        guards.append(WholeCharacters(byte_ids, model.config.vocab_size, eos_token_id))
    if no_loops:
        guards.append(NoLoops(inputs["input_ids"], inputs["attention_mask"]))
    if restrict:
        guards.append(ArticleTokensOnly(inputs["input_ids"], inputs["attention_mask"], eos_token_id))
    return guards


class ArticleTokensOnly:
    """A logits processor that lets each title use only the tokens of its own article, and end-of-title.

    A small model trained from scratch titles mostly by copying, and miscopies: a rare character of the
    article becomes a frequent one that the article does not have. Limited to the article's own tokens, it
    copies more faithfully (on LCSTS, 0.1-0.25 more validation ROUGE-1, -2 and -L for three such models; see
    bench/README.md). Titles of a pretrained model often need words the article lacks, or a piece that
    tokenizes differently from the article's: compare on validation before using it there.

    Args:
        input_ids: The batch's article token ids, one row per article.
        attention_mask: 1 for the articles' tokens, 0 for padding.
        eos_token_id: End-of-title, always allowed (an int or a list of them).
    """

    def __init__(self, input_ids, attention_mask, eos_token_id):
        self.eos_token_ids = eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]
        self.input_ids = input_ids.masked_fill(attention_mask == 0, self.eos_token_ids[0])  # padding adds nothing
        self.allowed = None  # (rows of scores, vocabulary) booleans, made at the first step

    def __call__(self, input_ids, scores):
        import torch

        if self.allowed is None:
            articles = self.input_ids.shape[0]
            if scores.shape[0] % articles:
                raise ValueError(f"{scores.shape[0]} rows of scores for {articles} articles")
            allowed = torch.zeros(articles, scores.shape[-1], dtype=torch.bool, device=scores.device)
            allowed.scatter_(1, self.input_ids.to(scores.device), True)
            allowed[:, self.eos_token_ids] = True
            # Beams (or samples) of an article are consecutive rows.
            self.allowed = allowed.repeat_interleave(scores.shape[0] // articles, dim=0)
        return scores.masked_fill(~self.allowed, float("-inf"))


def beam_search_cache(model):
    """A fresh cache for one beam search of the encoder-decoder `model`.

    After each step, beam search reorders the cache to follow the surviving beams. A beam only takes
    the place of another beam of its own article, and all beams of an article attend to the same
    encoder output, so their cross-attention keys and values are equal; transformers' reordering copies
    num_layers x 2 tensors of (batch x beams, heads, source length, d_kv) at every step for nothing.
    This cache reorders only the self-attention part. The titles are exactly those of transformers'.
    """
    from transformers import DynamicCache

    config = model.config.get_text_config(decoder=True)
    return _beam_search_cache_class()(DynamicCache(config=config), DynamicCache(config=config))


@functools.cache
def _beam_search_cache_class():
    from transformers import EncoderDecoderCache

    class BeamSearchCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)

    return BeamSearchCache


def article_seed(seed: int, text: str) -> int:
    """A 64-bit seed for one article: the same article and run seed always give the same one."""
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ArticleSeededSampling:
    """A logits processor that adds Gumbel noise drawn from one generator per article.

    The argmax of scores plus Gumbel noise is an exact sample from softmax(scores) (the Gumbel-max
    trick), so greedy search over these scores samples, each article from its own random stream.

    Args:
        seeds: One seed per row of the batch (see `article_seed`).
    """

    def __init__(self, seeds: Sequence[int]):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows of scores for {len(self.generators)} articles")
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=torch.finfo(uniform.dtype).tiny)))
        return scores + gumbel.to(scores.device)


def article_seeded_sampling(config, seeds: Sequence[int]) -> dict | None:
    """generate arguments that sample as `config` does, each article with its own generator.

    transformers applies temperature, top-k and top-p (in that order) only when do_sample is set, and
    then draws with one generator for the batch. Here the same warpers, followed by
    `ArticleSeededSampling`, run as logits processors of greedy search.

    Returns:
        The arguments, or None when `config` uses a sampling setting not handled here (typical_p,
        epsilon or eta cutoffs, top_h, several return sequences): transformers' sampling applies then.
    """
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    unhandled = (config.typical_p or 1.0) < 1.0 or config.epsilon_cutoff or config.eta_cutoff or config.top_h
    if unhandled or (config.num_return_sequences or 1) > 1:
        return None
    warpers = []
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    top_k = DEFAULT_TOP_K if config.top_k is None else config.top_k
    if top_k != 0:
        warpers.append(TopKLogitsWarper(top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(config.min_p))
    return {
        # The warpers' settings return to their neutral values, so greedy search leaves them to the processors.
        "do_sample": False,
        "temperature": 1.0,
        "top_k": DEFAULT_TOP_K,
        "top_p": 1.0,
        "min_p": None,
        "logits_processor": LogitsProcessorList([*warpers, ArticleSeededSampling(seeds)]),
    }


def title_decoding(model, run_args, data_args, num_beams: int | None):
    """How a training run's model writes titles, in evaluation and as its saved default: a generation config
    (`titlegen.generation.title_generation_config`) of at most ``generation_max_new_tokens`` tokens (else
    ``max_target_length``).

    Each setting of `run_args` (``generation_article_tokens_only``, ``generation_no_loops``) and `num_beams`
    that is None is taken from the model's own generation config: a
    model trained to be decoded with beams, or with a guard, is fine-tuned and saved to be decoded so.
    """
    config = model.generation_config

    def either(setting, own):
        return own if setting is None else setting

    return title_generation_config(
        model,
        run_args.generation_max_new_tokens or data_args.max_target_length,
        num_beams=either(num_beams, config.num_beams or 1),
        article_tokens_only=either(run_args.generation_article_tokens_only, is_article_tokens_only(config)),
        no_loops=either(run_args.generation_no_loops, is_no_loops(config)),
    )
