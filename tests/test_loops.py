import json

import torch

from titlegen.loops import NoLoops

from .conftest import ROOT

ARTICLE = [7, 5, 5, 5, 8, 9]  # token 5 three times in a row: the article's own run


def banned(title: list[int], article=ARTICLE) -> list[int]:
    """The tokens NoLoops rules out after `title` (behind the decoder start token 0)."""
    guard = NoLoops(torch.tensor([article]), torch.ones(1, len(article), dtype=torch.long))
    scores = guard(torch.tensor([[0, *title]]), torch.zeros(1, 12))
    return torch.nonzero(scores[0] == float("-inf")).flatten().tolist()


def test_a_third_repetition_of_a_unit_of_one_to_four_tokens_is_ruled_out():
    assert banned([3, 3]) == [3]
    assert banned([1, 2, 1, 2]) == [1]
    assert banned([1, 2, 3, 4, 1, 2, 3, 4]) == [1]
    assert banned([1, 2, 3]) == [] and banned([3]) == [] and banned([1, 2, 1]) == []


def test_a_run_the_article_has_is_allowed():
    assert banned([5, 5]) == [], "the article has 5 three times in a row"
    assert banned([6, 6], article=[6, 6, 1]) == [6]


def test_beams_follow_their_article():
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    guard = NoLoops(torch.tensor([ARTICLE, [1, 2, 3, 0, 0, 0]]), mask)
    titles = torch.tensor([[0, 5, 5], [0, 5, 5], [0, 5, 5], [0, 5, 5]])  # two beams per article
    scores = guard(titles, torch.zeros(4, 12))
    assert (scores[:, 5] == float("-inf")).tolist() == [False, False, True, True]


def test_the_offline_config_saves_its_guard_with_the_model(trained_dir):
    saved = json.loads((trained_dir / "generation_config.json").read_text())
    assert saved["no_loops"] is True
    assert "generation_no_loops: true" in (ROOT / "trainer_args/tiny_offline.yaml").read_text()
