"""Every command on model folders in the hub's own layout (tests/hub_layout.py): pytorch_model.bin, whole or
sharded, read with torch's weights-only unpickler; a T5Tokenizer folder with spiece.model and no tokenizer.json.
And the refusals: a .bin whose pickle would run code, weights that are not finite, a missing folder, a broken
config.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from titlegen.cli import export_main, merge_main, prune_vocab_main
from titlegen.config import parse_args
from titlegen.data import normalize_text
from titlegen.model_folder import load_model, load_tokenizer
from titlegen.recipes.compare import main as compare_main
from titlegen.recipes.predict import main as predict_main
from titlegen.recipes.rl import main as rl_main
from titlegen.recipes.serve import build_app, settings
from titlegen.recipes.train import main as train_main
from titlegen.spans import SLOT_TOKENS, encode_article, uses_slots
from titlegen.tokenizer import train_tokenizer

from .conftest import ARTICLES, NO_EVAL, ROOT, read_lines, subprocess_env, tiny_train_args
from .hub_layout import EXTRA_ROWS, write_hub_layout
from .test_prune import assert_pruning_preserves_tokens_and_logits

RECORDS = read_lines(ARTICLES)
IDS = [r["id"] for r in RECORDS]
# Characters the fixture articles never use, which the spiece.model spells as UTF-8 byte pieces.
UNSEEN = "鱷魚𠮷😀"


@pytest.fixture(scope="module", params=[1, 2], ids=["pytorch_model.bin", "sharded"])
def hub_dir(request, tokenizer, tmp_path_factory) -> Path:
    spiece = Path(tokenizer.name_or_path) / "spiece.model"
    return write_hub_layout(tmp_path_factory.mktemp("hub") / "mt5-small", spiece, shards=request.param)


def titles(path: Path) -> list[str]:
    predictions = read_lines(path)
    assert [p["id"] for p in predictions] == IDS
    return [p["title"] for p in predictions]


def predict(model: Path, output: Path, *flags: str) -> list[str]:
    argv = ["--model", str(model), "--input", str(ARTICLES), "--output", str(output), "--max_new_tokens", "8"]
    assert predict_main([*argv, *flags]) == 0
    return titles(output)


def test_the_folder_has_the_hubs_layout(hub_dir):
    names = {p.name for p in hub_dir.iterdir()}
    assert {"config.json", "generation_config.json", "spiece.model", "tokenizer_config.json"} <= names
    assert not {"tokenizer.json", "model.safetensors", "model.safetensors.index.json"} & names
    assert any(name.startswith("pytorch_model") and name.endswith(".bin") for name in names)
    assert json.loads((hub_dir / "config.json").read_text())["tie_word_embeddings"] is False


def test_the_model_loads_untied_with_the_saved_weights(hub_dir):
    model = load_model(str(hub_dir))
    saved = {}
    for path in sorted(hub_dir.glob("pytorch_model*.bin")):
        saved.update(torch.load(path, weights_only=True))
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0, msg=name)


def test_the_t5_tokenizer_encodes_as_sentencepiece_does(hub_dir):
    tokenizer = load_tokenizer(str(hub_dir))
    sp = spm.SentencePieceProcessor(model_file=str(hub_dir / "spiece.model"))
    texts = [normalize_text(r["maintext"])[:80] for r in RECORDS[:4]] + [f"今天{UNSEEN}2024"]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids == sp.encode(text) + [sp.eos_id()], text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.unk_token_id not in tokenizer(UNSEEN).input_ids, "byte fallback, as in spiece.model"


@pytest.mark.slow
def test_predict_run_sh_and_compare(hub_dir, tmp_path):
    expected = predict(hub_dir, tmp_path / "predict.jsonl")
    env = {**subprocess_env(), "TITLEGEN_MODEL": str(hub_dir), "PYTHON": sys.executable}
    out = tmp_path / "run_sh.jsonl"
    done = subprocess.run(["bash", str(ROOT / "run.sh"), str(ARTICLES), str(out), "--max_new_tokens", "8"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert titles(out) == expected
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {strategy: greedy}\n")
    argv = ["--model", str(hub_dir), "--input", str(ARTICLES), "--output_dir", str(tmp_path / "compare"),
            "--grid", str(grid), "--max_new_tokens", "8"]  # fmt: skip
    assert compare_main(argv) == 0
    assert titles(tmp_path / "compare" / "predictions" / "greedy.jsonl") == expected


def test_export_and_serve(hub_dir, tmp_path):
    import httpx  # noqa: F401  (the client of the serving tests)

    from .test_serve import running

    expected = predict(hub_dir, tmp_path / "predict.jsonl", "--no_loops", "false", "--article_tokens_only", "false")
    assert export_main([str(hub_dir), "-o", str(tmp_path / "export"), "--quantization", "float32"]) == 0
    # The export checked its log-probabilities against the model's before it was written.
    exported = predict(tmp_path / "export", tmp_path / "ct2.jsonl", "--no_loops", "false",
                       "--article_tokens_only", "false")  # fmt: skip
    assert len(exported) == len(expected)
    assert json.loads((tmp_path / "export" / "titlegen_export.json").read_text())["log_prob_error"] < 1e-4
    app = build_app(*parse_args(settings(), ["--model", str(hub_dir), "--max_new_tokens", "8"]))
    with running(app) as client:
        body = {"articles": [{"id": r["id"], "maintext": r["maintext"]} for r in RECORDS[:3]]}
        response = client.post("/v1/titles", json=body)
    assert response.status_code == 200, response.text
    assert [t["title"] for t in response.json()["titles"]] == predict(hub_dir, tmp_path / "served.jsonl")[:3]


@pytest.mark.slow
def test_train_and_rl_save_folders_that_keep_their_tokenizer(hub_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_train_args(run, "--model_name_or_path", str(hub_dir), *NO_EVAL, "--max_steps", "2",
                           "--save_strategy", "no")  # fmt: skip
    assert train_main(args) == 0
    trained = load_model(str(run))
    assert trained.lm_head.weight.data_ptr() != trained.shared.weight.data_ptr(), "the output layer stays untied"
    assert trained.config.vocab_size == len(load_tokenizer(str(hub_dir))) + EXTRA_ROWS
    text = f"今天{UNSEEN}2024"
    assert load_tokenizer(str(run))(text).input_ids == load_tokenizer(str(hub_dir))(text).input_ids
    assert len(predict(run, tmp_path / "trained.jsonl")) == len(IDS)

    rl = tmp_path / "rl"
    args = ["--config", str(ROOT / "trainer_args" / "rl_scst.yaml"), "--model", str(hub_dir), "--train_file",
            str(ARTICLES), "--validation_file", str(ARTICLES), "--output_dir", str(rl), "--max_eval_samples", "2",
            "--max_target_length", "8", "--per_device_train_batch_size", "2", "--num_return_sequences", "2",
            "--max_steps", "1", "--disable_tqdm", "true"]  # fmt: skip
    assert rl_main(args) == 0
    assert load_tokenizer(str(rl))(text).input_ids == load_tokenizer(str(hub_dir))(text).input_ids
    assert len(predict(rl, tmp_path / "rl.jsonl")) == len(IDS)


@pytest.mark.slow
def test_lora_merge_and_prune_vocab(hub_dir, tmp_path):
    adapter = tmp_path / "lora"
    args = tiny_train_args(adapter, "--model_name_or_path", str(hub_dir), "--use_lora", "true", "--lora_r", "4",
                           *NO_EVAL, "--max_steps", "2", "--save_strategy", "no")  # fmt: skip
    assert train_main(args) == 0
    assert merge_main([str(adapter), "-o", str(tmp_path / "merged")]) == 0
    adapter_model, merged = load_model(str(adapter), merge_adapter=False), load_model(str(tmp_path / "merged"))
    tokenizer = load_tokenizer(str(tmp_path / "merged"))
    batch = tokenizer([r["maintext"][:60] for r in RECORDS[:4]], return_tensors="pt", padding=True)
    adapter_model.eval(), merged.eval()
    with torch.no_grad():
        expected = adapter_model(**batch, decoder_input_ids=batch.input_ids[:, :6]).logits
        torch.testing.assert_close(merged(**batch, decoder_input_ids=batch.input_ids[:, :6]).logits, expected)
    assert merged.lm_head.weight.data_ptr() != merged.shared.weight.data_ptr(), "the output layer stays untied"
    assert len(predict(tmp_path / "merged", tmp_path / "merged.jsonl")) == len(IDS)

    pruned = tmp_path / "pruned"
    assert prune_vocab_main([str(hub_dir), "--corpus", str(ARTICLES), "-o", str(pruned)]) == 0
    assert (pruned / "spiece.model").is_file(), "the pruned folder keeps a SentencePiece model"
    kept = json.loads((pruned / "pruned_vocab.json").read_text())["kept_ids"]
    assert len(kept) < len(load_tokenizer(str(hub_dir)))
    assert_pruning_preserves_tokens_and_logits(hub_dir, pruned, [r[c] for r in RECORDS for c in ("maintext", "title")])
    assert len(predict(pruned, tmp_path / "pruned.jsonl")) == len(IDS)


def test_copy_slots_of_a_t5_tokenizer_folder(tmp_path):

    texts = [encode_article(normalize_text(r[c]))[0] for r in RECORDS for c in ("maintext", "title")]
    train_tokenizer(texts, tmp_path / "slots", vocab_size=1000, copy_slots=True)
    folder = write_hub_layout(tmp_path / "hub", tmp_path / "slots" / "spiece.model")
    tokenizer = load_tokenizer(str(folder))
    assert uses_slots(tokenizer)
    ids = tokenizer("<w0>年<w1>").input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[-2] == "<w1>" and SLOT_TOKENS[0] in tokenizer.convert_ids_to_tokens(ids)
    assert len(predict(folder, tmp_path / "slots.jsonl")) == len(IDS)


# Refusals ----------------------------------------------------------------------------------------------------------


class RunsCode:
    """A pickled object whose unpickling would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def copy_without_weights(hub_dir: Path, folder: Path) -> Path:
    shutil.copytree(hub_dir, folder, ignore=shutil.ignore_patterns("pytorch_model*"))
    return folder


def one_line_error(capsys) -> str:
    """The command's error: one line, its last on stderr (progress bars may come before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def test_a_bin_whose_pickle_would_run_code_is_refused(hub_dir, tmp_path, capsys):
    folder = copy_without_weights(hub_dir, tmp_path / "crafted")
    marker = tmp_path / "code-ran"
    state = torch.load(next(hub_dir.glob("pytorch_model*.bin")), weights_only=True)
    torch.save({**state, "shared.weight": RunsCode(marker)}, folder / "pytorch_model.bin")
    shutil.copyfile(hub_dir / "config.json", folder / "config.json")
    for command in (
        lambda: predict_main(["--model", str(folder), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")]),
        lambda: train_main(tiny_train_args(tmp_path / "run", "--model_name_or_path", str(folder), *NO_EVAL)),
        lambda: prune_vocab_main([str(folder), "--corpus", str(ARTICLES), "-o", str(tmp_path / "pruned")]),
    ):
        assert command() == 2
        err = one_line_error(capsys)
        assert f"cannot load the model '{folder}': its .bin weights hold objects other than tensors" in err, err
        assert "could run code" in err
        assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "pruned").exists()


def test_safetensors_are_preferred_to_a_bin_beside_them(hub_dir, tmp_path):
    folder = copy_without_weights(hub_dir, tmp_path / "both")
    load_model(str(hub_dir)).save_pretrained(folder)
    marker = tmp_path / "code-ran"
    torch.save({"shared.weight": RunsCode(marker)}, folder / "pytorch_model.bin")
    assert len(predict(folder, tmp_path / "p.jsonl")) == len(IDS)
    assert not marker.exists()


def test_weights_that_are_not_finite_are_refused(hub_dir, tmp_path, capsys):
    """A safetensors file with a valid header and random tensor bytes: titles would be noise."""
    folder = copy_without_weights(hub_dir, tmp_path / "random")
    load_model(str(hub_dir)).save_pretrained(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    weights.write_bytes(data[:header] + os.urandom(len(data) - header))
    assert predict_main(["--model", str(folder), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")]) == 2
    assert f"{weights}: weight " in one_line_error(capsys)

    folder = copy_without_weights(hub_dir, tmp_path / "nan")
    state = {}
    for path in sorted(hub_dir.glob("pytorch_model*.bin")):
        state.update(torch.load(path, weights_only=True))
    state["lm_head.weight"][5, 3] = float("nan")
    torch.save(state, folder / "pytorch_model.bin")
    assert predict_main(["--model", str(folder), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")]) == 2
    assert one_line_error(capsys) == (
        f"error: {folder}/pytorch_model.bin: weight lm_head.weight holds NaN or infinite values; "
        "the weights file is damaged"
    )


def test_a_missing_folder_and_a_broken_config_are_named(hub_dir, tmp_path, capsys):
    output = ["--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")]
    assert predict_main(["--model", str(tmp_path / "nowhere"), *output]) == 2
    assert one_line_error(capsys) == f"error: {tmp_path / 'nowhere'}: no such model folder"
    folder = copy_without_weights(hub_dir, tmp_path / "broken")
    (folder / "config.json").write_text('{"model_type": "mt5",\n "d_model": }\n')
    for command in (
        lambda: predict_main(["--model", str(folder), *output]),
        lambda: prune_vocab_main([str(folder), "--corpus", str(ARTICLES), "-o", str(tmp_path / "pruned")]),
        lambda: train_main(tiny_train_args(tmp_path / "run", "--model_name_or_path", str(folder), *NO_EVAL)),
    ):
        assert command() == 2
        assert one_line_error(capsys).startswith(f"error: {folder}/config.json: not valid JSON (")


def test_run_sh_without_a_model_says_how_to_make_one(tmp_path):
    env = {**subprocess_env(), "TITLEGEN_MODEL": str(tmp_path / "outputs" / "mt5_small_full")}
    done = subprocess.run(["bash", str(ROOT / "run.sh"), str(ARTICLES), str(tmp_path / "p.jsonl")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"run.sh: no model at '{tmp_path / 'outputs' / 'mt5_small_full'}'")
    assert "make train" in done.stderr and len(done.stderr.strip().splitlines()) == 1
