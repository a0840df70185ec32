import pytest
import torch

from titlegen.characters import (
    CONTINUATION,
    INVALID,
    WHOLE,
    WholeCharacters,
    byte_piece_ids,
    drop_broken_characters,
    has_byte_pieces,
    token_roles,
    utf8_role,
)
from titlegen.generation import decode_titles, generate_titles
from titlegen.modeling import build_model
from titlegen.tokenizer import train_tokenizer

from .conftest import TINY_MODEL

# Latin words, digit runs, full-width letters, digits and punctuation, half-width katakana and an emoji: the
# kinds of text the course's udn.com articles hold and LCSTS rarely does.
MIXED = "Anker在CES 2021推出Liberty Air 2 Pro，售價ＮＴ＄３，９９０元（約US$135）；ﾃｽﾄ 😀 Windows 7市佔率20％"


def test_utf8_roles_of_bytes():
    assert [utf8_role(b) for b in (0x41, 0x80, 0xBF, 0xC0, 0xC2, 0xE4, 0xF0, 0xF5)] == [
        WHOLE, CONTINUATION, CONTINUATION, INVALID, 2, 3, 4, INVALID,
    ]  # fmt: skip


@pytest.mark.parametrize("model_type", ["char", "unigram"])
def test_mixed_script_text_round_trips(tokenizer, tmp_path, model_type):
    if model_type == "char":
        texts = ["北市明年增設公共自行車站", "延長夜間營運時間 2024 年", "Apple發表iPhone 17 Pro"] * 20
        tokenizer = train_tokenizer(texts, tmp_path, vocab_size=400, model_type="char")
    ids = tokenizer(MIXED).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == MIXED


def random_titles(tokenizer, processor, steps: int = 24, rows: int = 64) -> list[str]:
    """Greedy decoding over random scores that favour byte pieces, with `processor` (or none) applied; after
    `steps` tokens, end-of-title is by far the likeliest token. Each title is decoded up to its first end."""
    generator = torch.Generator().manual_seed(0)
    roles = token_roles(byte_piece_ids(tokenizer), len(tokenizer))
    eos = tokenizer.eos_token_id
    ids = torch.zeros(rows, 1, dtype=torch.long)  # the decoder start token
    for step in range(steps + 4):
        scores = torch.randn(rows, len(roles), generator=generator)
        scores[:, roles != WHOLE] += 3.0  # mostly bytes: the hard case
        scores[:, eos] += 100.0 if step >= steps else -100.0
        if processor is not None:
            scores = processor(ids, scores)
        ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    titles = [row[: row.index(eos)] if eos in row else row for row in ids.tolist()]
    return tokenizer.batch_decode(titles, skip_special_tokens=True)


def test_whole_characters_never_decode_to_replacement_characters(tokenizer):
    assert has_byte_pieces(tokenizer)
    unguarded = random_titles(tokenizer, None)
    assert sum("\ufffd" in t for t in unguarded) > 32, "without the guard, random bytes break characters"
    guard = WholeCharacters(byte_piece_ids(tokenizer), len(tokenizer), tokenizer.eos_token_id)
    guarded = random_titles(tokenizer, guard)
    assert not any("\ufffd" in t for t in guarded)
    vocabulary = tokenizer.get_vocab()
    spelled_in_bytes = [c for t in guarded for c in t if ord(c) > 0x7F and c not in vocabulary]
    assert len(spelled_in_bytes) > 32, "the guarded titles still hold characters spelled in bytes"


def test_end_of_title_waits_for_the_end_of_a_character(tokenizer):
    lead = tokenizer.convert_tokens_to_ids("<0xE4>")  # the first of three bytes
    guard = WholeCharacters(byte_piece_ids(tokenizer), len(tokenizer), tokenizer.eos_token_id)
    scores = guard(torch.tensor([[0, lead]]), torch.zeros(1, len(tokenizer)))
    assert scores[0, tokenizer.eos_token_id] == float("-inf")
    allowed = {tokenizer.convert_ids_to_tokens(i) for i in torch.nonzero(scores[0] > float("-inf")).flatten().tolist()}
    assert allowed == {f"<0x{b:02X}>" for b in range(0x80, 0xC0)}


def test_generated_titles_hold_no_replacement_character(tokenizer):
    """A random model whose output layer favours byte pieces: generate_titles keeps its titles whole."""
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL).eval()
    roles = token_roles(byte_piece_ids(tokenizer), model.config.vocab_size)
    with torch.no_grad():
        model.lm_head.weight[roles != WHOLE] *= 50
    articles = ["臺北市政府今天宣布，明年起將在全市增設五十座公共自行車站。", "ＮＴ＄３，９９０元（約US$135）😀"]
    titles = generate_titles(model, tokenizer, articles, progress=False, max_new_tokens=16, num_beams=1)
    assert all("\ufffd" not in t for t in titles)
    assert any(t for t in titles), "the titles are not all empty"


def test_decoded_titles_drop_bytes_cut_off_at_the_length_limit(tokenizer):
    ids = tokenizer("北市").input_ids[:-1] + [tokenizer.convert_tokens_to_ids("<0xE4>"), tokenizer.eos_token_id]
    assert "\ufffd" in tokenizer.decode(ids, skip_special_tokens=True)
    assert decode_titles(tokenizer, [ids]) == ["北市"]
    assert drop_broken_characters("a\ufffdb") == "ab"
