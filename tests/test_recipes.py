"""Smoke runs of the recipes on a tiny model, and the course's run.sh interface."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from titlegen.generation import generate_titles
from titlegen.recipes.predict import main as predict_main
from titlegen.recipes.predict import predict
from titlegen.recipes.train import main as train_main
from titlegen.recipes.train import train

from .conftest import ARTICLES, NO_EVAL, ROOT, read_lines, real_data, tiny_train_args


def test_training_writes_a_reproducible_run(trained_dir):
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "run_config.yaml", "train_results.json", "eval_results.json", "all_results.json",
                 "trainer_state.json", "eval_predictions.jsonl"):  # fmt: skip
        assert (trained_dir / name).is_file(), name
    state = json.loads((trained_dir / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses and all(loss == loss for loss in losses), "losses are logged and finite"
    evals = [e for e in state["log_history"] if "eval_rouge-l" in e]
    assert len(evals) == 2, "one tw_rouge evaluation per epoch"
    eval_metrics = json.loads((trained_dir / "eval_results.json").read_text())
    assert {"eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_gen_len"} <= set(eval_metrics)
    predictions = read_lines(trained_dir / "eval_predictions.jsonl")
    assert [p["id"] for p in predictions] == [r["id"] for r in read_lines(ARTICLES)]
    config = (trained_dir / "run_config.yaml").read_text()
    assert "learning_rate: 0.01" in config and "titlegen-train --config" in config


@pytest.mark.slow
def test_the_saved_model_reloads_and_predicts(trained_dir, tmp_path):
    model = AutoModelForSeq2SeqLM.from_pretrained(trained_dir)
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    assert model.generation_config.max_new_tokens == 16
    # Seq2SeqTrainer's evaluation fills the model's config with max_length=20; the saved ones are as chosen.
    checkpoints = sorted(trained_dir.glob("checkpoint-*"))
    assert checkpoints, "checkpoints were saved"
    for folder in (trained_dir, *checkpoints):
        saved = json.loads((folder / "generation_config.json").read_text())
        assert saved["max_new_tokens"] == 16 and "max_length" not in saved, folder
    out = tmp_path / "pred.jsonl"
    predictions = predict(["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(out)])
    assert read_lines(out) == predictions
    assert [p["id"] for p in predictions] == [r["id"] for r in read_lines(ARTICLES)]
    assert list(predictions[0]) == ["title", "id"]
    # The recipe and the library give the same greedy titles.
    direct = generate_titles(model, tokenizer, [r["maintext"] for r in read_lines(ARTICLES)], max_source_length=64,
                             progress=False)  # fmt: skip
    assert [p["title"] for p in predictions] == direct


@pytest.mark.slow
def test_article_tokens_only_applies_in_evaluation_and_to_the_saved_model(tmp_path):
    out = tmp_path / "restricted"
    train(tiny_train_args(out, "--generation_article_tokens_only", "true", "--num_train_epochs", "1"))
    assert json.loads((out / "generation_config.json").read_text())["article_tokens_only"] is True
    articles = {r["id"]: r["maintext"] for r in read_lines(ARTICLES)}
    evaluated = read_lines(out / "eval_predictions.jsonl")
    assert all(set(p["title"]) - {" "} <= set(articles[p["id"]]) for p in evaluated), evaluated
    predictions = predict(["--model", str(out), "--input", str(ARTICLES), "--output", str(tmp_path / "pred.jsonl")])
    assert predictions == evaluated, "predicted as evaluated"
    unrestricted = predict(["--model", str(out), "--input", str(ARTICLES), "--output", str(tmp_path / "free.jsonl"),
                            "--article_tokens_only", "false"])  # fmt: skip
    assert unrestricted != predictions


@pytest.mark.slow
def test_length_sorted_batches_keep_input_order(trained_dir):
    model = AutoModelForSeq2SeqLM.from_pretrained(trained_dir)
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    articles = [r["maintext"][: 10 + 7 * i] for i, r in enumerate(read_lines(ARTICLES))]
    one_by_one = generate_titles(model, tokenizer, articles, batch_size=1, progress=False)
    batched = generate_titles(model, tokenizer, articles, batch_size=5, progress=False)
    assert batched == one_by_one


@pytest.mark.slow
def test_run_sh_on_the_course_format(trained_dir, tmp_path):
    """bash run.sh IN OUT on the 10 genuine course articles (newlines, long texts, Latin and digits)."""
    sample = real_data("adl-news/sample_test.jsonl")
    out = tmp_path / "submission.jsonl"
    env = {**os.environ, "TITLEGEN_MODEL": str(trained_dir), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "run.sh"), str(sample), str(out)], env=env, capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    predictions = read_lines(out)
    assert [p["id"] for p in predictions] == [r["id"] for r in read_lines(sample)]
    assert all(isinstance(p["title"], str) and "\n" not in p["title"] for p in predictions)


def test_run_sh_without_arguments_prints_usage():
    result = subprocess.run(["bash", str(ROOT / "run.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: bash run.sh INPUT.jsonl OUTPUT.jsonl" in result.stderr


def test_predict_refuses_to_overwrite_its_input(trained_dir, tmp_path, capsys):
    copy = tmp_path / "in.jsonl"
    copy.write_bytes(ARTICLES.read_bytes())

    assert predict_main(["--model", str(trained_dir), "--input", str(copy), "--output", str(copy)]) == 2
    assert "the output file is the input file" in capsys.readouterr().err
    assert copy.read_bytes() == ARTICLES.read_bytes()


@pytest.mark.slow
def test_training_refuses_to_overwrite_a_run_and_resumes_on_request(trained_dir, tmp_path, capsys):
    assert train_main(tiny_train_args(trained_dir)) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err

    # Resuming a finished run from its last checkpoint trains no further and keeps the step count.
    run = tmp_path / "resumed"
    train(tiny_train_args(run, "--num_train_epochs", "1"))
    first_state = json.loads((run / "trainer_state.json").read_text())
    metrics = train(tiny_train_args(run, "--num_train_epochs", "2", "--resume", "true"))
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * first_state["global_step"]
    assert metrics["epoch"] == 2


@pytest.mark.slow
def test_lead_pairs_add_one_article_opening_target_per_article(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="titlegen")
    run = tmp_path / "leads"
    train(tiny_train_args(run, "--num_train_epochs", "1", "--lead_pairs", "1.0", *NO_EVAL))
    assert "training on 12 pairs and 12 article-lead pairs" in caplog.text
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 24 // 4


def test_bad_training_data_is_reported_without_traceback(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text(
        '{"id": "1", "maintext": "文章", "title": "標題"}\n{"id": "2", "maintext": "文章"}\n',
        encoding="utf-8",
    )
    assert train_main(tiny_train_args(tmp_path / "out", "--train_file", str(bad))) == 2
    assert "train.jsonl:2: field 'title' is missing" in capsys.readouterr().err


# titlegen-train's (and the trainer's) flags are transformers' Seq2SeqTrainingArguments, whose import loads torch and
# transformers' trainer already: its recipe imports the trainer at the top for no extra time.
@pytest.mark.parametrize(
    "module", ["titlegen.recipes.predict", "titlegen.recipes.predict_ray", "titlegen.recipes.compare",
               "titlegen.recipes.rl", "titlegen.recipes.serve", "titlegen.cli"],
)  # fmt: skip
def test_help_needs_no_heavy_imports(module):
    code = f"import sys, {module}\nassert not {{'torch', 'transformers'}} & set(sys.modules), 'heavy import at import'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    ["titlegen.recipes.train", "titlegen.recipes.predict", "titlegen.recipes.predict_ray", "titlegen.recipes.compare",
     "titlegen.recipes.rl"],
)  # fmt: skip
def test_help_answers(module):
    # argparse formats each help text with %: a stray % in a setting's help breaks --help.
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--model_name_or_path" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("freeze_embeddings", [False, True], ids=["decoder-only", "decoder-only-frozen-embeddings"])
def test_decoder_only_training_leaves_frozen_parameters_unchanged(trained_dir, tmp_path, caplog, freeze_embeddings):
    caplog.set_level(logging.INFO, logger="titlegen")
    flags = ["--freeze_encoder", "true", "--freeze_embeddings", str(freeze_embeddings).lower()]
    train(tiny_train_args(tmp_path, "--model_name_or_path", str(trained_dir), "--num_train_epochs", "1", *flags))
    before, after = load_file(trained_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    frozen = {name for name in before if name.startswith("encoder.")} | (
        {"shared.weight"} if freeze_embeddings else set()
    )
    assert not changed & frozen
    assert changed == set(before) - frozen, "everything else trained"
    # The log states how many parameters train, and their share.
    trainable, total = map(int, re.search(r"parameters: (\d+) trainable of (\d+)", caplog.text).groups())
    assert trainable == sum(after[name].numel() for name in changed) and total == sum(t.numel() for t in after.values())
    titles = predict(["--model", str(tmp_path), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")])
    assert len(titles) == len(read_lines(ARTICLES))
