"""Titles per second of one corpus titled by 1 and 2 processes, by CTranslate2 replicas and by Ray Data actors.

    python -m bench.scale [--model DIR] [--articles 2000] [--batch_size 16] [--skip_ray]

Model: --model, or ``trainer_args/tiny_offline.yaml`` trained here for --train_steps steps (once, into
bench/results/scale/model) and exported to CTranslate2 int8. Input: the first --articles LCSTS test articles
(the file repeated, with new ids, when it holds fewer). Decoding: greedy, without the loop guard and article
tokens only (CTranslate2 cannot honour the first, and the second makes it decode each article alone), so that
both engines do the same work.

Each configuration is one real command, timed from start to exit as a user sees it:

* ``titlegen-predict`` in 1 process and under ``torchrun --nproc_per_node 2`` (titlegen/sharding.py), each
  process with one thread, for transformers (fp32) and CTranslate2 int8; the 2-process output is compared byte
  for byte with the 1-process one.
* CTranslate2 int8 in one process with 1 and 2 replicas (``inter_threads``, one thread each), the whole corpus
  given to ``translate_batch`` in chunks of --batch_size: the alternative to several processes.
* ``titlegen-predict-ray`` with 1 and 2 actors of one CPU (a local Ray instance on 127.0.0.1): its titles are
  compared with titlegen-predict's.

A command's fixed cost (interpreter, imports, model load, process group or Ray start) is measured by the same
command on 2 articles and subtracted for the "generation" column (an estimate: left out where it leaves less
than a tenth of the run). Efficiency is wall-clock titles/s against linear scaling of the same command's 1-process
(1-actor) figure; for the replicas, translate_batch's titles/s against 1 replica's. Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench._common import LCSTS, machine, markdown_table, offline_model  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORKDIR = RESULTS / "scale"
DECODING = ("--strategy", "greedy", "--no_loops", "false", "--article_tokens_only", "false")


def corpus(path: Path, count: int) -> None:
    """The first `count` LCSTS test articles, the file repeated with new ids when it is shorter."""
    from titlegen.data import read_jsonl, write_jsonl

    records = read_jsonl(LCSTS / "test.zh-tw.jsonl")
    rows = [{"id": f"{records[i % len(records)]['id']}-{i // len(records)}",
             "maintext": records[i % len(records)]["maintext"]} for i in range(count)]  # fmt: skip
    write_jsonl(path, rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}  # fmt: skip


def command(kind: str, processes: int, model: Path, source: Path, output: Path, batch_size: int) -> list[str]:
    """The command line of one configuration."""
    files = ["--model", str(model), "--input", str(source), "--output", str(output), "--batch_size", str(batch_size)]
    if kind == "ray":
        return [sys.executable, "-m", "titlegen.recipes.predict_ray", *files, *DECODING, "--concurrency",
                str(processes), "--num_cpus", "1", "--rows_per_batch", "250"]  # fmt: skip
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                     "--master_addr", "127.0.0.1", "--master_port", str(free_port())]  # fmt: skip
    return [*launcher, "-m", "titlegen.recipes.predict", *files, *DECODING, "--threads", "1"]


def timed(argv: list[str]) -> float:
    """Seconds from start to exit of a command that must succeed."""
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stderr[-3000:]}")
    return seconds


REPLICAS = """
import json, sys, time
import ctranslate2
from titlegen.engines.ct2 import CT2Engine
from titlegen.generation import article_inputs
export, source, replicas, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = CT2Engine(export, threads=1)
translator = ctranslate2.Translator(export, device="cpu", compute_type=engine.compute_type, inter_threads=replicas,
                                    intra_threads=1)
articles = [json.loads(line)["maintext"] for line in open(source, encoding="utf-8")]
_, encoded, _ = article_inputs(engine.tokenizer, articles, 64)
tokens = [[engine.vocabulary[i] for i in ids] for ids in encoded]
start = time.perf_counter()
translator.translate_batch(tokens, max_batch_size=batch_size, beam_size=1, max_decoding_length=28)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def replica_seconds(export: Path, source: Path, replicas: int, batch_size: int) -> float:
    """Seconds of CTranslate2's translate_batch over the corpus with `replicas` replicas in one process."""
    argv = [sys.executable, "-c", REPLICAS, str(export), str(source), str(replicas), str(batch_size)]
    result = subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: train one with tiny_offline.yaml)")
    parser.add_argument("--articles", type=int, default=2000, help="articles titled by each configuration")
    parser.add_argument("--batch_size", type=int, default=16, help="articles per generate call")
    parser.add_argument("--train_steps", type=int, default=300, help="steps of the model trained when none is given")
    parser.add_argument("--skip_ray", action="store_true", help="leave out the Ray Data rows")
    args = parser.parse_args()

    from titlegen.engines.export import export_model

    model = offline_model(
        args.model, WORKDIR / "model", "--max_steps", str(args.train_steps), "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--save_strategy", "no", "--disable_tqdm", "true",
    )  # fmt: skip
    export = WORKDIR / "int8"
    if not (export / "model.bin").is_file():
        export_model(model, export, quantization="int8")
    source, small = WORKDIR / "articles.jsonl", WORKDIR / "two.jsonl"
    corpus(source, args.articles)
    corpus(small, 2)
    print(machine())
    print(f"model {model} (CTranslate2 int8 export {export}); {args.articles} LCSTS test articles, batch "
          f"{args.batch_size}, greedy; one thread per process, replica or actor", flush=True)  # fmt: skip

    runs = [("transformers", "predict", 1), ("transformers", "predict", 2), ("ct2 int8", "predict", 1),
            ("ct2 int8", "predict", 2)]  # fmt: skip
    if not args.skip_ray:
        runs += [("ct2 int8", "ray", 1), ("ct2 int8", "ray", 2)]
    rows, results, base = [], [], {}
    for engine, kind, n in runs:
        folder = model if engine == "transformers" else export
        out = WORKDIR / f"{engine.split()[0]}-{kind}-{n}.jsonl"
        fixed = timed(command(kind, n, folder, small, WORKDIR / "small.jsonl", args.batch_size))
        wall = timed(command(kind, n, folder, source, out, args.batch_size))
        # The fixed cost, measured by a separate run, is only an estimate on a shared machine: where it leaves
        # less than a tenth of the run, the generation rate is not given.
        generation = args.articles / (wall - fixed) if wall - fixed > wall / 10 else "n/a"
        key = (engine, kind)
        base.setdefault(key, args.articles / wall)
        reference = WORKDIR / f"{engine.split()[0]}-predict-1.jsonl"
        same = "byte-identical" if out.read_bytes() == reference.read_bytes() else "differs"
        if kind == "ray":
            same = "same titles" if json_titles(out) == json_titles(reference) else "titles differ"
        name = {"predict": "titlegen-predict", "ray": "titlegen-predict-ray"}[kind]
        unit = {"predict": "process", "ray": "actor"}[kind]
        efficiency = args.articles / wall / (n * base[key])
        row = [f"{name}, {engine}", f"{n} {unit}{'es' if unit == 'process' and n > 1 else 's' * (n > 1)}",
               fixed, wall, args.articles / wall, generation, f"{efficiency:.0%}", same]  # fmt: skip
        rows.append(row)
        results.append(dict(zip(HEADER, row, strict=True)))
        print(markdown_table(HEADER, [row]).splitlines()[-1], flush=True)

    replica = {n: replica_seconds(export, source, n, args.batch_size) for n in (1, 2)}
    for n, seconds in replica.items():
        generation = args.articles / seconds
        row = [f"CTranslate2 translate_batch, int8, {n} replica{'s' * (n > 1)}", "1 process", "", "", "",
               generation, f"{generation / (n * args.articles / replica[1]):.0%}", ""]  # fmt: skip
        rows.append(row)
        results.append(dict(zip(HEADER, row, strict=True)))
    print()
    print(markdown_table(HEADER, rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"machine": machine(), "rows": results}, indent=1) + "\n")


HEADER = ["command, engine", "workers", "fixed s", "wall s", "titles/s (wall)", "titles/s (generation)",
          "efficiency vs linear", "output vs 1 process"]  # fmt: skip


def json_titles(path: Path) -> list[tuple[str, str]]:
    return [(r["id"], r["title"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


if __name__ == "__main__":
    main()
