"""Vocabulary pruning: shrink a T5/mT5 checkpoint and its SentencePiece tokenizer to the tokens a corpus uses.

mT5-small covers 101 languages with 250,112 tokens: its input embedding and output layer hold 85% of its
300M parameters, and the output layer and its softmax dominate a training step. Chinese titles need a
small share of those tokens. Pruning keeps every piece that the tokenizer gives the corpus (plus the
special tokens and any byte pieces) and renumbers them in their old order.

Why segmentation does not change: a Unigram tokenizer picks the segmentation with the highest total
score (Viterbi). For a text whose original segmentation uses only kept pieces, that segmentation is
still available after pruning, and removing pieces adds no better one, so the pruned tokenizer gives
the same pieces, under new ids. The model keeps those pieces' embedding and output rows, so it computes
the same logits over the kept tokens.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import atomic_output_dir, follow_umask, normalize_text, write_json
from titlegen.model_folder import load_model, load_tokenizer
from titlegen.modeling import count_parameters
from titlegen.preprocessing import source_texts
from titlegen.spans import SLOT_TOKENS

PRUNED_VOCAB_FILE = "pruned_vocab.json"  # written next to the pruned model: sizes and the old id of every new id
SUPPORTED_MODEL_TYPES = ("t5", "mt5")


def kept_token_ids(tokenizer, texts: Iterable[str], source_prefix: str = "") -> list[int]:
    """The ids to keep, ascending: every token the tokenizer gives `texts`, the special tokens, byte pieces and
    copy slots.

    Args:
        tokenizer: A tokenizer whose backend is a ``tokenizers`` Unigram model (T5, mT5, titlegen's own).
        texts: Corpus texts (articles and titles); whitespace is normalised as in preprocessing.
        source_prefix: The prefix the model's articles get; its tokens are kept too, also where they
            merge with the start of a text.
    """

    texts = [normalize_text(t) for t in texts]
    if source_prefix:
        texts += source_texts(texts, source_prefix)
    kept = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        kept.update(ids)
    # With byte fallback, characters outside the corpus then still become bytes rather than <unk>;
    # SentencePiece also refuses a byte-fallback model without all 256 of them.
    kept.update(i for piece, i in tokenizer.get_vocab().items() if _is_byte_piece(piece))
    # Copy slots stand for the words of articles to come, whatever the corpus has (titlegen/spans.py).
    kept.update(i for piece, i in tokenizer.get_vocab().items() if piece in SLOT_TOKENS)
    return sorted(kept)


def _is_byte_piece(piece: str) -> bool:
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def prune_tokenizer(tokenizer, kept: list[int]):
    """A tokenizer with only the `kept` ids of `tokenizer` (its Unigram pieces and added tokens), renumbered.

    Normaliser, pre-tokeniser, decoder and post-processor are kept; the ids they refer to are renumbered.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "Unigram":
        raise TitlegenError(f"vocabulary pruning needs a SentencePiece Unigram tokenizer, not {model['type']}")
    new_id = {old: new for new, old in enumerate(kept)}
    model["vocab"] = [model["vocab"][i] for i in kept if i < len(model["vocab"])]
    model["unk_id"] = new_id[model["unk_id"]]
    for token in spec["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for token in (spec.get("post_processor") or {}).get("special_tokens", {}).values():
        token["ids"] = [new_id[i] for i in token["ids"]]
    backend = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer.special_tokens_map)


def prune_sentencepiece(model_file: str | Path, kept: list[int], tokenizer) -> bytes:
    """The serialised SentencePiece model `model_file` with only the `kept` pieces, renumbered.

    Its pieces must be those of `tokenizer`, id for id, as in a tokenizer converted from it.
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    if [piece for piece, _, _ in pieces] != tokenizer.convert_ids_to_tokens(list(range(len(pieces)))):
        raise TitlegenError(f"{model_file}: its pieces differ from those of the tokenizer next to it")
    kept_pieces = [pieces[i] for i in kept if i < len(pieces)]
    del proto.pieces[:]
    for piece, score, kind in kept_pieces:
        proto.pieces.add(piece=piece, score=score, type=kind)
    new_id = {old: new for new, old in enumerate(kept)}
    for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(proto.trainer_spec, name)
        if old >= 0:
            setattr(proto.trainer_spec, name, new_id[old])
    return proto.SerializeToString()


def prune_model(model, kept: list[int]) -> None:
    """Keeps only the `kept` rows of the model's input embedding and output layer (new id i = kept[i]).

    Works in place and keeps the output layer tied to the input embedding or apart from it, as it was.
    (transformers' ``resize_token_embeddings`` keeps the first rows only, and ties an untied mT5 output
    layer again, because ``MT5Config`` always says ``tie_word_embeddings=True``.)
    """
    import torch

    index = torch.tensor(kept)
    embeddings, output_layer = model.get_input_embeddings(), model.get_output_embeddings()
    tied = output_layer.weight is embeddings.weight
    new_embeddings = torch.nn.Embedding(len(kept), embeddings.embedding_dim, device="meta")
    new_embeddings.weight = torch.nn.Parameter(embeddings.weight.detach()[index].clone())
    new_output_layer = torch.nn.Linear(embeddings.embedding_dim, len(kept), bias=False, device="meta")
    new_output_layer.weight = (
        new_embeddings.weight if tied else torch.nn.Parameter(output_layer.weight.detach()[index].clone())
    )
    model.set_input_embeddings(new_embeddings)
    model.set_output_embeddings(new_output_layer)

    new_id = {old: new for new, old in enumerate(kept)}
    model.config.vocab_size = len(kept)
    for config in (model.config, model.generation_config):
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                setattr(config, name, new_id[value])
            elif isinstance(value, list):
                setattr(config, name, [new_id[v] for v in value])


def prune_vocabulary(model_dir: str, texts: Iterable[str], output_dir: str | Path, source_prefix: str = "") -> dict:
    """Writes a copy of a T5/mT5 model folder that knows only the tokens `texts` use.

    The new folder (written atomically) holds the pruned model and tokenizer (and ``spiece.model`` when
    the original has one), the original's run_config.yaml, and ``pruned_vocab.json`` with the sizes
    before and after and ``kept_ids``: the original id of each new id.

    Returns:
        The sizes: ``vocab_size`` and ``parameters``, each as ``[before, after]``.
    """

    with atomic_output_dir(output_dir) as tmp:  # refuses an existing output before any work
        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir)
        if model.config.model_type not in SUPPORTED_MODEL_TYPES:
            raise TitlegenError(
                f"{model_dir}: vocabulary pruning supports T5 and mT5 models, not {model.config.model_type}"
            )
        kept = kept_token_ids(tokenizer, texts, source_prefix)
        vocab_size, parameters = model.config.vocab_size, count_parameters(model)[1]
        if kept[-1] >= vocab_size:
            raise TitlegenError(f"{model_dir}: the tokenizer has ids up to {kept[-1]}, the model {vocab_size} rows")

        pruned_tokenizer = prune_tokenizer(tokenizer, kept)
        prune_model(model, kept)
        sizes = {"vocab_size": [vocab_size, len(kept)], "parameters": [parameters, count_parameters(model)[1]]}
        model.save_pretrained(tmp)
        follow_umask(tmp)
        pruned_tokenizer.save_pretrained(tmp)
        if spiece := _sentencepiece_file(tokenizer, model_dir):
            (tmp / "spiece.model").write_bytes(prune_sentencepiece(spiece, kept, tokenizer))
        if (Path(model_dir) / "run_config.yaml").is_file():
            shutil.copyfile(Path(model_dir) / "run_config.yaml", tmp / "run_config.yaml")
        write_json(tmp / PRUNED_VOCAB_FILE, {"source": str(model_dir), **sizes, "kept_ids": kept})
    return sizes


def _sentencepiece_file(tokenizer, model_dir: str) -> Path | None:
    """The SentencePiece model behind a tokenizer: T5Tokenizer's vocab_file, or spiece.model in its folder."""
    for candidate in (getattr(tokenizer, "vocab_file", None), Path(model_dir) / "spiece.model"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
