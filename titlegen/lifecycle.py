"""The life of a titlegen command, the same for every command.

A command (`titlegen.recipes`, `titlegen.cli`) goes through these steps, in this order, and each step here
gives every command the same guarantees:

1. settings (`titlegen.config.parse_args`): unknown, mistyped or out-of-range settings are refused;
2. outputs checked before any work (`check_output_file`, `prepare_run_dir`): an output that would
   overwrite an input or a finished run, or that cannot be written, is refused before anything is read;
3. inputs validated (`read_training_data`, `titlegen.data.read_jsonl`), with file, line and field;
4. the model folder loaded and validated (`load_model_folder`): weights, tokenizer and titlegen's settings
   checked against each other;
5. the process set up (`start_logging`, `configure_process`): logging, seeds, the CPU switches;
6. the work, writing its outputs atomically (`titlegen.data`) and resumably;

and `run_command` turns every `TitlegenError` raised on the way into one line on stderr and exit status 2.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titlegen import TitlegenError

logger = logging.getLogger(__name__)

# The files a model folder's loading reads: what a run that uses the model depends on (see `model_files`).
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "run_config.yaml",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",  # the hub's mT5 checkpoints, whole or sharded
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "pruned_vocab.json",
    "model.bin",  # a CTranslate2 export's weights, and what else titlegen-export writes
    "*vocabulary*",
    "titlegen_export.json",
)
# What a tokenizer folder holds: one of these files has the vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "vocab.json")


def run_command(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Runs a command's main function; a `TitlegenError` becomes a one-line message and exit status 2."""
    try:
        main(argv)
    except TitlegenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or `titlegen.callbacks.Interrupted` after a checkpoint
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "exit_status", 130)
    return 0


# Outputs --------------------------------------------------------------------------------------------------------------


def check_output_file(output: str | Path, inputs: Sequence[str | Path] = (), side_files: Sequence[str] = ()) -> None:
    """Refuses an output file that cannot be written, or whose writing would touch an input.

    Called before any work, so that a bad output path costs nothing. The output's parent folders are
    not created here.

    Args:
        output: The file the command will write.
        inputs: Files the command reads; none may be the output or one of its side files.
        side_files: Suffixes of the files written beside the output (e.g. ``.progress``).
    """
    output = Path(output)
    if output.is_dir():
        raise TitlegenError(f"{output}: is a folder; give the path of the file to write")
    written = [output, *(Path(f"{output}{suffix}") for suffix in side_files)]
    for path in inputs:
        for target in written:
            if Path(path).resolve() == target.resolve():
                what = "output file" if target == output else f"{target.name} file that the run writes"
                raise TitlegenError(f"{output}: the {what} is the input file {path}; choose another output path")
    check_writable_folder(output.parent, output)


def check_writable_folder(folder: str | Path, for_path: str | Path) -> None:
    """Refuses a folder in which files cannot be created (by trying), or a path through a file."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TitlegenError(f"{for_path}: cannot be created, {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise TitlegenError(f"{for_path}: cannot write in {existing} ({err.strerror})") from None


def check_output_folder(folder: str | Path, what: str) -> None:
    """Refuses an output folder that is a file, or one in which files cannot be created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TitlegenError(f"{folder}: output_dir is a file; choose a folder for {what}")
    check_writable_folder(folder, folder)


def prepare_run_dir(output_dir: str | Path, resume: bool, is_main_process: bool = True) -> Path | None:
    """Checks a training run's output_dir, and finds the checkpoint to resume from.

    Without `resume`, a folder holding anything but TensorBoard logs (``runs/``) is an earlier run and is
    refused. With it, the latest complete checkpoint is returned (None when there is none) and, on the
    main process, the checkpoints left incomplete are removed.
    """
    from titlegen.checkpoints import last_complete_checkpoint, remove_incomplete_checkpoints

    output_dir = Path(output_dir)
    check_output_folder(output_dir, "the run")
    if not output_dir.is_dir():
        return None
    if resume:
        last = last_complete_checkpoint(output_dir)
        if is_main_process:
            remove_incomplete_checkpoints(output_dir)
        if last is None:
            logger.info("no complete checkpoint in %s: starting from the beginning", output_dir)
        else:
            logger.info("resuming from %s", last)
        return last
    if any(p.name != "runs" for p in output_dir.iterdir()):
        raise TitlegenError(
            f"{output_dir} already holds a run; pass --resume to continue it, or choose another --output_dir"
        )
    return None


def save_run_config(output_dir: str | Path, command: str, *settings) -> None:
    """Writes output_dir/run_config.yaml: the run's settings that differ from the defaults, and how to rerun it."""
    import torch
    import transformers

    from titlegen import __version__
    from titlegen.config import resolved_config, save_config

    path = Path(output_dir) / "run_config.yaml"
    save_config(
        path,
        resolved_config(*settings),
        header=f"Resolved settings of this run (titlegen {__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}).\nReproduce it with: {command} --config {path}",
    )


# Inputs ---------------------------------------------------------------------------------------------------------------


def read_training_data(data_args, seed: int) -> tuple[list[dict], list[dict]]:
    """The training and validation records of a training run, validated, cut to max_train/eval_samples.

    Without a validation_file, a seeded `validation_split_percentage` of train_file is held out.
    """
    from titlegen.data import read_jsonl, split_records

    columns = (data_args.id_column, data_args.text_column, data_args.summary_column)
    if not data_args.train_file:
        raise TitlegenError("train_file is not set (in the config or as --train_file)")
    train = read_jsonl(data_args.train_file, fields=columns, id_field=data_args.id_column)
    if data_args.validation_file:
        validation = read_jsonl(data_args.validation_file, fields=columns, id_field=data_args.id_column)
    else:
        train, validation = split_records(train, data_args.validation_split_percentage, seed)
    return train[: data_args.max_train_samples], validation[: data_args.max_eval_samples]


# The model folder -----------------------------------------------------------------------------------------------------


@dataclass
class ModelFolder:
    """A loaded, validated model and its tokenizer."""

    model: Any
    tokenizer: Any


def load_model_folder(
    name_or_path: str, cache_dir: str | None = None, tokenizer_name: str | None = None, **kwargs
) -> ModelFolder:
    """Loads a model folder (full, pruned or LoRA adapter) or hub id, and checks its parts fit together.

    Checked before the model is used: the folder holds a tokenizer, every token id of the tokenizer and of
    the generation config has a row in the model's embedding, and run_config.yaml (when there is one) is
    readable. A missing or damaged file is a `TitlegenError` naming the folder and the file.

    Args:
        name_or_path: Model folder, adapter folder, or hub id.
        cache_dir: Where downloaded models are cached.
        tokenizer_name: A tokenizer folder or hub id to use instead of the model's own.
        **kwargs: Passed to `titlegen.modeling.load_model` (e.g. ``dtype``).
    """
    from titlegen.config import trained_settings
    from titlegen.modeling import check_model_name, load_model, load_tokenizer

    check_model_name(name_or_path)  # a missing folder or damaged config.json, named as such
    tokenizer_name = tokenizer_name or name_or_path
    if Path(tokenizer_name).is_dir():
        check_tokenizer_files(Path(tokenizer_name))
    trained_settings(name_or_path)  # a damaged run_config.yaml fails here, before the weights load
    tokenizer = load_tokenizer(tokenizer_name, cache_dir)
    model = load_model(name_or_path, cache_dir, **kwargs)
    check_model_fits_tokenizer(model, tokenizer, name_or_path)
    return ModelFolder(model, tokenizer)


def check_tokenizer_files(folder: Path) -> None:
    """Refuses a model folder without a tokenizer: transformers would build an empty one and write empty titles."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TitlegenError(
            f"{folder}: no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)}); "
            "copy in the tokenizer the model was trained with"
        )


def check_model_fits_tokenizer(model, tokenizer, where: str) -> None:
    """Refuses a tokenizer or generation config whose token ids the model's embedding has no row for."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise TitlegenError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows}; "
            "the tokenizer is not the one the model was trained with"
        )
    config = model.generation_config
    for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
        ids = getattr(config, name, None)
        for token_id in ids if isinstance(ids, list) else [ids]:
            if token_id is not None and not 0 <= token_id < rows:
                raise TitlegenError(f"{where}/generation_config.json: {name} {token_id} is not a token of the model")


def model_files(name_or_path: str | Path) -> list[Path]:
    """The files of a model folder that its loading reads (none for a hub id).

    A run's fingerprint covers these, and only these: files that a run writes into the folder (a
    prediction and its progress file, say) do not make the model look changed.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        return []
    return sorted({p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()})


def start_engine(args):
    """Seeds and CPU switches (`configure_process`), then the engine that `args` (`titlegen.config.GenerationArguments`)
    names: how titlegen-predict, titlegen-compare and titlegen-serve start."""
    from titlegen.engines import load_engine

    configure_process(args.seed)
    return load_engine(
        args.model_name_or_path, args.backend, bf16=args.bf16, compute_type=args.compute_type, threads=args.threads
    )


def title_decoding(model, run_args, data_args, num_beams: int | None):
    """How a training run's model writes titles, in evaluation and as its saved default: a generation config
    (`titlegen.generation.title_generation_config`) of at most ``generation_max_new_tokens`` tokens (else
    ``max_target_length``).

    Each setting of `run_args` (``generation_article_tokens_only``, ``generation_no_loops``) and `num_beams`
    that is None is taken from the model's own generation config: a
    model trained to be decoded with beams, or with a guard, is fine-tuned and saved to be decoded so.
    """
    from titlegen.generation import is_article_tokens_only, title_generation_config
    from titlegen.loops import is_no_loops

    config = model.generation_config

    def either(setting, own):
        return own if setting is None else setting

    return title_generation_config(
        model,
        run_args.generation_max_new_tokens or data_args.max_target_length,
        num_beams=either(num_beams, config.num_beams or 1),
        article_tokens_only=either(run_args.generation_article_tokens_only, is_article_tokens_only(config)),
        no_loops=either(run_args.generation_no_loops, is_no_loops(config)),
    )


# The process ----------------------------------------------------------------------------------------------------------


def start_logging() -> None:
    """titlegen's log lines with a time stamp; transformers' own only from warnings up."""
    import transformers

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()


def configure_process(seed: int, flush_denormal: bool = True, keep_freed_memory: bool = False) -> str:
    """Seeds every random generator and applies the CPU switches when there is no GPU.

    Returns:
        The device to run on: ``cuda`` or ``cpu``.
    """
    import torch
    from transformers import set_seed

    from titlegen.cpu import configure_cpu

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        configure_cpu(flush_denormal, keep_freed_memory)
    set_seed(seed)
    return device
