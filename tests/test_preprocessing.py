import pytest

from titlegen import TitlegenError
from titlegen.preprocessing import lead_pairs, make_tokenize_fn, to_features

RECORDS = [
    {"maintext": "台北市政府今天宣布，明年起增設五十座公共自行車站。", "title": "北市增設自行車站"},
    {"maintext": "氣象局表示，鋒面明天通過，北部氣溫將下降。", "title": "鋒面通過北部降溫"},
    {"maintext": "國中生開發紙鈔辨識程式，幫助視障者。", "title": "國中生助視障者"},
    {"maintext": "颱風", "title": "颱風"},
]


@pytest.fixture
def features(tokenizer):
    tokenize = make_tokenize_fn(tokenizer, "maintext", "title", max_source_length=64, max_target_length=8)
    return to_features(RECORDS, ("maintext", "title"), tokenize, desc="test")


def test_lead_pairs_target_the_article_opening(features, tokenizer):
    leads = lead_pairs(features, 1.0, max_target_length=8, eos_token_id=tokenizer.eos_token_id, seed=0)
    assert leads["input_ids"] == features["input_ids"]
    for article, labels in zip(leads["input_ids"], leads["labels"], strict=True):
        assert labels[-1] == tokenizer.eos_token_id and len(labels) <= 8
        assert labels[:-1] == article[: len(labels) - 1]  # the article's first tokens, then </s>
    long_article = leads["labels"][0]
    assert len(long_article) == 8
    assert tokenizer.decode(long_article, skip_special_tokens=True) in RECORDS[0]["maintext"]
    assert leads["labels"][3] == features["input_ids"][3]  # an article shorter than a title: all of it


def test_lead_pairs_share_is_a_seeded_subset(features, tokenizer):
    half = lead_pairs(features, 0.5, max_target_length=8, eos_token_id=tokenizer.eos_token_id, seed=1)
    again = lead_pairs(features, 0.5, max_target_length=8, eos_token_id=tokenizer.eos_token_id, seed=1)
    assert len(half) == 2 and half["input_ids"] == again["input_ids"]
    assert all(ids in features["input_ids"] for ids in half["input_ids"])
    with pytest.raises(TitlegenError, match="lead_pairs must be between 0 and 1"):
        lead_pairs(features, 1.5, max_target_length=8, eos_token_id=1, seed=0)
