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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from titlegen.arguments import DataArguments, DecodingArguments, GenerationArguments
from titlegen.backends import resolve_backend
from titlegen.config import parse_args, settings_from
from titlegen.data import read_jsonl
from titlegen.engines import start_engine
from titlegen.lifecycle import run_command
from titlegen.memory_advice import generation_advice, out_of_memory_advice
from titlegen.model_folder import model_files, trained_settings
from titlegen.outputs import check_output_file
from titlegen.progress import SUFFIX, PredictionProgress, run_fingerprint
from titlegen.strategies import decoding_arguments

# The preprocessing settings a prediction can override; by default, each is as the model was trained.
PREPROCESSING = ("text_column", "id_column", "source_prefix", "max_source_length")


@dataclass
class PredictFiles:
    """The files of titlegen-predict."""

    input_file: str = field(metadata={"help": "jsonl of articles (id and maintext).", "aliases": ["--input"]})
    output_file: str = field(
        metadata={"help": "jsonl of titles to write; OUTPUT.progress keeps finished titles.", "aliases": ["--output"]}
    )


def settings() -> tuple[type, ...]:
    """The settings of titlegen-predict, in the order `predict` unpacks them."""

    preprocessing = settings_from(
        DataArguments, PREPROCESSING, note="Default: as the model was trained.", **dict.fromkeys(PREPROCESSING)
    )
    return GenerationArguments, PredictFiles, preprocessing, DecodingArguments


def main(argv: Sequence[str] | None = None) -> int:

    return run_command(predict, argv)


def predict(argv: Sequence[str] | None = None) -> list[dict]:

    args, files, preprocessing, decoding = parse_args(settings(), argv, description=__doc__)

    # Everything that can be refused is refused before the model loads: the output path, the settings, the input.
    check_output_file(files.output_file, [files.input_file], side_files=[SUFFIX], model=args.model_name_or_path)
    resolve_backend(args.model_name_or_path, args.backend)  # a folder the backend cannot read fails here
    generate_kwargs = decoding_arguments(decoding.strategy, **decoding.generate_arguments())
    trained = trained_settings(args.model_name_or_path, preprocessing)
    id_column, text_column = trained.id_column, trained.text_column
    records = read_jsonl(files.input_file, fields=(id_column, text_column), id_field=id_column)

    # Titles of an interrupted run with the same settings, inputs and model are kept, not generated again.
    run_settings = {**vars(args), **vars(preprocessing), **vars(decoding), "input_file": files.input_file}
    fingerprint = run_fingerprint(run_settings, [files.input_file, *model_files(args.model_name_or_path)])
    # The output's lock is taken before the model loads, so that a run on an output another run is writing is
    # refused at once, not after the loading.
    with PredictionProgress(files.output_file, fingerprint) as progress:
        engine = start_engine(args)
        engine.check_decoding(seed=args.seed, **generate_kwargs)  # before anything is written
        finished = progress.load()
        done = {i: finished[r[id_column]] for i, r in enumerate(records) if r[id_column] in finished}
        if done:
            print(f"continuing: {len(done)} of {len(records)} titles were generated before ({progress.path})")

        def save_batch(indices: list[int], batch_titles: list[str]) -> None:
            progress.append(
                {"title": t, "id": records[i][id_column]} for i, t in zip(indices, batch_titles, strict=True)
            )

        num_beams = generate_kwargs.get("num_beams", engine.generation_config.num_beams)
        with out_of_memory_advice(generation_advice, args.batch_size, num_beams, args.bf16, trained.max_source_length):
            titles = engine.generate_titles(
                [r[text_column] for r in records],
                batch_size=args.batch_size,
                max_source_length=trained.max_source_length,
                source_prefix=trained.source_prefix,
                done=done,
                on_batch=save_batch,
                seed=args.seed,
                **generate_kwargs,
            )
        predictions = [{"title": t, "id": r[id_column]} for t, r in zip(titles, records, strict=True)]
        progress.finish(files.output_file, predictions)
    print(f"wrote {len(predictions)} titles to {files.output_file}")
    return predictions


if __name__ == "__main__":
    raise SystemExit(main())
