"""LoRA: only the adapters train; the adapter folder and its merged checkpoint predict the same titles."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from titlegen import TitlegenError
from titlegen.cli import merge_main
from titlegen.lora import add_lora
from titlegen.model_folder import load_model
from titlegen.modeling import count_parameters
from titlegen.recipes.predict import predict
from titlegen.recipes.train import train

from .conftest import ARTICLES, ROOT, read_lines, tiny_train_args

ARTICLE_TEXTS = [r["maintext"] for r in read_lines(ARTICLES)]
FEED_FORWARD = ("wi_0", "wi_1", "wo")  # mT5's gated feed-forward layers


def adapted_layers(peft_model) -> set[str]:
    """Names of the layers that got an adapter, e.g. {'q', 'v', 'wo'}."""
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if ".lora_A" in n}


def train_steps(model, tokenizer, steps=3):
    batch = tokenizer(ARTICLE_TEXTS[:4], return_tensors="pt", padding=True)
    labels = tokenizer(text_target=[r["title"] for r in read_lines(ARTICLES)[:4]], return_tensors="pt", padding=True)
    labels = labels.input_ids.masked_fill(labels.input_ids == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_only_the_adapters_change_in_training(trained_dir):
    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    model = add_lora(load_model(str(trained_dir)), r=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, tokenizer)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {n for n in before if ".lora_" in n}, "every adapter weight changed, and nothing else"
    assert adapted_layers(model) == {"q", "k", "v", "o"}


def test_trainable_parameters_are_the_adapters(trained_dir):
    model = load_model(str(trained_dir))
    _, total = count_parameters(model)
    config = model.config
    model = add_lora(model, r=4)
    trainable, total_with_adapters = count_parameters(model)
    # Each adapted layer gets A (r x in) and B (out x r); q, k, v map d_model to heads*d_kv, o back.
    inner = config.num_heads * config.d_kv
    attention_layers = config.num_layers + 2 * config.num_decoder_layers  # self-attention, plus cross-attention
    assert trainable == attention_layers * 4 * 4 * (config.d_model + inner)
    assert total_with_adapters == total + trainable


@pytest.mark.parametrize(
    "targets, expected",
    [(["q", "k", "v", "o", *FEED_FORWARD], {"q", "k", "v", "o", *FEED_FORWARD}), (["all-linear"], None)],
)
def test_feed_forward_layers_can_be_adapted(trained_dir, targets, expected):
    model = add_lora(load_model(str(trained_dir)), r=2, target_modules=targets)
    layers = adapted_layers(model)
    assert set(FEED_FORWARD) <= layers and "lm_head" not in layers
    assert expected is None or layers == expected


def test_unknown_target_modules_are_reported(trained_dir):
    with pytest.raises(TitlegenError, match=r"lora_target_modules=\['q_proj'\]"):
        add_lora(load_model(str(trained_dir)), target_modules=["q_proj"])


def test_use_lora_needs_a_pretrained_model(tmp_path):
    with pytest.raises(TitlegenError, match="use_lora adapts a pretrained model: set model_name_or_path"):
        train(["--output_dir", str(tmp_path / "x"), "--use_lora", "true"])


@pytest.fixture(scope="module")
def lora_dir(trained_dir, tmp_path_factory):
    """A LoRA run on top of the trained tiny model, merged at the end."""
    output_dir = tmp_path_factory.mktemp("lora") / "run"
    args = ["--model_name_or_path", str(trained_dir), "--use_lora", "true", "--lora_r", "4", "--merge_lora", "true"]
    train(tiny_train_args(output_dir, *args))
    return output_dir


@pytest.mark.slow
def test_a_lora_run_saves_only_the_adapter(lora_dir, trained_dir):
    for name in ("adapter_config.json", "adapter_model.safetensors", "generation_config.json", "tokenizer.json",
                 "run_config.yaml", "eval_predictions.jsonl", "merged/model.safetensors"):  # fmt: skip
        assert (lora_dir / name).is_file(), name
    assert not (lora_dir / "model.safetensors").exists()
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(trained_dir.resolve())
    with safe_open(lora_dir / "adapter_model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
        assert all(weights.get_tensor(n).abs().sum() > 0 for n in names if ".lora_B." in n), "B starts at 0"
    # Merged, the run changed exactly the adapted layers of the base model.
    base, merged = load_file(trained_dir / "model.safetensors"), load_file(lora_dir / "merged" / "model.safetensors")
    assert base.keys() == merged.keys()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed == {name for name in base if name.rsplit(".", 2)[-2] in ("q", "k", "v", "o")}


def test_merged_model_equals_the_adapter_model(lora_dir):
    adapter_model = load_model(str(lora_dir), merge_adapter=False)
    merged = AutoModelForSeq2SeqLM.from_pretrained(lora_dir / "merged")
    assert (
        type(adapter_model).__name__ == "PeftModelForSeq2SeqLM"
        and type(merged).__name__ == "MT5ForConditionalGeneration"
    )
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    batch = tokenizer(ARTICLE_TEXTS, return_tensors="pt", padding=True)
    decoder_input_ids = batch.input_ids[:, :8]
    adapter_model.eval(), merged.eval()
    with torch.no_grad():
        expected = adapter_model(**batch, decoder_input_ids=decoder_input_ids).logits
        got = merged(**batch, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The adapter changed the model: its logits differ from the base model's.
    base = adapter_model.get_base_model()
    with adapter_model.disable_adapter(), torch.no_grad():
        assert not torch.allclose(base(**batch, decoder_input_ids=decoder_input_ids).logits, expected, atol=1e-4)


@pytest.mark.slow
def test_predict_accepts_the_adapter_and_the_merged_folder(lora_dir, tmp_path):
    titles = {}
    for name, model_dir in (("adapter", lora_dir), ("merged", lora_dir / "merged")):
        out = tmp_path / f"{name}.jsonl"
        titles[name] = predict(["--model", str(model_dir), "--input", str(ARTICLES), "--output", str(out)])
    assert titles["adapter"] == titles["merged"]
    assert len(titles["adapter"]) == len(ARTICLE_TEXTS)


@pytest.mark.slow
def test_the_merged_checkpoint_loads_without_peft(lora_dir):
    code = (
        "import sys; sys.modules['peft'] = None\n"  # any import of peft now fails
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        f"model = AutoModelForSeq2SeqLM.from_pretrained({str(lora_dir / 'merged')!r})\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(lora_dir / 'merged')!r})\n"
        "ids = model.generate(**tokenizer(['北市增設公共自行車站'], return_tensors='pt'))\n"
        "assert ids.shape[1] > 1 and model.generation_config.max_new_tokens == 16\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def test_merge_command(lora_dir, trained_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    assert merge_main([str(lora_dir), "-o", str(out)]) == 0
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "run_config.yaml"):
        assert (out / name).is_file(), name
    assert merge_main([str(lora_dir), "-o", str(out)]) == 2
    assert "already exists; choose another output folder" in capsys.readouterr().err
    assert merge_main([str(trained_dir), "-o", str(tmp_path / "other")]) == 2
    assert "not an adapter folder (it has no adapter_config.json)" in capsys.readouterr().err
