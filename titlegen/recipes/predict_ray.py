"""Title a corpus on a Ray cluster with Ray Data: actors that each load the model once, CPU or GPU.

    titlegen-predict-ray --model outputs/export_int8 --input corpus/ --output titles.jsonl --concurrency 8
    titlegen-predict-ray --model outputs/mt5_small_full --input s3://bucket/news/ --output titles.jsonl \\
        --address auto --concurrency 4 --num_gpus 1 --num_cpus 4 --bf16

Input: a jsonl file, or a folder of jsonl shards, on any filesystem pyarrow reads (local, s3://, gs://, hdfs://),
in the course's format (``id`` and ``maintext``). Output: ``{"title", "id"}`` shards in OUTPUT.shards/ and every
title in OUTPUT, in input order. Settings as for titlegen-predict (model, backend, decoding, preprocessing as the
model was trained), and where to run: --address (default: a Ray instance started on this machine, on 127.0.0.1),
--concurrency actors of --num_cpus CPUs and --num_gpus GPUs each. Ray places the actors, retries failed tasks and
shows the progress. Needs the ray extra: pip install titlegen[ray]. Which command for which corpus size: README.md,
"Scaling out".
"""

from __future__ import annotations

from collections.abc import Sequence

from titlegen.backends import resolve_backend
from titlegen.config import parse_args, settings_from
from titlegen.lifecycle import run_command
from titlegen.model_folder import trained_settings
from titlegen.outputs import check_output_file
from titlegen.raydata import SHARDS, RayArguments, check_local_input, title_corpus
from titlegen.recipes.predict import PredictFiles
from titlegen.recipes.predict import settings as predict_settings
from titlegen.strategies import decoding_arguments


def settings() -> tuple[type, ...]:
    """The settings of titlegen-predict-ray, in the order `predict_ray` unpacks them."""

    generation, _, preprocessing, decoding = predict_settings()
    files = settings_from(
        PredictFiles,
        ("input_file", "output_file"),
        note="Here: a file or a folder of jsonl shards, on any filesystem pyarrow reads; shards go to OUTPUT.shards/.",
    )
    return generation, files, preprocessing, decoding, RayArguments


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(predict_ray, argv)


def predict_ray(argv: Sequence[str] | None = None) -> int:
    """Titles the corpus; returns the number of titles written."""

    args, files, preprocessing, decoding, ray_args = parse_args(settings(), argv, description=__doc__)

    # Refused before Ray starts: the output path, the model folder, the settings, a local input.
    if "://" not in files.output_file:
        check_output_file(files.output_file, [files.input_file], side_files=[SHARDS])
    backend = resolve_backend(args.model_name_or_path, args.backend)
    generate_kwargs = decoding_arguments(decoding.strategy, **decoding.generate_arguments())
    trained = trained_settings(args.model_name_or_path, preprocessing)
    check_local_input(files.input_file, trained.id_column, trained.text_column)

    engine_args = {"model_name_or_path": args.model_name_or_path, "backend": backend, "bf16": args.bf16,
                   "compute_type": args.compute_type, "threads": args.threads}  # fmt: skip
    options = {"batch_size": args.batch_size, "max_source_length": trained.max_source_length,
               "source_prefix": trained.source_prefix, "seed": args.seed, **generate_kwargs}  # fmt: skip
    count = title_corpus(
        files.input_file,
        files.output_file,
        ray_args,
        engine_args,
        trained.id_column,
        trained.text_column,
        options,
    )
    print(f"wrote {count} titles to {files.output_file} (shards in {files.output_file}{SHARDS})")
    return count


if __name__ == "__main__":
    raise SystemExit(main())
