import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from titlegen import TitlegenError
from titlegen.cli import tokenizer_main
from titlegen.data import normalize_text
from titlegen.tokenizer import train_tokenizer

from .conftest import ARTICLES


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


def test_char_tokenizer_has_one_token_per_character_and_matches_sentencepiece(tmp_path):
    texts = ["北市明年增設公共自行車站", "延長夜間營運時間 2024 年", "國中生開發紙鈔辨識程式"] * 20
    tokenizer = train_tokenizer(texts, tmp_path, vocab_size=400, model_type="char")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    for text in ("北市明年增設車站", "國中生 2024 年開發程式", "夜間營運，鱻"):
        ids = tokenizer(text).input_ids[:-1]
        assert ids == sp.encode(text)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer("北市明年增設").input_ids) == 1 + 6 + 1  # the leading "▁", six characters, </s>


def test_unknown_tokenizer_type_and_too_small_char_vocabulary_are_refused(tmp_path):
    with pytest.raises(TitlegenError, match="tokenizer model type 'bpe'"):
        train_tokenizer(["新聞"] * 10, tmp_path, model_type="bpe")
    with pytest.raises(TitlegenError, match="tokenizer_vocab_size=200 leaves no room"):
        train_tokenizer(["新聞"] * 10, tmp_path, vocab_size=200, model_type="char")


def test_the_tokenizer_command_takes_the_training_settings_names(tmp_path, capsys):
    out = tmp_path / "tok"
    args = [str(ARTICLES), "-o", str(out), "--tokenizer_vocab_size", "300", "--tokenizer_type", "char"]
    assert tokenizer_main(args) == 0
    assert (out / "tokenizer.json").is_file()
    assert tokenizer_main([str(ARTICLES), "-o", str(tmp_path / "t2"), "--vocab_size", "300"]) == 2
    assert capsys.readouterr().err.endswith(
        "error: command line: unknown setting 'vocab_size' (did you mean 'tokenizer_vocab_size'?)\n"
    )
    assert tokenizer_main([str(ARTICLES), "-o", str(tmp_path / "t3"), "--tokenizer_type", "bpe"]) == 2
    assert "error: command line: argument --tokenizer_type" in capsys.readouterr().err
