"""Memory estimates against what PyTorch keeps, and the advice a run gives when memory runs out."""

import json
import math

import pytest
import torch
import yaml
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

import titlegen.engines
from titlegen import TitlegenError
from titlegen.cli import estimate_main
from titlegen.memory import estimate_training_memory
from titlegen.memory_advice import is_out_of_memory
from titlegen.modeling import build_model, count_parameters, freeze_encoder
from titlegen.recipes.predict import main as predict_main
from titlegen.recipes.train import main as train_main
from titlegen.recipes.train import train

from .conftest import ARTICLES, NO_EVAL, ROOT, TINY_MODEL, tiny_train_args

# Distinct sizes, so that every term of the count is exercised: d_model 64, d_ff 96, 3 heads x 40.
SHAPES = dict(vocab_size=1000, d_model=64, d_ff=96, num_heads=3, d_kv=40, num_layers=2, num_decoder_layers=2)


def saved_tensor_bytes(model, batch: int, source_length: int, target_length: int, bf16: bool) -> int:
    """Bytes of the distinct tensors that autograd keeps for the backward pass, the weights aside."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights | {0}:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    inputs = torch.randint(3, model.config.vocab_size, (batch, source_length))
    labels = torch.randint(3, model.config.vocab_size, (batch, target_length))
    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
    ):
        model(input_ids=inputs, labels=labels)
    return sum(kept.values())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_count_matches_what_autograd_keeps(bf16, dropout):
    torch.manual_seed(0)
    model = MT5ForConditionalGeneration(MT5Config(**SHAPES, dropout_rate=dropout))
    kept = saved_tensor_bytes(model, batch=2, source_length=32, target_length=8, bf16=bf16)
    estimate = estimate_training_memory(
        model, per_device_train_batch_size=2, max_source_length=32, max_target_length=8, bf16=bf16
    )
    # The forward pass keeps the activations and one of the three logits copies (the log-probabilities).
    assert estimate.activations + estimate.logits / 3 == pytest.approx(kept, rel=0.05)


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch", "adafactor", "adagrad", "sgd"])
def test_optimizer_state_matches_the_trainers_optimizer(optim, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), optim=optim, learning_rate=1e-3, report_to="none")
    optimizer = Seq2SeqTrainer(model=model, args=args).create_optimizer()
    batch = tokenizer(["北市增設公共自行車站"], return_tensors="pt")
    model(**batch, labels=tokenizer(text_target=["自行車站"], return_tensors="pt").input_ids).loss.backward()
    optimizer.step()
    tensors = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    state = sum(t.numel() * t.element_size() for t in tensors)  # scalars (step counts) aside
    estimate = estimate_training_memory(model, per_device_train_batch_size=1, max_source_length=8,
                                        max_target_length=4, optim=optim)  # fmt: skip
    assert estimate.optimizer_state == state
    if optim == "adafactor":  # T5's settings: a fixed learning rate, no parameter scaling
        group = optimizer.param_groups[0]
        assert (group["lr"], group["relative_step"], group["scale_parameter"], group["warmup_init"]) == (
            1e-3, False, False, False,
        )  # fmt: skip


def test_tied_weights_count_once_and_frozen_weights_get_no_gradient():
    with torch.device("meta"):
        model = MT5ForConditionalGeneration(MT5Config(**SHAPES))
    settings = dict(per_device_train_batch_size=4, max_source_length=32, max_target_length=8)
    estimate = estimate_training_memory(model, **settings)
    assert estimate.parameters == count_parameters(model)[1]
    assert estimate.weights == estimate.gradients == 4 * estimate.parameters
    assert estimate.optimizer_state == 8 * estimate.parameters
    freeze_encoder(model)
    frozen = estimate_training_memory(model, **settings)
    assert frozen.trainable == count_parameters(model)[0] < frozen.parameters
    assert frozen.gradients == 4 * frozen.trainable


def test_each_switch_lowers_the_estimate_as_expected():
    with torch.device("meta"):
        model = MT5ForConditionalGeneration(MT5Config(**SHAPES))
    base = dict(per_device_train_batch_size=16, max_source_length=128, max_target_length=32)
    default = estimate_training_memory(model, **base)
    checkpointed = estimate_training_memory(model, **base, activation_checkpointing=True)
    assert checkpointed.activations < default.activations / 2  # 2 layers: one is recomputed at a time
    assert checkpointed.logits == default.logits  # the output layer is not checkpointed
    adafactor = estimate_training_memory(model, **base, optim="adafactor")
    assert adafactor.optimizer_state < default.optimizer_state / 10
    halved = estimate_training_memory(
        model, **{**base, "per_device_train_batch_size": 8}, gradient_accumulation_steps=2
    )
    assert halved.activations == pytest.approx(default.activations / 2, rel=0.01)
    assert halved.logits == default.logits / 2


def test_models_outside_the_t5_family_are_refused():
    with torch.device("meta"):
        model = BartForConditionalGeneration(BartConfig(vocab_size=100, d_model=16, encoder_layers=1))
    with pytest.raises(TitlegenError, match="T5 family"):
        estimate_training_memory(model, per_device_train_batch_size=1, max_source_length=8, max_target_length=4)


def test_estimate_command_counts_the_model_the_recipe_builds(tokenizer, capsys):
    argv = ["--config", str(ROOT / "trainer_args/tiny_offline.yaml"), "--config_overrides", TINY_MODEL,
            "--tokenizer_vocab_size", str(len(tokenizer))]  # fmt: skip
    assert estimate_main(argv) == 0
    out = capsys.readouterr().out
    _, total = count_parameters(build_model("mt5", tokenizer, TINY_MODEL))
    assert f"{total:,} parameters" in out
    config = yaml.safe_load((ROOT / "trainer_args/tiny_offline.yaml").read_text())
    for name in ("per_device_train_batch_size", "max_source_length", "max_target_length"):
        assert f"{name} {config[name]}," in out
    peaks = [in_bytes(p.split(": ")[1]) for p in out.split("peak by per_device_train_batch_size: ")[1].split(", ")]
    assert peaks == sorted(peaks) and len(peaks) == 8


def mt5_small_config(folder):
    """A model folder with google/mt5-small's config (its output layer is untied), without weights."""
    MT5Config().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return folder


def estimate_output(capsys, *argv) -> str:
    assert estimate_main(list(argv)) == 0
    return capsys.readouterr().out


def peak_of(output: str) -> float:
    return in_bytes(
        " ".join(next(line for line in output.splitlines() if line.strip().startswith("peak ")).split()[1:3])
    )


@pytest.mark.slow
def test_the_low_memory_config_fits_in_4_gib(tmp_path, capsys):
    model = str(mt5_small_config(tmp_path))
    full = estimate_output(
        capsys, "--config", str(ROOT / "trainer_args/mt5_small_full.yaml"), "--model_name_or_path", model
    )
    assert "300,176,768 parameters" in full  # google/mt5-small's, with its own output layer
    lowmem = estimate_output(capsys, "--config", str(ROOT / "trainer_args/mt5_small_full_lowmem.yaml"),
                             "--model_name_or_path", model)  # fmt: skip
    assert peak_of(lowmem) < 4 * 2**30 < peak_of(full)  # what makes it the config for 6-8 GB GPUs


@pytest.mark.slow
def test_estimate_counts_only_the_lora_adapters_as_trainable(tmp_path, capsys):
    model = str(mt5_small_config(tmp_path))
    out = estimate_output(
        capsys, "--config", str(ROOT / "trainer_args/mt5_small_lora.yaml"), "--model_name_or_path", model
    )
    # r=8 adapters on q, k, v and o (512 <-> 384) of 24 attention blocks: 8 + 8 self, 8 cross.
    assert f"{24 * 4 * 8 * (512 + 384):,} trainable" in out


def test_estimate_command_reports_a_missing_model(tmp_path, capsys):
    argv = ["--config", str(ROOT / "trainer_args/mt5_small_full.yaml"), "--model_name_or_path", str(tmp_path / "no")]
    assert estimate_main(argv) == 2
    assert "cannot load the config" in capsys.readouterr().err


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    cpu = (
        "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"
    )
    assert is_out_of_memory(RuntimeError(cpu))
    assert is_out_of_memory(RuntimeError("No executable batch size found, reached zero."))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def in_bytes(size: str) -> float:
    number, unit = size.split()
    return float(number) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def raise_when(method, condition, error):
    """`method` wrapped so that it raises `error` once `condition(self)` holds."""

    def wrapped(self, *args, **kwargs):
        if condition(self):
            raise error
        return method(self, *args, **kwargs)

    return wrapped


@pytest.mark.slow
def test_out_of_memory_in_training_names_the_settings_and_the_switches(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.91 GiB")
    in_second_epoch = raise_when(
        Seq2SeqTrainer.compute_loss, lambda trainer: trainer.model.training and trainer.state.global_step >= 3, oom
    )
    monkeypatch.setattr(Seq2SeqTrainer, "compute_loss", in_second_epoch)
    assert train_main(tiny_train_args(run, *NO_EVAL)) == 2
    err = capsys.readouterr().err
    message = err[err.index("error: ") :]  # after the progress bars
    assert message.startswith(
        "error: out of memory while training: per_device_train_batch_size 4 x gradient_accumulation_steps 1, "
        "max_source_length 64, max_target_length 16, float32 weights with bf16 autocast, "
        "optim adamw_torch_fused, activation_checkpointing false (estimated peak "
    )
    lines = [line.strip() for line in message.splitlines() if line.startswith("  ")]
    switches = [line.split("   ")[0].split(". ", 1)[1] for line in lines]
    assert set(switches[:-1]) == {
        "--per_device_train_batch_size 2 --gradient_accumulation_steps 2",
        "--activation_checkpointing true",
        "--optim adafactor --learning_rate 0.001",
    }
    assert switches[-1] == "--max_source_length 32"  # shorter articles change the task: last
    peaks = [in_bytes(line.split("(estimated peak ")[1].rstrip(")")) for line in lines]
    assert peaks[:-1] == sorted(peaks[:-1]), "the most effective switch first"
    assert f"{run / 'checkpoint-3'} is complete: add --resume true" in message

    # The checkpoint written before the error resumes, with a smaller batch of the same effective size.
    monkeypatch.undo()
    metrics = train(tiny_train_args(run, *NO_EVAL, "--resume", "true", "--per_device_train_batch_size", "2",
                                    "--gradient_accumulation_steps", "2"))  # fmt: skip
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 6
    assert metrics["epoch"] == 2


@pytest.mark.slow
def test_out_of_memory_in_evaluation_suggests_a_smaller_generation_batch(tmp_path, monkeypatch, capsys):
    failing = raise_when(Seq2SeqTrainer.prediction_step, lambda trainer: True, MemoryError())
    monkeypatch.setattr(Seq2SeqTrainer, "prediction_step", failing)
    assert train_main(tiny_train_args(tmp_path / "run", "--per_device_eval_batch_size", "6")) == 2
    err = capsys.readouterr().err
    message = err[err.index("error: ") :]
    assert (
        "out of memory while generating for evaluation: per_device_eval_batch_size 6 x generation_num_beams 1"
        in message
    )
    assert "1. --per_device_eval_batch_size 3" in message


def test_out_of_memory_in_prediction_suggests_smaller_batches(trained_dir, tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    monkeypatch.setattr(titlegen.engines, "generate_titles", out_of_memory)
    argv = ["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl"),
            "--num_beams", "4"]  # fmt: skip
    assert predict_main(argv) == 2
    err = capsys.readouterr().err
    message = err[err.index("error: ") :]
    assert message.startswith(
        "error: out of memory while generating: batch_size 16 x num_beams 4, max_source_length 64"
    )
    assert [line.split("   ")[0].strip() for line in message.splitlines() if line.startswith("  ")] == [
        "1. --batch_size 8", "2. --num_beams 2", "3. --bf16 true", "4. --max_source_length 32",
    ]  # fmt: skip
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.slow
def test_memory_switches_reach_the_trainer(tmp_path, monkeypatch):
    from transformers.optimization import Adafactor

    trainers = []
    original = Seq2SeqTrainer.train

    def keep_trainer(self, *args, **kwargs):
        trainers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Seq2SeqTrainer, "train", keep_trainer)
    switches = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                "--activation_checkpointing", "true", "--optim", "adafactor", "--learning_rate", "1e-3",
                "--bf16", "true", "--auto_find_batch_size", "true", "--per_device_eval_batch_size", "3",
                "--num_train_epochs", "1"]  # fmt: skip
    train(tiny_train_args(tmp_path / "run", *NO_EVAL, *switches))
    (trainer,) = trainers
    assert trainer.model.is_activation_checkpointing
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert isinstance(optimizer, Adafactor) and optimizer.param_groups[0]["initial_lr"] == 1e-3
    assert trainer.accelerator.mixed_precision == "bf16"
    assert trainer.args.auto_find_batch_size
    assert len(next(iter(trainer.get_eval_dataloader()))["input_ids"]) == 3  # generation batch for evaluation
    # 12 articles in micro-batches of 2, accumulated in pairs: 3 optimizer steps for the epoch.
    assert trainer.state.global_step == math.ceil(12 / (2 * 2))
    assert trainer.compute_loss_func is not None
