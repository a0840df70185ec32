import torch

from titlegen.generation import decode_titles, generate_titles
from titlegen.modeling import build_model
from titlegen.preprocessing import make_tokenize_fn
from titlegen.spans import SLOT_TOKENS, decode_title, encode_article, encode_articles, encode_title, uses_slots
from titlegen.tokenizer import train_tokenizer

from .conftest import ARTICLES, TINY_MODEL, read_lines

ARTICLE = "在 2020 年 1 月 14 日，Windows 7 已退出市場，ZenBook Pro Duo 15 OLED 售價ＮＴ＄３９,９９０元（約US$1,350）。"


def test_each_distinct_run_is_one_slot_in_order_of_first_appearance():
    text, spans = encode_article(ARTICLE)
    assert spans == [
        "2020",
        "1",
        "14",
        "Windows",
        "7",
        "ZenBook",
        "Pro",
        "Duo",
        "15",
        "OLED",
        "NT",
        "39,990",
        "US",
        "1,350",
    ]
    assert text == "在<w0>年<w1>月<w2>日，<w3><w4>已退出市場，<w5><w6><w7><w8><w9>售價<w10>＄<w11>元（約<w12>$<w13>）。"
    assert encode_article("iPhone 6 與 iPhone 6 Plus")[0] == "<w0><w1>與<w0><w1><w2>", "a repeated run keeps its slot"


def test_titles_use_their_article_slots_and_decode_to_the_words():
    _, spans = encode_article(ARTICLE)
    title = "全球Windows 7裝置1億台 ZenBook Pro售價39,990元 iOS 14"
    encoded = encode_title(title, spans)
    assert encoded == "全球<w3><w4>裝置<w1>億台<w5><w6>售價<w11>元 iOS<w2>", "runs the article lacks stay as they are"
    assert decode_title(encoded, spans) == "全球Windows 7裝置1億台ZenBook Pro售價39,990元 iOS14"
    assert decode_title("<w3><w40>版", spans) == "Windows版", "a slot the article lacks is dropped"


def test_a_line_break_of_an_article_ends_a_sentence_and_a_titles_space_stays():
    assert encode_article("文．洪寶山 疫情改變全球 Windows 7 已經")[0] == "文．洪寶山。疫情改變全球<w0><w1>已經"
    assert encode_title("產業發展變革 台灣的優勢", []) == "產業發展變革 台灣的優勢"


def test_slots_beyond_the_last_stay_as_text():
    text, spans = encode_article(" ".join(f"a{i}" for i in range(len(SLOT_TOKENS) + 2)))
    assert len(spans) == len(SLOT_TOKENS) and text.endswith("<w31>a32 a33")


def test_a_tokenizer_with_slots_has_one_token_per_slot_and_the_recipe_encodes_with_them(tmp_path):
    records = read_lines(ARTICLES)
    texts = encode_articles([r[c] for r in records for c in ("maintext", "title")])[0]
    tokenizer = train_tokenizer(texts, tmp_path, vocab_size=1000, model_type="char", copy_slots=True)
    assert uses_slots(tokenizer)
    text, spans = encode_article(ARTICLE)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)
    assert pieces[:4] == ["▁", "在", "<w0>", "年"] and all(s in pieces for s in ("<w13>", "<w5>"))
    tokenize = make_tokenize_fn(tokenizer, "maintext", "title", 64, 32)
    features = tokenize({"maintext": [ARTICLE], "title": ["Windows 7退場"]})
    assert features["input_ids"][0] == tokenizer(text).input_ids
    assert decode_titles(tokenizer, features["labels"], [spans]) == ["Windows 7退場"]

    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL).eval()
    slot_ids = tokenizer.convert_tokens_to_ids(SLOT_TOKENS[:3])
    with torch.no_grad():  # a random model that favours the first slots: its titles hold the article's runs
        model.lm_head.weight[slot_ids] *= 30
    (title,) = generate_titles(model, tokenizer, [ARTICLE], progress=False, max_new_tokens=6, num_beams=1)
    assert "<w" not in title and any(run in title for run in ("2020", "14"))
