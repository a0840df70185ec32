import pytest
from rouge import Rouge

from titlegen import TitlegenError
from titlegen.metrics import (
    CharSegmenter,
    CkipSegmenter,
    JiebaSegmenter,
    ckip_data_dir,
    f100,
    get_segmenter,
    rouge_per_pair,
    tw_rouge,
)

from .conftest import f1


def test_char_segmenter_keeps_ascii_runs_whole():
    assert CharSegmenter()(["iPhone 17 Pro 在臺開賣！"]) == [["iPhone", "17", "Pro", "在", "臺", "開", "賣", "！"]]


def test_char_scores_hand_checked():
    # pred 林 志 穎 公 司 (5 tokens), ref 林 志 穎 的 公 司 (6): 5 unigrams, 3 of 4/5 bigrams, LCS 5.
    scores = tw_rouge(["林志穎公司"], ["林志穎的公司"], CharSegmenter())
    assert scores["segmenter"] == "char"
    assert scores["rouge-1"]["p"] == pytest.approx(1.0)
    assert scores["rouge-1"]["r"] == pytest.approx(5 / 6)
    assert scores["rouge-1"]["f"] == pytest.approx(f1(1, 5 / 6), rel=1e-6)
    assert scores["rouge-2"]["f"] == pytest.approx(f1(3 / 4, 3 / 5), rel=1e-6)
    assert scores["rouge-l"]["f"] == pytest.approx(f1(1, 5 / 6), rel=1e-6)


@pytest.mark.slow
def test_jieba_scores_hand_checked():
    # jieba: 我們|今天|去|台北|開會 vs 今天|我們|在|台北|開會: 4/5 words, 1/4 bigrams, LCS 3.
    scores = tw_rouge(["我們今天去台北開會"], ["今天我們在台北開會"], JiebaSegmenter())
    assert scores["segmenter"] == "jieba"
    assert f100(scores) == pytest.approx({"rouge-1": 80.0, "rouge-2": 25.0, "rouge-l": 60.0}, rel=1e-6)


def test_ckip_path_with_an_injected_segmenter():
    calls = []

    def fake_ws(sentences):
        calls.append(list(sentences))
        return [s.split("/") for s in sentences]

    seg = CkipSegmenter(ws=fake_ws)
    scores = tw_rouge(["臺北/市政府/宣布"], ["臺北/市政府/今天/宣布"], seg)
    assert scores["segmenter"] == "ckip"
    assert scores["rouge-1"]["f"] == pytest.approx(f1(1, 3 / 4), rel=1e-6)
    assert scores["rouge-2"]["f"] == pytest.approx(f1(1 / 2, 1 / 3), rel=1e-6)
    assert calls == [["臺北/市政府/宣布"], ["臺北/市政府/今天/宣布"]], "one batched call per side"


@pytest.mark.slow
def test_matches_the_rouge_package_exactly_as_the_course_computes_it():
    preds = ["央行利率不變 總裁稱通膨壓力趨緩", "高雄港貨櫃量創新高", "Apple發表iPhone 17 Pro"]
    refs = ["央行維持利率不變", "高雄港貨櫃裝卸量創三年新高", "iPhone 17 Pro 9月19日在臺開賣"]
    seg = JiebaSegmenter()
    join = [" ".join(words) for words in seg(preds)], [" ".join(words) for words in seg(refs)]
    expected = Rouge().get_scores(*join, avg=True)
    got = tw_rouge(preds, refs, seg)
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)


def test_empty_predictions_score_zero_and_count_in_the_average():
    seg = CharSegmenter()
    alone = tw_rouge(["林志穎公司"], ["林志穎的公司"], seg)
    with_empty = tw_rouge(["林志穎公司", "", "  ", "..."], ["林志穎的公司", "標題", "標題", "標題"], seg)
    assert with_empty["rouge-1"]["f"] == pytest.approx(alone["rouge-1"]["f"] / 4)
    assert rouge_per_pair([""], ["標題"], seg)[0]["rouge-l"] == {"f": 0.0, "p": 0.0, "r": 0.0}


def test_auto_falls_back_to_jieba_loudly(monkeypatch, tmp_path):
    monkeypatch.setenv("TITLEGEN_CKIP_DATA", str(tmp_path / "missing"))
    with pytest.warns(UserWarning, match="not the course's official tw_rouge"):
        seg = get_segmenter("auto")
    assert seg.name == "jieba"


def test_ckip_data_dir_lookup_order(monkeypatch, tmp_path):
    monkeypatch.delenv("TITLEGEN_CKIP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert ckip_data_dir() == tmp_path / "cache" / "ckiptagger" / "data"
    monkeypatch.setenv("TITLEGEN_CKIP_DATA", str(tmp_path / "env"))
    assert ckip_data_dir() == tmp_path / "env"
    assert ckip_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_ckip_without_data_says_what_to_do(tmp_path):
    with pytest.raises(TitlegenError, match="ckiptagger's model data is not in"):
        CkipSegmenter(tmp_path)


def test_unknown_segmenter():
    with pytest.raises(TitlegenError, match="unknown segmenter 'words'"):
        get_segmenter("words")
