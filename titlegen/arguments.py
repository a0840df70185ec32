"""The settings every command declares: one dataclass field per setting, with its name, type, help text and range.

Each setting is declared once: a YAML key, a command-line flag and the field share its name, and the names are
the ones transformers or its summarization example already use. Commands compose these dataclasses (and
transformers' ``Seq2SeqTrainingArguments``); a command that needs only some settings of a declaration takes them
with `titlegen.config.settings_from`. Reading them from YAML and flags is `titlegen.config`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from titlegen.backends import BACKENDS

# Upper bounds of the size-like settings. Each one multiplies memory and time, and a value past them is a typo or
# an attack, not a title: titles are tens of tokens, and mT5 (relative positions) has no position range of its own
# to bound them by. A generated title of MAX_NEW_TOKENS tokens is 16 times the longest title the configs train on;
# MAX_NUM_BEAMS beams is 8 times the widest beam the default comparison grid tries; an article of MAX_SOURCE_LENGTH
# tokens is 16 times what mt5_small_full.yaml reads (attention memory grows with its square).
MAX_NEW_TOKENS = 1024
MAX_NUM_BEAMS = 64
MAX_SOURCE_LENGTH = 8192
# More threads than any machine has cores only adds switching between them.
MAX_THREADS = 1024
# What every random generator accepts as a seed (numpy's: an unsigned 32-bit integer).
MAX_SEED = 2**32 - 1


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from: a pretrained one, or (without model_name_or_path) a new one."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. google/mt5-small) or local folder of the seq2seq model to start from.",
            "aliases": ["--model"],
        },
    )
    model_type: str = field(
        default="mt5",
        metadata={"help": "Architecture of a model built from scratch (any seq2seq model_type)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value settings for a model built from scratch (model_name_or_path "
            "empty), e.g. 'd_model=256,num_layers=4,num_heads=4'."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer hub id or folder. Defaults to model_name_or_path; for a model built from "
            "scratch, a SentencePiece tokenizer is trained on the training text instead."
        },
    )
    tokenizer_vocab_size: int = field(
        default=8000, metadata={"help": "Vocabulary size of a tokenizer trained on the training text.", "min": 16}
    )
    tokenizer_type: str = field(
        default="unigram",
        metadata={
            "help": "Kind of tokenizer trained on the training text: unigram (as mT5) or char (one token per "
            "character; a model trained from scratch learns to copy from the article sooner).",
            "choices": ["unigram", "char"],
        },
    )
    tokenizer_copy_slots: bool = field(
        default=False,
        metadata={
            "help": "Train the tokenizer with copy slots: each distinct Latin word or number of an article becomes "
            "one token, in the article and its title alike, which the model copies whole (titlegen/spans.py)."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models are cached."})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Train only the decoder: the encoder's parameters stay fixed."}
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the token embeddings fixed: the shared input embedding and the output layer."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "After a use_lora run, also write output_dir/merged: the adapter merged into the pretrained "
            "weights, a plain model that loads without peft."
        },
    )


@dataclass
class LoraArguments:
    """Low-rank adapters (LoRA, with peft) in place of full fine-tuning: titlegen-train and titlegen-rl."""

    use_lora: bool = field(
        default=False,
        metadata={
            "help": "Train low-rank adapters and keep the pretrained weights fixed. A titlegen-train output_dir "
            "then holds the adapter (titlegen-predict and titlegen-merge accept it); titlegen-rl merges it."
        },
    )
    lora_r: int = field(
        default=8, metadata={"help": "Rank of the adapters: higher adapts more, with more parameters.", "min": 1}
    )
    lora_alpha: int = field(
        default=16, metadata={"help": "Adapter scale: updates are multiplied by lora_alpha/lora_r.", "min": 1}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input.", "min": 0})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q", "k", "v", "o"],
        metadata={
            "help": "Layers to adapt, by name. Default: mT5's attention projections. Add wi_0 wi_1 wo for its "
            "feed-forward layers, or give all-linear for every linear layer but the output layer."
        },
    )


@dataclass
class DataArguments:
    """Where the data is and how it is cut to length."""

    train_file: str | None = field(default=None, metadata={"help": "Training jsonl (course format)."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation jsonl. Without it, a seeded split of train_file is used."}
    )
    validation_split_percentage: float = field(
        default=5.0,
        metadata={"help": "Share of train_file held out when no validation_file is given.", "min": 0, "max": 100},
    )
    text_column: str = field(default="maintext", metadata={"help": "Field holding the article."})
    summary_column: str = field(default="title", metadata={"help": "Field holding the title."})
    id_column: str = field(default="id", metadata={"help": "Field holding the record id."})
    source_prefix: str = field(default="", metadata={"help": "Text put before every article (e.g. 'summarize: ')."})
    max_source_length: int = field(
        default=256,
        metadata={"help": "Articles are truncated to this many tokens.", "min": 1, "max": MAX_SOURCE_LENGTH},
    )
    max_target_length: int = field(
        default=64, metadata={"help": "Titles are truncated to this many tokens.", "min": 1, "max": MAX_NEW_TOKENS}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs.", "min": 1}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation pairs.", "min": 1}
    )
    lead_pairs: float = field(
        default=0.0,
        metadata={
            "help": "Also train on article-lead pairs (the article's first max_target_length tokens as its "
            "title), this many per training pair (0-1). Teaches a model trained from scratch to copy from "
            "the article; 0 for pretrained models.",
            "min": 0,
            "max": 1,
        },
    )
    lead_pairs_clause_end: bool = field(
        default=False,
        metadata={
            "help": "End each lead pair's target before the last clause-ending mark (，。！？；： and their ASCII "
            "forms) within max_target_length, so that the model learns to end a title with a clause "
            "instead of at the length limit."
        },
    )


@dataclass
class RunArguments:
    """titlegen's own settings of a training run: titlegen-train and titlegen-rl."""

    segmenter: str = field(
        default="char",
        metadata={
            "help": "Word segmenter of the ROUGE computed during training (and of titlegen-rl's reward).",
            "choices": ["char", "jieba", "ckip", "auto"],
        },
    )
    generation_article_tokens_only: bool | None = field(
        default=None,
        metadata={
            "help": "Titles use only tokens of their own article (and end-of-title), in evaluation and as the "
            "saved model's default: fewer miscopied characters for a small model trained from scratch. "
            "Default: as the starting model's generation config says (off for a new model)."
        },
    )
    generation_backend: str = field(
        default="transformers",
        metadata={
            "help": "What writes the titles of each evaluation: transformers' generate, or ct2 (the model exported "
            "to CTranslate2 at each evaluation, int8 on CPU; README, CTranslate2).",
            "choices": [backend for backend in BACKENDS if backend != "auto"],
        },
    )
    generation_max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "The longest title generated, in tokens, in evaluation and as the saved model's default "
            "(default: max_target_length).",
            "min": 1,
            "max": MAX_NEW_TOKENS,
        },
    )
    generation_no_loops: bool | None = field(
        default=None,
        metadata={
            "help": "Titles never hold a unit of 1-4 tokens three times in a row unless their article does "
            "(titlegen/loops.py), in evaluation and as the saved model's default: a guard against titles that loop. "
            "Default: as the starting model's generation config says (off for a new model)."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of the best metric.", "min": 1},
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue from the latest complete checkpoint in output_dir."}
    )
    flush_denormal: bool = field(
        default=True,
        metadata={"help": "On CPU, flush denormal floats to zero: arithmetic on them is many times slower."},
    )
    keep_freed_memory: bool = field(
        default=True,
        metadata={
            "help": "On CPU with glibc, keep freed memory in the process for the next step instead of handing "
            "large blocks back to the system, which zeroes them again at their next use (bench/README.md)."
        },
    )


@dataclass
class GenerationArguments:
    """The model, the engine that runs it, and the batches of a command that writes titles: titlegen-predict,
    titlegen-compare, titlegen-serve."""

    model_name_or_path: str = field(
        metadata={
            "help": "Model folder to write titles with: one titlegen-train wrote (full, pruned or LoRA adapter), "
            "or a hub id.",
            "aliases": ["--model"],
        }
    )
    batch_size: int = field(default=16, metadata={"help": "Articles per generate call.", "min": 1})
    bf16: bool = field(default=False, metadata={"help": "Generate under bfloat16 autocast (transformers backend)."})
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed of sampling; a sampled title depends only on it and its article.",
            "min": 0,
            "max": MAX_SEED,
        },
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": "transformers, ct2 (a titlegen-export folder, decoded by CTranslate2), or auto: by the folder.",
            "choices": list(BACKENDS),
        },
    )
    compute_type: str | None = field(
        default=None,
        metadata={"help": "ct2 backend: CTranslate2's compute type (default: the export's weight type on CPU)."},
    )
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads for the model (default: the library's choice).", "min": 1, "max": MAX_THREADS},
    )


@dataclass
class DecodingArguments:
    """How titles are decoded: a named preset (titlegen.strategies), and generate arguments on top of it."""

    strategy: str | None = field(
        default=None,
        metadata={"help": "Decoding preset: greedy, beam, beam_no_repeat, top_k, top_p or temperature (default: "
                  "the model's generation config)."},
    )  # fmt: skip
    num_beams: int | None = field(
        default=None, metadata={"help": "Beam width (1 = greedy).", "min": 1, "max": MAX_NUM_BEAMS}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest title, in tokens.", "min": 1, "max": MAX_NEW_TOKENS}
    )
    do_sample: bool | None = field(default=None, metadata={"help": "Sample instead of searching."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k likeliest tokens (0: all).", "min": 0})
    top_p: float | None = field(
        default=None, metadata={"help": "Sample from the smallest set of tokens of mass p.", "min": 0, "max": 1}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Softmax temperature for sampling.", "min_exclusive": 0}
    )
    no_repeat_ngram_size: int | None = field(
        default=None, metadata={"help": "Forbid repeating n-grams of this size (0: allow).", "min": 0}
    )
    repetition_penalty: float | None = field(
        default=None, metadata={"help": "Penalty on tokens already in the title (1: none).", "min_exclusive": 0}
    )
    length_penalty: float | None = field(default=None, metadata={"help": "Beam score length exponent."})
    article_tokens_only: bool | None = field(
        default=None, metadata={"help": "Titles use only tokens of their own article (and end-of-title)."}
    )
    no_loops: bool | None = field(
        default=None,
        metadata={"help": "Titles never hold a unit of 1-4 tokens three times in a row unless their article does."},
    )

    def generate_arguments(self) -> dict[str, Any]:
        """The generate arguments set here (None: not set), without the strategy."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "strategy"}


def train_settings() -> tuple[type, ...]:
    """The settings of titlegen-train, in the order its recipe unpacks them (titlegen-estimate reads the same)."""
    from transformers import Seq2SeqTrainingArguments  # here, not at the top: `--help` of other commands is faster

    return ModelArguments, LoraArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments
