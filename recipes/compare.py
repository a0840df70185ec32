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


@dataclass
class CompareArguments:
    model_name_or_path: str = field(metadata={"help": "Model folder (or hub id).", "aliases": ["--model"]})
    input_file: str = field(metadata={"help": "jsonl of articles with titles.", "aliases": ["--input"]})
    output_dir: str = field(metadata={"help": "Folder for the table, the chart and each setting's titles."})
    grid: str | None = field(
        default=None, metadata={"help": "YAML list of settings; without it, every strategy at two settings."}
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N articles, for a quick look."})
    metric: str = field(
        default="rouge-l", metadata={"help": "Column that names the best setting: rouge-1/2/l, distinct-2, titles/s."}
    )
    segmenter: str = field(default="char", metadata={"help": "Word segmenter for ROUGE: char, jieba, ckip or auto."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Longest title (default: as trained)."})
    batch_size: int = field(default=16, metadata={"help": "Articles per generate call."})
    bf16: bool = field(default=False, metadata={"help": "Generate under bfloat16 autocast (transformers backend)."})
    backend: str = field(
        default="auto",
        metadata={
            "help": "transformers, ct2 (a titlegen-export folder, decoded by CTranslate2), or auto: by the folder.",
            "choices": ["auto", "transformers", "ct2"],
        },
    )
    compute_type: str | None = field(
        default=None, metadata={"help": "ct2 backend: CTranslate2 compute type (default: int8 on CPU as exported)."}
    )
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default: the library's choice)."})
    seed: int = field(default=42, metadata={"help": "Seed for the sampling strategies."})


def main(argv: Sequence[str] | None = None) -> int:
    from titlegen.cli import run

    return run(compare, argv)


def compare(argv: Sequence[str] | None = None) -> list[dict]:
    from titlegen.config import parse_args

    (args,) = parse_args((CompareArguments,), argv, description=__doc__)

    import time
    from pathlib import Path

    from titlegen import TitlegenError
    from titlegen.comparison import best_setting, check_metric, markdown_report, score_titles, write_csv
    from titlegen.data import atomic_write_text, read_jsonl, write_jsonl
    from titlegen.engines import load_engine, resolve_backend
    from titlegen.metrics import get_segmenter
    from titlegen.modeling import trained_settings
    from titlegen.plotting import plot_comparison
    from titlegen.strategies import (
        DEFAULT_GRID,
        decoding_arguments,
        load_grid,
        save_grid,
        setting_filename,
        setting_name,
    )

    grid = load_grid(args.grid) if args.grid else list(DEFAULT_GRID)
    check_metric(args.metric)
    if args.limit is not None and args.limit < 1:
        raise TitlegenError(f"--limit {args.limit}: compare at least 1 article")
    segmenter = get_segmenter(args.segmenter)
    resolve_backend(args.model_name_or_path, args.backend)  # a folder the backend cannot read fails here
    trained = trained_settings(args.model_name_or_path)
    columns = (trained["id_column"], trained["text_column"], trained["summary_column"])
    records = read_jsonl(args.input_file, fields=columns, id_field=columns[0])[: args.limit]
    articles = [r[columns[1]] for r in records]
    references = [r[columns[2]] for r in records]

    engine = load_engine(
        args.model_name_or_path, args.backend, bf16=args.bf16, compute_type=args.compute_type, threads=args.threads
    )
    options = dict(
        batch_size=args.batch_size,
        max_source_length=trained["max_source_length"],
        source_prefix=trained["source_prefix"],
        seed=args.seed,
    )
    for setting in grid:  # a setting the engine cannot honour fails before any work
        try:
            engine.check_decoding(seed=args.seed, **decoding_arguments(**setting))
        except TitlegenError as err:
            raise TitlegenError(f"setting '{setting_name(setting)}': {err} (or leave it out with --grid)") from err
    # A first generate call pays one-time costs; make it here, so that the first setting's speed is comparable.
    engine.generate_titles(articles[:2], progress=False, max_new_tokens=2, **options)

    output_dir = Path(args.output_dir)
    save_grid(output_dir / "grid.yaml", grid)
    rows = []
    for number, setting in enumerate(grid, start=1):
        name = setting_name(setting)
        print(f"[{number}/{len(grid)}] {name}", flush=True)
        arguments = decoding_arguments(**setting)
        if args.max_new_tokens:
            arguments.setdefault("max_new_tokens", args.max_new_tokens)
        start = time.perf_counter()
        titles = engine.generate_titles(articles, **options, **arguments)
        seconds = time.perf_counter() - start
        write_jsonl(
            output_dir / "predictions" / setting_filename(setting),
            ({"title": t, "id": r[columns[0]]} for t, r in zip(titles, records, strict=True)),
        )
        rows.append({"setting": name, **score_titles(titles, references, segmenter, seconds)})

    best = best_setting(rows, args.metric)
    mean_reference = sum(len(t) for t in references) / len(references)
    report = markdown_report(
        rows,
        args.metric,
        heading=f"Decoding strategies on {Path(args.input_file).name}",
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
        title=f"{Path(args.model_name_or_path).name} on {Path(args.input_file).name} ({len(records)} articles)",
    )
    print(report)
    print(f"wrote {output_dir}/comparison.md, comparison.csv, comparison.png and {len(rows)} prediction files")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
