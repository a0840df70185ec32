import json

import pytest
from rouge import Rouge

from titlegen.cli import evaluate_main
from titlegen.metrics import JiebaSegmenter

from .conftest import real_data


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.slow
def test_prints_the_course_layout_with_the_segmenter(tmp_path, capsys):
    ref = write(tmp_path / "ref.jsonl", [{"id": "1", "title": "今天我們在台北開會"}, {"id": "2", "title": "標題"}])
    pred = write(tmp_path / "pred.jsonl", [{"title": "", "id": "2"}, {"title": "我們今天去台北開會", "id": "1"}])
    assert evaluate_main(["-r", str(ref), "-s", str(pred), "--segmenter", "jieba"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"rouge-1", "rouge-2", "rouge-l", "segmenter"}
    assert out["segmenter"] == "jieba"
    assert set(out["rouge-1"]) == {"f", "p", "r"}
    assert out["rouge-1"]["p"] == pytest.approx(0.8 / 2)  # the empty prediction counts as 0


def test_missing_predictions_are_an_error(tmp_path, capsys):
    ref = write(tmp_path / "ref.jsonl", [{"id": str(i), "title": "標題"} for i in range(10)])
    pred = write(tmp_path / "pred.jsonl", [{"title": "標題", "id": "3"}])
    assert evaluate_main(["-r", str(ref), "-s", str(pred), "--segmenter", "char"]) == 2
    err = capsys.readouterr().err
    assert "pred.jsonl: 9 of 10 reference ids have no prediction (e.g. '0', '1', '2', '4', '5')" in err


@pytest.mark.slow
def test_parity_with_the_course_eval_on_real_titles(tmp_path, capsys):
    """On the 10 genuine course titles, scores equal the course's eval.py with the same segmenter."""
    submission = real_data("adl-news/sample_submission.jsonl")
    refs = [json.loads(line) for line in submission.open(encoding="utf-8")]
    # A made-up submission: every reference title cut to its first half.
    preds = [{"title": r["title"][: len(r["title"]) // 2], "id": r["id"]} for r in refs]
    pred = write(tmp_path / "pred.jsonl", preds)
    assert evaluate_main(["-r", str(submission), "-s", str(pred),
                          "--segmenter", "jieba"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    # The course's eval.py: titles stripped, segmented, joined with spaces, Rouge().get_scores(avg=True).
    ws = JiebaSegmenter()
    join = lambda titles: [" ".join(w) for w in ws([t.strip() for t in titles])]  # noqa: E731
    expected = Rouge().get_scores(join([p["title"] for p in preds]), join([r["title"] for r in refs]), avg=True)
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)
