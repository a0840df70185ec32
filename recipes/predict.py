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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from titlegen.strategies import STRATEGIES


@dataclass(kw_only=True)
class GenerationArguments:
    """The model and how it titles an article: the settings of titlegen-predict that titlegen-serve shares."""

    model_name_or_path: str = field(
        metadata={"help": "Model folder (or hub id) to generate with.", "aliases": ["--model"]}
    )
    text_column: str | None = field(default=None, metadata={"help": "Article field (default: as trained)."})
    id_column: str | None = field(default=None, metadata={"help": "Id field (default: as trained)."})
    source_prefix: str | None = field(default=None, metadata={"help": "Prefix (default: as trained)."})
    max_source_length: int | None = field(default=None, metadata={"help": "Input tokens (default: as trained)."})
    batch_size: int = field(default=16, metadata={"help": "Articles per generate call."})
    bf16: bool = field(default=False, metadata={"help": "Generate under bfloat16 autocast."})
    seed: int = field(default=42, metadata={"help": "Seed for sampling; a title depends only on it and its article."})
    strategy: str | None = field(
        default=None,
        metadata={"help": f"Decoding preset: {', '.join(STRATEGIES)} (default: the model's generation config)."},
    )
    num_beams: int | None = field(default=None, metadata={"help": "Beam width (1 = greedy)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Longest title, in tokens."})
    do_sample: bool | None = field(default=None, metadata={"help": "Sample instead of searching."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k likeliest tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Sample from the smallest set of mass p."})
    temperature: float | None = field(default=None, metadata={"help": "Softmax temperature for sampling."})
    no_repeat_ngram_size: int | None = field(default=None, metadata={"help": "Forbid repeating n-grams."})
    repetition_penalty: float | None = field(default=None, metadata={"help": "Penalty on repeated tokens."})
    length_penalty: float | None = field(default=None, metadata={"help": "Beam score length exponent."})
    article_tokens_only: bool | None = field(
        default=None, metadata={"help": "Titles use only tokens of their own article (and end-of-title)."}
    )


@dataclass(kw_only=True)
class PredictArguments(GenerationArguments):
    input_file: str = field(metadata={"help": "jsonl of articles.", "aliases": ["--input"]})
    output_file: str = field(metadata={"help": "jsonl of titles to write.", "aliases": ["--output"]})


GENERATE_FLAGS = (
    "num_beams", "max_new_tokens", "do_sample", "top_k", "top_p", "temperature",
    "no_repeat_ngram_size", "repetition_penalty", "length_penalty", "article_tokens_only",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from titlegen.cli import run

    return run(predict, argv)


def predict(argv: Sequence[str] | None = None) -> list[dict]:
    from titlegen.config import parse_args

    (args,) = parse_args((PredictArguments,), argv, description=__doc__)

    import torch
    from transformers import set_seed

    from titlegen.data import check_distinct_paths, read_jsonl
    from titlegen.generation import generate_titles
    from titlegen.memory import generation_advice, out_of_memory_advice
    from titlegen.modeling import configure_cpu, load_model, load_tokenizer, trained_settings
    from titlegen.progress import PredictionProgress, run_fingerprint
    from titlegen.strategies import decoding_arguments

    check_distinct_paths(args.input_file, args.output_file)
    generate_kwargs = decoding_arguments(args.strategy, **{name: getattr(args, name) for name in GENERATE_FLAGS})
    trained = trained_settings(args.model_name_or_path)
    text_column = args.text_column or trained["text_column"]
    id_column = args.id_column or trained["id_column"]
    records = read_jsonl(args.input_file, fields=(id_column, text_column), id_field=id_column)

    if not torch.cuda.is_available():
        configure_cpu()
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path)
    model = load_model(args.model_name_or_path)
    if torch.cuda.is_available():
        model = model.cuda()
    # Titles of an interrupted run with the same settings, inputs and model are kept, not generated again.
    settings = {k: v for k, v in vars(args).items() if k != "output_file"}
    model_files = [p for p in Path(args.model_name_or_path).glob("*") if p.is_file()]
    progress = PredictionProgress(args.output_file, run_fingerprint(settings, [args.input_file, *model_files]))
    finished = progress.load()
    done = {i: finished[r[id_column]] for i, r in enumerate(records) if r[id_column] in finished}
    if done:
        print(f"continuing: {len(done)} of {len(records)} titles were generated before ({progress.path})")

    def save_batch(indices: list[int], batch_titles: list[str]) -> None:
        progress.append({"title": t, "id": records[i][id_column]} for i, t in zip(indices, batch_titles, strict=True))

    max_source_length = args.max_source_length or trained["max_source_length"]
    num_beams = generate_kwargs.get("num_beams", model.generation_config.num_beams)
    with out_of_memory_advice(generation_advice, args.batch_size, num_beams, args.bf16, max_source_length):
        titles = generate_titles(
            model,
            tokenizer,
            [r[text_column] for r in records],
            batch_size=args.batch_size,
            max_source_length=max_source_length,
            source_prefix=trained["source_prefix"] if args.source_prefix is None else args.source_prefix,
            bf16=args.bf16,
            done=done,
            on_batch=save_batch,
            seed=args.seed,
            **generate_kwargs,
        )
    predictions = [{"title": t, "id": r[id_column]} for t, r in zip(titles, records, strict=True)]
    progress.finish(args.output_file, predictions)
    print(f"wrote {len(predictions)} titles to {args.output_file}")
    return predictions


if __name__ == "__main__":
    raise SystemExit(main())
