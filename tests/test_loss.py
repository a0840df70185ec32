"""Gradient accumulation with the title loss gives the update of the larger batch."""

import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from titlegen.loss import title_loss
from titlegen.modeling import build_model
from titlegen.preprocessing import make_tokenize_fn

from .conftest import ARTICLES, TINY_MODEL, read_lines


def one_sgd_step(tokenizer, tmp_path, batch_size: int, accumulation: int, **trainer_kwargs) -> dict:
    """The weights after one optimizer step over the first 8 fixture articles (of different lengths)."""
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL)  # dropout 0: the steps are deterministic
    records = read_lines(ARTICLES)[:8]
    tokenize = make_tokenize_fn(tokenizer, "maintext", "title", 64, 16)
    dataset = Dataset.from_list(records).map(tokenize, batched=True, remove_columns=list(records[0]))
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / f"{batch_size}x{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",  # the update is the gradient itself, so its scale shows
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        **trainer_kwargs,
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_difference(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.slow
def test_accumulated_micro_batches_give_the_update_of_the_whole_batch(tokenizer, tmp_path):
    whole = one_sgd_step(tokenizer, tmp_path, 8, 1, compute_loss_func=title_loss)
    for batch_size, accumulation in ((4, 2), (2, 4)):
        accumulated = one_sgd_step(tokenizer, tmp_path, batch_size, accumulation, compute_loss_func=title_loss)
        assert max_difference(accumulated, whole) < 1e-5, (batch_size, accumulation)


@pytest.mark.slow
def test_without_the_title_loss_accumulation_scales_the_update(tokenizer, tmp_path):
    """Guards the reason for title_loss: mT5's own loss makes 4 accumulation steps a ~4x larger update."""
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in build_model("mt5", tokenizer, TINY_MODEL).named_parameters()}
    whole = one_sgd_step(tokenizer, tmp_path, 8, 1)
    accumulated = one_sgd_step(tokenizer, tmp_path, 2, 4)
    ratio = max_difference(accumulated, before) / max_difference(whole, before)
    assert ratio == pytest.approx(4, rel=0.3)


def test_label_smoothing_matches_transformers_label_smoother(tokenizer):
    from transformers.trainer_pt_utils import LabelSmoother

    torch.manual_seed(0)
    logits = torch.randn(3, 5, len(tokenizer))
    labels = torch.randint(0, len(tokenizer), (3, 5))
    labels[0, 3:] = -100
    expected = LabelSmoother(epsilon=0.1)({"logits": logits}, labels)
    assert title_loss({"logits": logits}, labels, label_smoothing=0.1).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
