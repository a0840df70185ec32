"""Batched title generation: length-sorted batches, inference mode, original order restored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from titlegen.preprocessing import source_texts


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Groups indices into batches of similar length, longest first.

    Padding to the longest input of a batch wastes less compute when lengths are alike; the longest
    batch runs first so that an out-of-memory error shows at once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def title_generation_config(model, max_new_tokens: int, num_beams: int = 1):
    """A generation config that writes whole titles: max_new_tokens set, no other lengths.

    Setting only max_new_tokens avoids generate's default max_length=20, which cuts titles short.
    """
    from transformers import GenerationConfig

    config = model.config
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def decode_titles(tokenizer, token_ids) -> list[str]:
    """Decodes generated (or label) token ids to titles; -100 padding is treated as pad."""
    import numpy as np

    token_ids = np.where(np.asarray(token_ids) < 0, tokenizer.pad_token_id, token_ids)
    return [t.strip() for t in tokenizer.batch_decode(token_ids, skip_special_tokens=True)]


def generate_titles(
    model,
    tokenizer,
    articles: Sequence[str],
    *,
    batch_size: int = 16,
    max_source_length: int = 256,
    source_prefix: str = "",
    bf16: bool = False,
    progress: bool = True,
    done: Mapping[int, str] | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    seed: int | None = None,
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
        progress: Show a progress bar with titles per second.
        done: Titles already generated, by article index (e.g. by an interrupted run); a batch whose
            articles all have one is not generated again.
        on_batch: Called after each generated batch with its article indices and titles, e.g. to save
            progress.
        seed: If set, the random state is reset to ``seed + batch number`` before each batch, so that
            sampled titles do not depend on which batches ran before.
        **generate_kwargs: Passed to ``model.generate`` (``num_beams``, ``max_new_tokens``, ...).
    """
    import torch
    from tqdm.auto import tqdm

    texts = source_texts(list(articles), source_prefix)
    encoded = tokenizer(texts, max_length=max_source_length, truncation=True)["input_ids"]
    batches = length_sorted_batches([len(ids) for ids in encoded], batch_size)
    device = next(model.parameters()).device
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    done = done or {}
    titles: list[str | None] = [done.get(i) for i in range(len(texts))]
    todo = [(number, batch) for number, batch in enumerate(batches) if any(titles[i] is None for i in batch)]
    skipped = len(texts) - sum(len(batch) for _, batch in todo)
    model.eval()
    with (
        torch.inference_mode(),
        autocast,
        tqdm(total=len(texts), initial=skipped, desc="generating", unit="title", disable=not progress) as bar,
    ):
        for number, batch in todo:
            if seed is not None:
                torch.manual_seed(seed + number)
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(device)
            output = model.generate(**inputs, **generate_kwargs)
            batch_titles = decode_titles(tokenizer, output.cpu())
            for i, title in zip(batch, batch_titles, strict=True):
                titles[i] = title
            if on_batch is not None:
                on_batch(batch, batch_titles)
            bar.update(len(batch))
    return titles
