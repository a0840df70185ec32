"""Vocabulary pruning: same tokens and logits on in-vocabulary text; the pruned folder loads, trains and predicts."""

import json
import re
import shutil

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from titlegen.cli import prune_vocab_main
from titlegen.data import normalize_text
from titlegen.generation import generate_titles
from titlegen.modeling import build_model, count_parameters, untie_output_layer
from titlegen.prune import PRUNED_VOCAB_FILE, prune_vocabulary
from titlegen.recipes.predict import predict
from titlegen.recipes.train import train

from .conftest import ARTICLES, TINY_MODEL, read_lines, tiny_train_args

RECORDS = read_lines(ARTICLES)
CORPUS = [r[c] for r in RECORDS[:6] for c in ("maintext", "title")]  # half of the articles
HELD_OUT = [r[c] for r in RECORDS[6:] for c in ("maintext", "title")]


def encode(tokenizer, texts):
    return [tokenizer(normalize_text(t)).input_ids for t in texts]


def recombined(texts):
    """New texts made of the clauses of `texts`, joined in another order."""
    clauses = [c for t in texts for c in re.split(r"[，。、；：！？]", normalize_text(t)) if c]
    return [a + "，" + b for a, b in zip(clauses[:-1], reversed(clauses[1:]), strict=True)]


def logits(model, input_ids, labels):
    pad = lambda rows: torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True)  # noqa: E731
    inputs, decoder_inputs = pad(input_ids), pad(labels)
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs, attention_mask=inputs.ne(0), decoder_input_ids=decoder_inputs).logits


def assert_pruning_preserves_tokens_and_logits(original_dir, pruned_dir, texts):
    tokenizer, pruned_tokenizer = AutoTokenizer.from_pretrained(original_dir), AutoTokenizer.from_pretrained(pruned_dir)
    kept = json.loads((pruned_dir / PRUNED_VOCAB_FILE).read_text())["kept_ids"]
    new_id = {old: new for new, old in enumerate(kept)}
    ids = encode(tokenizer, texts)
    assert encode(pruned_tokenizer, texts) == [[new_id[i] for i in row] for row in ids]
    assert [pruned_tokenizer.decode(row, skip_special_tokens=True) for row in encode(pruned_tokenizer, texts)] == [
        tokenizer.decode(row, skip_special_tokens=True) for row in ids
    ]
    model, pruned = (
        AutoModelForSeq2SeqLM.from_pretrained(original_dir),
        AutoModelForSeq2SeqLM.from_pretrained(pruned_dir),
    )
    labels = ids[::-1]  # any decoder input made of kept tokens
    expected = logits(model, ids, labels)[..., kept]
    got = logits(pruned, [[new_id[i] for i in row] for row in ids], [[new_id[i] for i in row] for row in labels])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_in_vocabulary_text_keeps_its_tokens_and_logits(trained_dir, tmp_path):
    out = tmp_path / "pruned"
    sizes = prune_vocabulary(str(trained_dir), CORPUS, out)
    kept = json.loads((out / PRUNED_VOCAB_FILE).read_text())["kept_ids"]
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    assert sizes["vocab_size"] == [len(tokenizer), len(kept)] and len(kept) < len(tokenizer)
    assert sizes["parameters"][1] < sizes["parameters"][0]
    # Texts outside the corpus that the original tokenizer writes with kept tokens only.
    candidates = recombined(CORPUS)
    new_texts = [t for t, ids in zip(candidates, encode(tokenizer, candidates), strict=True) if set(ids) <= set(kept)]
    assert len(new_texts) >= 10
    assert_pruning_preserves_tokens_and_logits(trained_dir, out, CORPUS + new_texts)


def test_text_outside_the_corpus_still_encodes(trained_dir, tmp_path):
    out = tmp_path / "pruned"
    prune_vocabulary(str(trained_dir), CORPUS, out)
    pruned_tokenizer = AutoTokenizer.from_pretrained(out)
    for text in HELD_OUT:  # pruned pieces are written with shorter pieces or byte pieces, never lost
        assert pruned_tokenizer.decode(pruned_tokenizer(normalize_text(text)).input_ids, skip_special_tokens=True) == (
            normalize_text(text)
        )


@pytest.fixture(scope="module")
def mt5_layout_dir(tokenizer, tmp_path_factory):
    """A folder laid out like google/mt5-small: spiece.model and T5Tokenizer settings, an untied output layer."""
    folder = tmp_path_factory.mktemp("mt5_layout")
    shutil.copyfile(f"{tokenizer.name_or_path}/spiece.model", folder / "spiece.model")
    settings = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0}
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "T5Tokenizer"}))
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL)
    untie_output_layer(model)
    model.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_an_mt5_layout_with_untied_output_layer(mt5_layout_dir, tmp_path):
    assert type(AutoTokenizer.from_pretrained(mt5_layout_dir)).__name__ == "T5Tokenizer"
    out = tmp_path / "pruned"
    prune_vocabulary(str(mt5_layout_dir), CORPUS, out)
    assert_pruning_preserves_tokens_and_logits(mt5_layout_dir, out, CORPUS)
    pruned = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert pruned.lm_head.weight.data_ptr() != pruned.shared.weight.data_ptr(), "the output layer stays untied"
    # The pruned spiece.model is the pruned tokenizer, id for id.
    sp = spm.SentencePieceProcessor(model_file=str(out / "spiece.model"))
    pruned_tokenizer = AutoTokenizer.from_pretrained(out)
    assert sp.get_piece_size() == len(pruned_tokenizer)
    assert [sp.encode(normalize_text(t)) + [sp.eos_id()] for t in CORPUS] == encode(pruned_tokenizer, CORPUS)


def test_untied_parameters_shrink_by_two_rows_per_pruned_token(mt5_layout_dir, tmp_path):
    sizes = prune_vocabulary(str(mt5_layout_dir), CORPUS, tmp_path / "pruned")
    (vocab_before, vocab_after), (params_before, params_after) = sizes["vocab_size"], sizes["parameters"]
    d_model = AutoModelForSeq2SeqLM.from_pretrained(mt5_layout_dir).config.d_model
    assert params_before - params_after == 2 * d_model * (vocab_before - vocab_after)


@pytest.fixture(scope="module")
def pruned_dir(trained_dir, tmp_path_factory):
    """The trained tiny model pruned to the text it was trained on."""
    out = tmp_path_factory.mktemp("pruned") / "model"
    all_texts = [r[c] for r in RECORDS for c in ("maintext", "title")]
    assert prune_vocab_main([str(trained_dir), "--corpus", str(ARTICLES), "-o", str(out)]) == 0
    assert_pruning_preserves_tokens_and_logits(trained_dir, out, all_texts)
    return out


@pytest.mark.slow
def test_greedy_titles_equal_the_original_model_kept_to_the_same_tokens(trained_dir, pruned_dir, tmp_path):
    kept = set(json.loads((pruned_dir / PRUNED_VOCAB_FILE).read_text())["kept_ids"])
    articles = [r["maintext"] for r in RECORDS]
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(trained_dir), AutoTokenizer.from_pretrained(trained_dir)
    pruned_out = tmp_path / "pruned.jsonl"
    predict(["--model", str(pruned_dir), "--input", str(ARTICLES), "--output", str(pruned_out), "--num_beams", "1"])
    suppress = [i for i in range(model.config.vocab_size) if i not in kept]
    expected = generate_titles(
        model, tokenizer, articles, max_source_length=64, progress=False, suppress_tokens=suppress
    )
    assert [p["title"] for p in read_lines(pruned_out)] == expected
    _, total = count_parameters(AutoModelForSeq2SeqLM.from_pretrained(pruned_dir))
    assert total == json.loads((pruned_dir / PRUNED_VOCAB_FILE).read_text())["parameters"][1]


@pytest.mark.slow
def test_the_pruned_model_trains_and_reloads(pruned_dir, tmp_path):
    out = tmp_path / "run"
    metrics = train(tiny_train_args(out, "--model_name_or_path", str(pruned_dir), "--num_train_epochs", "1"))
    assert metrics["train_loss"] == metrics["train_loss"]
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert (
        model.config.vocab_size
        == len(AutoTokenizer.from_pretrained(out))
        == len(AutoTokenizer.from_pretrained(pruned_dir))
    )
    assert len(predict(["--model", str(out), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")])) == 12


def test_cli_errors(trained_dir, pruned_dir, tokenizer, tmp_path, capsys):
    assert prune_vocab_main([str(trained_dir), "--corpus", str(ARTICLES), "-o", str(pruned_dir)]) == 2
    assert "already exists; choose another output folder" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "maintext": "文章"}\n', encoding="utf-8")
    assert prune_vocab_main([str(trained_dir), "--corpus", str(bad), "-o", str(tmp_path / "out")]) == 2
    assert "bad.jsonl:1: field 'title' is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    bart = tmp_path / "bart"
    layers = "encoder_layers=1,decoder_layers=1,encoder_ffn_dim=16,decoder_ffn_dim=16"
    heads = "encoder_attention_heads=2,decoder_attention_heads=2"
    build_model("bart", tokenizer, f"d_model=16,{layers},{heads}").save_pretrained(bart)
    tokenizer.save_pretrained(bart)
    assert prune_vocab_main([str(bart), "--corpus", str(ARTICLES), "-o", str(tmp_path / "out")]) == 2
    assert "vocabulary pruning supports T5 and mT5 models, not bart" in capsys.readouterr().err
