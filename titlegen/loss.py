"""The training loss: cross entropy per title token, averaged over every token of an optimizer step."""

from __future__ import annotations


def title_loss(outputs, labels, num_items_in_batch=None, label_smoothing: float = 0.0):
    """Cross entropy summed over the title tokens of a micro-batch, divided by the tokens of the whole step.

    For ``Seq2SeqTrainer(compute_loss_func=...)``. With gradient accumulation, the Trainer passes the
    number of title tokens in all micro-batches of the step, so that the accumulated gradient equals
    the gradient of the large batch. The models' own loss does not do this: mT5 averages over its
    micro-batch and ignores ``num_items_in_batch``, and as its ``forward`` takes ``**kwargs`` the
    Trainer (transformers 5.23) then skips its division by the accumulation steps, so k accumulation
    steps give a k times larger gradient, from means over differently padded micro-batches.

    Args:
        outputs: The model's outputs (``logits``: batch x target length x vocabulary).
        labels: Title token ids, -100 where padded.
        num_items_in_batch: Title tokens in the optimizer step; defaults to those of `labels`.
        label_smoothing: As ``label_smoothing_factor``: the share of the target spread over the vocabulary.
    """
    import torch.nn.functional as F

    logits = outputs["logits"]
    loss = F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum", label_smoothing=label_smoothing
    )
    if num_items_in_batch is None:
        num_items_in_batch = labels.ne(-100).sum()
    elif hasattr(num_items_in_batch, "to"):  # counted on the device of the first micro-batch
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
