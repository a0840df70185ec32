import math

import pytest
import torch
from transformers import LogitsProcessorList

from titlegen.characters import WholeCharacters, byte_piece_ids
from titlegen.generation import ArticleSeededSampling, ArticleTokensOnly, generate_titles, length_sorted_batches
from titlegen.modeling import build_model
from titlegen.strategies import decoding_arguments

from .conftest import ARTICLES, TINY_MODEL, read_lines

# Articles of different lengths, so that length sorting reorders them.
ARTICLE_TEXTS = [r["maintext"][: 20 + 9 * i] for i, r in enumerate(read_lines(ARTICLES))][::-1]


@pytest.fixture(scope="module")
def model(tokenizer):
    """A random tiny mT5: its titles are noise, but any change in decoding changes them."""
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL).eval()
    model.generation_config.max_new_tokens = 8
    return model


def titles(model, tokenizer, **kwargs):
    return generate_titles(model, tokenizer, ARTICLE_TEXTS, progress=False, **kwargs)


def test_length_sorted_batches_cover_every_index_once_longest_first():
    batches = length_sorted_batches([5, 9, 1, 7, 3], batch_size=2)
    assert batches == [[1, 3], [0, 4], [2]]


@pytest.mark.slow
def test_titles_come_back_in_input_order_whatever_the_batch_size(model, tokenizer):
    for strategy in ("greedy", "beam"):
        arguments = decoding_arguments(strategy)
        one_by_one = titles(model, tokenizer, batch_size=1, **arguments)
        assert titles(model, tokenizer, batch_size=5, **arguments) == one_by_one, strategy
    assert model.config._attn_implementation == "sdpa", "eager attention is only borrowed while generating"


def test_bf16_generation_writes_a_title_per_article(model, tokenizer):
    generated = titles(model, tokenizer, batch_size=5, bf16=True, num_beams=2)
    assert len(generated) == len(ARTICLE_TEXTS) and all(isinstance(t, str) for t in generated)


@pytest.mark.slow
def test_beam_search_gives_transformers_titles(model, tokenizer):
    """Leaving the cross-attention cache unordered changes nothing: same titles as a plain generate (with the
    guard that keeps byte pieces in whole characters, which generate_titles adds)."""
    expected = []
    whole = WholeCharacters(byte_piece_ids(tokenizer), model.config.vocab_size, tokenizer.eos_token_id)
    for text in ARTICLE_TEXTS:
        inputs = tokenizer(text, return_tensors="pt")
        output = model.generate(**inputs, num_beams=4, max_new_tokens=8, logits_processor=LogitsProcessorList([whole]))
        expected.append(tokenizer.decode(output[0], skip_special_tokens=True).strip())
    assert titles(model, tokenizer, batch_size=4, num_beams=4) == expected


@pytest.mark.slow
def test_seeded_sampling_gives_the_same_titles_in_any_batch(model, tokenizer):
    arguments = decoding_arguments("top_p")
    first = titles(model, tokenizer, batch_size=1, seed=7, **arguments)
    assert titles(model, tokenizer, batch_size=1, seed=7, **arguments) == first
    assert titles(model, tokenizer, batch_size=5, seed=7, **arguments) == first
    assert titles(model, tokenizer, batch_size=5, seed=8, **arguments) != first
    assert titles(model, tokenizer, **decoding_arguments("greedy")) != first, "it samples"


def test_seeded_sampling_applies_the_warpers(model, tokenizer):
    """Sampling from the single likeliest token (top_k=1) is greedy search."""
    greedy = titles(model, tokenizer, **decoding_arguments("greedy"))
    assert titles(model, tokenizer, seed=3, **decoding_arguments("top_k", top_k=1)) == greedy
    assert titles(model, tokenizer, seed=3, **decoding_arguments("top_p", top_p=1e-6)) == greedy


def test_unseeded_sampling_uses_transformers_sampling(model, tokenizer):
    torch.manual_seed(0)
    first = titles(model, tokenizer, **decoding_arguments("temperature"))
    torch.manual_seed(0)
    assert titles(model, tokenizer, **decoding_arguments("temperature")) == first


def test_gumbel_noise_samples_from_the_softmax():
    """argmax(scores + noise) is drawn from softmax(scores): 20,000 draws, each from its own generator."""
    scores = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    draws = 20_000
    noisy = ArticleSeededSampling(range(draws))(None, scores.expand(draws, -1))
    frequencies = torch.bincount(noisy.argmax(-1), minlength=len(scores)) / draws
    expected = torch.softmax(scores, -1)
    assert frequencies[-1] == 0, "a token ruled out by top-k or top-p is never drawn"
    # The draws are seeded, so this is deterministic; the bound is four standard deviations of a frequency.
    tolerance = 4 * torch.sqrt(expected * (1 - expected) / draws) + 1e-9
    assert torch.all((frequencies - expected).abs() <= tolerance), (frequencies, expected)
    assert math.isclose(frequencies.sum().item(), 1.0, abs_tol=1e-6)


def foreign_characters(titles: list[str], articles: list[str]) -> list[str]:
    """The characters of each title that its article lacks (spaces aside: SentencePiece writes them)."""
    return ["".join(sorted(set(t) - set(a) - {" "})) for t, a in zip(titles, articles, strict=True)]


@pytest.mark.parametrize(
    "arguments",
    [decoding_arguments("greedy"), decoding_arguments("beam"), {**decoding_arguments("top_k"), "seed": 1}],
    ids=["greedy", "beam", "sampling"],
)
def test_article_tokens_only_keeps_each_title_to_its_own_articles_tokens(model, tokenizer, arguments):
    free = titles(model, tokenizer, batch_size=3, **arguments)
    assert any(foreign_characters(free, ARTICLE_TEXTS)), "a random model writes characters of other articles"
    kept = titles(model, tokenizer, batch_size=3, **{**arguments, "article_tokens_only": True})
    assert not any(foreign_characters(kept, ARTICLE_TEXTS)), kept
    assert all(kept), "end-of-title is allowed, so a title may end, but the random model writes something"


def test_article_tokens_only_follows_the_generation_config(model, tokenizer):
    restricted = titles(model, tokenizer, num_beams=2, article_tokens_only=True)
    model.generation_config.article_tokens_only = True
    try:
        assert titles(model, tokenizer, num_beams=2) == restricted
        assert titles(model, tokenizer, num_beams=2, article_tokens_only=False) != restricted, "a flag overrides it"
    finally:
        del model.generation_config.article_tokens_only


def test_article_tokens_only_allows_each_beam_its_articles_tokens_and_end_of_title():
    """Two articles of a padded batch, two beams each: rows 0-1 belong to the first, rows 2-3 to the second."""
    input_ids = torch.tensor([[5, 6, 7], [8, 0, 0]])  # 0: padding
    attention_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    scores = torch.zeros(4, 10)
    allowed = ArticleTokensOnly(input_ids, attention_mask, eos_token_id=1)(None, scores).isfinite()
    assert allowed[0].nonzero().flatten().tolist() == [1, 5, 6, 7] and torch.equal(allowed[0], allowed[1])
    assert allowed[2].nonzero().flatten().tolist() == [1, 8] and torch.equal(allowed[2], allowed[3])
    with pytest.raises(ValueError, match="3 rows of scores for 2 articles"):
        ArticleTokensOnly(input_ids, attention_mask, eos_token_id=1)(None, torch.zeros(3, 10))
