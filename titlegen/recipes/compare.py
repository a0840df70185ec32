"""Compare decoding strategies on a labelled jsonl: titles, ROUGE, diversity and speed of each setting.

    titlegen-compare --model outputs/tiny_offline --input validation.jsonl --output_dir outputs/compare
    titlegen-compare ... --limit 200 --grid my_grid.yaml --metric rouge-2

Runs every setting of a grid (by default each strategy of titlegen.strategies at two settings; or a YAML
list such as ``- {strategy: beam, num_beams: 8}``) and writes to output_dir: predictions/<setting>.jsonl,
comparison.md and comparison.csv (rouge-1/2/l f×100, mean length, distinct-2, repeated bigrams, titles/s),
comparison.png, and grid.yaml (the settings run; pass it back as --grid). The best setting by --metric is
named in comparison.md and starred in the chart. Sampling is seeded per article: a rerun gives the same titles.
A folder written by titlegen-export is decoded by CTranslate2, which cannot seed sampling per article: give it a
grid of search settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from titlegen import TitlegenError
from titlegen.arguments import DecodingArguments, GenerationArguments, RunArguments
from titlegen.backends import resolve_backend
from titlegen.comparison import best_setting, check_metric, markdown_report, score_titles, write_csv
from titlegen.config import parse_args, settings_from
from titlegen.data import atomic_write_text, read_jsonl, write_jsonl
from titlegen.engines import start_engine
from titlegen.lifecycle import run_command
from titlegen.metrics import get_segmenter
from titlegen.model_folder import trained_settings
from titlegen.outputs import check_not_special, check_output_folder
from titlegen.plotting import plot_comparison
from titlegen.recipes.predict import PredictFiles
from titlegen.strategies import DEFAULT_GRID, decoding_arguments, load_grid, save_grid, setting_filename, setting_name

# The files a comparison writes in its output_dir, beside predictions/<setting>.jsonl.
OUTPUT_FILES = ("grid.yaml", "comparison.md", "comparison.csv", "comparison.png")


@dataclass
class CompareArguments:
    """titlegen-compare's own settings."""

    output_dir: str = field(metadata={"help": "Folder for the table, the chart and each setting's titles."})
    grid: str | None = field(
        default=None, metadata={"help": "YAML list of settings; without it, every strategy at two settings."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Use only the first N articles, for a quick look.", "min": 1}
    )
    metric: str = field(
        default="rouge-l", metadata={"help": "Column that names the best setting: rouge-1/2/l, distinct-2, titles/s."}
    )


def settings() -> tuple[type, ...]:
    """The settings of titlegen-compare, in the order `compare` unpacks them."""

    articles = settings_from(PredictFiles, ["input_file"], note="Their titles are the references.")
    segmenter = settings_from(RunArguments, ["segmenter"])
    longest = settings_from(DecodingArguments, ["max_new_tokens"], note="Default: as trained.")
    return GenerationArguments, articles, CompareArguments, segmenter, longest


def main(argv: Sequence[str] | None = None) -> int:

    return run_command(compare, argv)


def compare(argv: Sequence[str] | None = None) -> list[dict]:

    args, files, compare_args, scoring, decoding = parse_args(settings(), argv, description=__doc__)

    import time
    from pathlib import Path

    grid = load_grid(compare_args.grid) if compare_args.grid else list(DEFAULT_GRID)
    check_metric(compare_args.metric)
    output_dir = Path(compare_args.output_dir)
    check_output_folder(output_dir, "the comparison")
    for name in OUTPUT_FILES:
        check_not_special(output_dir / name, output_dir / name)
    segmenter = get_segmenter(scoring.segmenter)
    resolve_backend(args.model_name_or_path, args.backend)  # a folder the backend cannot read fails here
    trained = trained_settings(args.model_name_or_path)
    columns = (trained.id_column, trained.text_column, trained.summary_column)
    records = read_jsonl(files.input_file, fields=columns, id_field=columns[0])[: compare_args.limit]
    articles = [r[columns[1]] for r in records]
    references = [r[columns[2]] for r in records]

    engine = start_engine(args)
    options = dict(
        batch_size=args.batch_size,
        max_source_length=trained.max_source_length,
        source_prefix=trained.source_prefix,
        seed=args.seed,
    )
    arguments_of = [decoding_arguments(**setting) for setting in grid]
    for setting, arguments in zip(grid, arguments_of, strict=True):  # one the engine cannot honour fails here
        try:
            engine.check_decoding(seed=args.seed, **arguments)
        except TitlegenError as err:
            raise TitlegenError(f"setting '{setting_name(setting)}': {err} (or leave it out with --grid)") from err
    # A first generate call pays one-time costs; make it here, so that the first setting's speed is comparable.
    engine.generate_titles(articles[:2], progress=False, max_new_tokens=2, **options)

    save_grid(output_dir / "grid.yaml", grid)
    rows = []
    for number, (setting, arguments) in enumerate(zip(grid, arguments_of, strict=True), start=1):
        name = setting_name(setting)
        print(f"[{number}/{len(grid)}] {name}", flush=True)
        if decoding.max_new_tokens:
            arguments.setdefault("max_new_tokens", decoding.max_new_tokens)
        start = time.perf_counter()
        titles = engine.generate_titles(articles, **options, **arguments)
        seconds = time.perf_counter() - start
        write_jsonl(
            output_dir / "predictions" / setting_filename(setting),
            ({"title": t, "id": r[columns[0]]} for t, r in zip(titles, records, strict=True)),
        )
        rows.append({"setting": name, **score_titles(titles, references, segmenter, seconds)})

    best = best_setting(rows, compare_args.metric)
    mean_reference = sum(len(t) for t in references) / len(references)
    report = markdown_report(
        rows,
        compare_args.metric,
        heading=f"Decoding strategies on {Path(files.input_file).name}",
        notes=[
            f"model: {args.model_name_or_path}; {len(records)} articles; seed {args.seed}"
            + ("; bf16" if args.bf16 else "")
            + (f"; CTranslate2, {engine.compute_type} on {engine.device}" if engine.backend == "ct2" else ""),
            f"ROUGE: tw_rouge with the {segmenter.name} segmenter; references are {mean_reference:.1f} characters long",
            f"titles: predictions/<setting>.jsonl; settings: grid.yaml (rerun with --grid {output_dir}/grid.yaml)",
        ],
    )
    atomic_write_text(output_dir / "comparison.md", report)
    write_csv(output_dir / "comparison.csv", rows)
    plot_comparison(
        rows,
        output_dir / "comparison.png",
        best=best["setting"],
        title=f"{Path(args.model_name_or_path).name} on {Path(files.input_file).name} ({len(records)} articles)",
    )
    print(report)
    print(f"wrote {output_dir}/comparison.md, comparison.csv, comparison.png and {len(rows)} prediction files")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
