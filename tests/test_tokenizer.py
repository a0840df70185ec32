import sentencepiece as spm
from transformers import AutoTokenizer

from titlegen.data import normalize_text


def test_special_token_ids_follow_mt5(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer("新聞").input_ids[-1] == tokenizer.eos_token_id


def test_round_trip_of_chinese_text(tokenizer):
    text = "北市明年增設五十座公共自行車站，延長夜間營運時間。"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_digits_latin_punctuation_and_rare_characters_are_never_unknown(tokenizer):
    text = "Apple發表iPhone 17 Pro，售價$36,900元（約US$1,199）！😀 ½ Ω — «x» 鱻"
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_matches_sentencepiece_and_reloads(tokenizer, tmp_path):
    folder = tokenizer.name_or_path
    sp = spm.SentencePieceProcessor(model_file=f"{folder}/spiece.model")
    text = normalize_text("國中生開發紙鈔辨識程式\n助視障者 2024 年")
    assert tokenizer(text).input_ids[:-1] == sp.encode(text)
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == tokenizer(text).input_ids
