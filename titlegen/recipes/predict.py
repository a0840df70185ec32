"""Write a title for every article of a jsonl file.

    titlegen-predict --model outputs/tiny_offline --input public.jsonl --output submission.jsonl
    titlegen-predict ... --strategy beam --num_beams 5 --no_repeat_ngram_size 3

Input: the course's format (``id`` and ``maintext``; ``title`` is not needed). Output: one
``{"title": ..., "id": ...}`` per line, in input order, UTF-8, written atomically. Finished titles are
kept in OUTPUT.progress as they are generated: rerun the same command after an interruption and only
the missing titles are generated. Preprocessing
(max_source_length, source_prefix, column names) follows the model's run_config.yaml when it has one;
decoding follows the model's generation_config.json, or a --strategy preset, and any flag below overrides
either. Sampling is seeded per article: the same command gives the same titles, in any batch size.
A folder written by titlegen-export is decoded by CTranslate2 (--backend auto tells by the folder).

Several processes, each on its own GPU (or CPU cores), share the articles under either launcher:

    torchrun --nproc_per_node 2 -m titlegen.recipes.predict --model ... --input ... --output ...
    accelerate launch --num_processes 2 -m titlegen.recipes.predict --model ... --input ... --output ...

Each process titles whole batches of one process's batching (titlegen/sharding.py) and keeps its own
OUTPUT.rankR.progress; process 0 writes OUTPUT, byte for byte as one process writes it. Rerun the same launch
after a process was killed: only the missing titles are generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from titlegen.arguments import DataArguments, DecodingArguments, GenerationArguments
from titlegen.backends import resolve_backend
from titlegen.config import parse_args, settings_from
from titlegen.data import read_jsonl
from titlegen.distributed import wait_for_everyone
from titlegen.engines import start_engine
from titlegen.lifecycle import run_command
from titlegen.memory_advice import generation_advice, out_of_memory_advice
from titlegen.model_folder import model_files, trained_settings
from titlegen.outputs import check_output_file
from titlegen.progress import SUFFIX, PredictionProgress, run_fingerprint
from titlegen.sharding import Share, launched, process_device, process_group, progress_path
from titlegen.strategies import decoding_arguments

# The preprocessing settings a prediction can override; by default, each is as the model was trained.
PREPROCESSING = ("text_column", "id_column", "source_prefix", "max_source_length")


@dataclass
class PredictFiles:
    """The files of titlegen-predict."""

    input_file: str = field(metadata={"help": "jsonl of articles (id and maintext).", "aliases": ["--input"]})
    output_file: str = field(metadata={"help": "jsonl of titles to write, in input order.", "aliases": ["--output"]})


def settings() -> tuple[type, ...]:
    """The settings of titlegen-predict, in the order `predict` unpacks them."""
    preprocessing = settings_from(
        DataArguments, PREPROCESSING, note="Default: as the model was trained.", **dict.fromkeys(PREPROCESSING)
    )
    return GenerationArguments, PredictFiles, preprocessing, DecodingArguments


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(predict, argv)


def predict(argv: Sequence[str] | None = None) -> list[dict]:
    """Titles every article; returns the predictions written (in process 0; an empty list in the others)."""
    args, files, preprocessing, decoding = parse_args(settings(), argv, description=__doc__)

    # Everything that can be refused is refused before the model loads: the output path, the settings, the input.
    check_output_file(files.output_file, [files.input_file], side_files=[SUFFIX], model=args.model_name_or_path)
    resolve_backend(args.model_name_or_path, args.backend)  # a folder the backend cannot read fails here
    generate_kwargs = decoding_arguments(decoding.strategy, **decoding.generate_arguments())
    trained = trained_settings(args.model_name_or_path, preprocessing)
    records = read_jsonl(files.input_file, fields=(trained.id_column, trained.text_column), id_field=trained.id_column)
    launch = launched()
    # Titles of an interrupted run with the same settings, inputs and model are kept, not generated again.
    run_settings = {**vars(args), **vars(preprocessing), **vars(decoding), "input_file": files.input_file}
    fingerprint = run_fingerprint(run_settings, [files.input_file, *model_files(args.model_name_or_path)])
    with process_group(launch):
        return _title_share(args, files.output_file, trained, generate_kwargs, records, launch, fingerprint)


def _title_share(args, output_file, trained, generate_kwargs, records, launch, fingerprint) -> list[dict]:
    """Titles this process's share of `records` (`titlegen.sharding`) and, in process 0, writes every title to
    `output_file`."""
    id_column, texts = trained.id_column, [r[trained.text_column] for r in records]
    source = {"max_source_length": trained.max_source_length, "source_prefix": trained.source_prefix}
    # The output's lock is taken before the model loads, so that a run on an output another run is writing is
    # refused at once, not after the loading.
    with PredictionProgress(progress_path(output_file, launch), fingerprint) as progress:
        engine = start_engine(args, device=process_device(launch))
        engine.check_decoding(seed=args.seed, **generate_kwargs)  # before anything is written
        share = Share(launch, engine.tokenizer, texts, args.batch_size, **source)
        finished = progress.load()
        done = {i: finished[records[i][id_column]] for i in share.indices if records[i][id_column] in finished}
        if done:
            print(f"continuing: {len(done)} of {len(share.indices)} titles were generated before ({progress.path})")

        def save_batch(indices: list[int], batch_titles: list[str]) -> None:
            progress.append(
                {"title": t, "id": records[i][id_column]} for i, t in zip(indices, batch_titles, strict=True)
            )

        num_beams = generate_kwargs.get("num_beams", engine.generation_config.num_beams)
        with out_of_memory_advice(generation_advice, args.batch_size, num_beams, args.bf16, trained.max_source_length):
            titles = engine.generate_titles(
                texts,
                batch_size=args.batch_size,
                **source,
                done={**share.elsewhere, **done},  # other processes' batches count as done here
                on_batch=save_batch,
                seed=args.seed,
                progress=launch.is_main,
                **generate_kwargs,
            )
        titles = share.gather(titles)
        predictions = []
        if titles is not None:
            predictions = [{"title": t, "id": r[id_column]} for t, r in zip(titles, records, strict=True)]
            progress.finish(output_file, predictions)
        wait_for_everyone()  # a progress file goes only once the output holds its titles
        progress.path.unlink(missing_ok=True)
    if launch.is_main:
        print(f"wrote {len(predictions)} titles to {output_file}")
    return predictions


if __name__ == "__main__":
    raise SystemExit(main())
