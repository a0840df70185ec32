"""Training a SentencePiece tokenizer on the training text, saved as a Hugging Face tokenizer folder.

Two kinds: ``unigram`` (mT5's own, pieces of one or more characters) and ``char`` (one piece per
character). A model trained from scratch on a few thousand articles learns to copy from the article much
sooner with ``char``: every title character is then a piece it can find in the article.

The tokenizer follows mT5's conventions (ids: pad 0, eos 1, unk 2; ``▁`` marks a space) and adds
byte fallback, so digits, Latin letters, punctuation and rare characters are never ``<unk>``.

Why not ``T5Tokenizer``: in transformers 5.x it rebuilds its Unigram model with ``byte_fallback=False``
whenever it is loaded, and ``T5TokenizerFast(vocab_file=...)`` builds an empty vocabulary. The folder
written here holds a ``tokenizer.json`` that ``AutoTokenizer.from_pretrained`` loads unchanged.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import normalize_text
from titlegen.spans import SLOT_TOKENS

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# A char model's pieces are single characters, which the Unigram pipeline below reproduces exactly.
MODEL_TYPES = ("unigram", "char")


def train_tokenizer(
    texts: Iterable[str],
    output_dir: str | Path,
    vocab_size: int = 8000,
    character_coverage: float = 0.9995,
    model_type: str = "unigram",
    copy_slots: bool = False,
):
    """Trains a SentencePiece model on `texts` and saves it as a tokenizer folder.

    Args:
        texts: Training text; whitespace is normalised as in preprocessing.
        output_dir: Folder to write (``tokenizer.json``, ``tokenizer_config.json``, ``spiece.model``).
        vocab_size: Upper bound on the vocabulary size (smaller corpora give smaller vocabularies).
        character_coverage: Share of characters that get their own piece; the rest use byte pieces.
        model_type: ``unigram`` or ``char``.
        copy_slots: Add the copy-slot tokens of `titlegen.spans` (give `texts` encoded with them).

    Returns:
        The tokenizer, loaded back from `output_dir`.
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer

    if model_type not in MODEL_TYPES:
        raise TitlegenError(f"tokenizer model type '{model_type}' is not one of {', '.join(MODEL_TYPES)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sentences = (s for s in (normalize_text(t) for t in texts) if s)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_prefix=prefix,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                pad_piece=PAD,
                eos_piece=EOS,
                unk_piece=UNK,
                byte_fallback=True,
                split_digits=True,
                # Keep text as written: NFKC would turn full-width Chinese punctuation into ASCII.
                normalization_rule_name="identity",
                user_defined_symbols=SLOT_TOKENS if copy_slots else [],
                hard_vocab_limit=False,
                max_sentence_length=1 << 16,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as err:
            if "(vocab_size) >= (0)" in str(err):  # the char trainer, when byte and special pieces fill it
                raise TitlegenError(
                    f"tokenizer_vocab_size={vocab_size} leaves no room for characters next to the 259 byte and "
                    "special pieces; raise tokenizer_vocab_size"
                ) from err
            if "required_chars" in str(err):
                raise TitlegenError(
                    f"tokenizer_vocab_size={vocab_size} is smaller than the number of distinct characters "
                    "in the training text; raise tokenizer_vocab_size"
                ) from err
            raise
        model_file = Path(prefix + ".model")
        tokenizer = _to_transformers(model_file)
        tokenizer.save_pretrained(output_dir)
        (output_dir / "spiece.model").write_bytes(model_file.read_bytes())
    return AutoTokenizer.from_pretrained(output_dir)


def _to_transformers(model_file: Path):
    """Builds the equivalent ``tokenizers`` pipeline of a SentencePiece model, byte fallback included."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    backend = Tokenizer(Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    backend.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, sp.eos_id())]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK)
