"""A corpus titled on a Ray cluster with Ray Data: the articles read in blocks, titled by actors that each load the
model once, written as jsonl shards and as one file in input order.

Ray places the actors (``num_cpus``/``num_gpus`` each), retries a failed task, streams the blocks and shows the
progress; titlegen adds the actor (`Titler`, an engine of `titlegen.engines`) and the merged file. Needs the ``ray``
extra (``pip install titlegen[ray]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import read_jsonl, write_jsonl
from titlegen.engines import load_engine

# Ray turns a node address of 127.0.0.1 into the machine's outward address unless told that this is no cluster; a
# local instance stays on loopback with this set before ray is imported (its workers inherit it).
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# What the shard folder beside the merged output is called: OUTPUT.shards/.
SHARDS = ".shards"


@dataclass
class RayArguments:
    """Where the titling runs and how much of the cluster each actor takes."""

    address: str | None = field(
        default=None,
        metadata={
            "help": "Ray cluster to join ('auto': the one this machine belongs to, or ray://HOST:PORT); default: "
            "start a Ray instance on this machine, on 127.0.0.1 only."
        },
    )
    concurrency: int = field(default=1, metadata={"help": "Actors, each holding one copy of the model.", "min": 1})
    num_cpus: float = field(
        default=1.0, metadata={"help": "CPUs per actor (also its model's threads).", "min_exclusive": 0}
    )
    num_gpus: float = field(default=0.0, metadata={"help": "GPUs per actor (0: decode on CPU).", "min": 0})
    rows_per_batch: int = field(
        default=256,
        metadata={"help": "Articles handed to an actor at a time (the engine batches them by batch_size).", "min": 1},
    )


class Titler:
    """A Ray Data actor: loads the model once, then titles each batch of rows it is handed.

    Args:
        model_name_or_path, backend, bf16, compute_type, threads: As `titlegen.engines.load_engine` takes them.
        gpu: Decode on the GPU Ray gave this actor.
        id_column, text_column: The rows' fields.
        options: What each call of the engine's ``generate_titles`` takes besides the articles (batch_size,
            max_source_length, source_prefix, seed, generate arguments).
    """

    def __init__(
        self,
        model_name_or_path: str,
        backend: str,
        bf16: bool,
        compute_type: str | None,
        threads: int | None,
        gpu: bool,
        id_column: str,
        text_column: str,
        options: Mapping,
    ):
        self.engine = load_engine(
            model_name_or_path,
            backend,
            bf16=bf16,
            device="cuda" if gpu else "cpu",
            compute_type=compute_type,
            threads=threads,
        )
        self.id_column, self.text_column, self.options = id_column, text_column, dict(options)

    def __call__(self, batch: Mapping[str, Sequence]) -> dict[str, list]:
        titles = self.engine.generate_titles([str(t) for t in batch[self.text_column]], progress=False, **self.options)
        return {"title": titles, "id": [str(i) for i in batch[self.id_column]]}


def check_local_input(path: str, id_column: str, text_column: str) -> None:
    """Validates a local jsonl file, or every jsonl file of a local folder, as titlegen-predict does (file, line and
    field named), before Ray starts; remote inputs are read by the actors only."""
    if "://" in path:
        return
    local = Path(path)
    if not local.exists():
        raise TitlegenError(f"{path}: no such file or folder")
    files = sorted(p for p in local.rglob("*.json*") if p.is_file()) if local.is_dir() else [local]
    if not files:
        raise TitlegenError(f"{path}: holds no .jsonl or .json file")
    for file in files:
        read_jsonl(file, fields=(id_column, text_column), id_field=id_column)


def start_ray(address: str | None) -> None:
    """Joins the cluster at `address`, or starts a Ray instance on this machine bound to 127.0.0.1, without the
    dashboard; nothing when Ray is already started (e.g. by the caller, with its own resources)."""
    if address is None:
        os.environ.update(LOOPBACK_ONLY)
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)
    else:
        ray.init(address=address)


def title_corpus(
    input_path: str,
    output_file: str,
    ray_args: RayArguments,
    engine_args: Mapping,
    id_column: str,
    text_column: str,
    options: Mapping,
) -> int:
    """Titles every article of `input_path` (a jsonl file or a folder of them, on any filesystem pyarrow reads)
    with Ray Data; writes ``{"title", "id"}`` shards into OUTPUT.shards/ and all of them, in input order, into
    `output_file` (atomically when local).

    Args:
        input_path: The articles.
        output_file: The merged titles; the shards go beside it.
        ray_args: Where and with how many actors.
        engine_args: `Titler`'s model_name_or_path, backend, bf16, compute_type and threads.
        id_column, text_column: The articles' fields.
        options: Each engine call's other arguments (see `Titler`).

    Returns:
        The number of titles written.
    """
    start_ray(ray_args.address)
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the merged file follows the input
    # Reading takes no CPU of its own: with actors holding every CPU, a read that waits for one never runs (and
    # the actors wait for its rows); Ray Data's object store budget still bounds how far reading runs ahead.
    articles = ray.data.read_json(input_path, lines=True, num_cpus=0).select_columns([id_column, text_column])
    engine_args = {**engine_args, "threads": engine_args.get("threads") or max(1, int(ray_args.num_cpus))}
    titled = articles.map_batches(
        Titler,
        fn_constructor_kwargs={
            **engine_args,
            "gpu": ray_args.num_gpus > 0,
            "id_column": id_column,
            "text_column": text_column,
            "options": options,
        },
        batch_size=ray_args.rows_per_batch,
        concurrency=ray_args.concurrency,
        num_cpus=ray_args.num_cpus,
        num_gpus=ray_args.num_gpus,
        batch_format="pandas",
    ).materialize()  # titled once; the shards and the merged file are written from it
    # A rerun replaces the shards of an earlier one instead of adding to them.
    titled.write_json(f"{output_file}{SHARDS}", mode=ray.data.SaveMode.OVERWRITE, force_ascii=False)
    records = [{"title": row["title"], "id": row["id"]} for row in titled.iter_rows()]
    if "://" in output_file:
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(output_file)
        with filesystem.open_output_stream(path) as stream:
            stream.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    else:
        write_jsonl(output_file, records)
    return len(records)
