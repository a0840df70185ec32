"""Prediction split across the processes that ``torchrun`` or ``accelerate launch`` starts.

Each process takes a share of the articles, titles it on its own device and keeps its own progress file; process 0
gathers the titles and writes the one output, in input order. The output is byte-identical to a one-process run
with the same settings by construction: the batches are formed exactly as one process forms them (every article,
length-sorted, `titlegen.generation.length_sorted_batches`), and whole batches are dealt to the processes, so every
article is padded and decoded beside the same articles as in one process. Batches are dealt longest first to the
least loaded process (greedy bin packing on padded tokens), so that no process waits long for the others.

The processes meet through ``torch.distributed`` (gloo, which runs on CPU and GPU alike): the launcher's
``MASTER_ADDR``/``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` say where and who.
"""

from __future__ import annotations

import contextlib
import datetime
import heapq
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from titlegen import TitlegenError
from titlegen.distributed import shut_down
from titlegen.generation import article_inputs, length_sorted_batches

# A process that finished its share waits for the slowest one in a collective; gloo's default of 30 minutes is
# shorter than a resumed share of a large corpus can take.
WAIT_FOR_OTHERS = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Launch:
    """Who this process is among those a launcher started (one process, rank 0, when there is no launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched(environ: dict[str, str] | None = None) -> Launch:
    """This process's place, from the variables ``torchrun`` and ``accelerate launch`` set.

    Raises:
        TitlegenError: for variables that are not integers or name a rank outside the world.
    """
    environ = os.environ if environ is None else environ
    try:
        launch = Launch(
            int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise TitlegenError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun and accelerate launch set them)"
        ) from None
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise TitlegenError(f"RANK {launch.rank} is not a process of WORLD_SIZE {launch.world_size}")
    return launch


def process_device(launch: Launch) -> str | None:
    """This process's own GPU, ``cuda:LOCAL_RANK`` (round robin when there are more processes than GPUs), or None
    (the engine's default: the CPU) when there is no GPU or only one process."""
    import torch

    gpus = torch.cuda.device_count()
    if launch.world_size == 1 or not gpus:
        return None
    return f"cuda:{launch.local_rank % gpus}"


@contextlib.contextmanager
def process_group(launch: Launch) -> Iterator[None]:
    """The launcher's process group (gloo) for the duration, when there is more than one process."""
    if launch.world_size == 1:
        yield
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=WAIT_FOR_OTHERS)
    try:
        yield
    finally:
        shut_down()


def balanced_shares(batches: Sequence[Sequence[int]], lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Deals whole batches to `world_size` processes, each to the least loaded one so far, costliest first.

    A batch costs its padded tokens (articles x longest article): encoding and each decoding step's
    cross-attention grow with them. Ties go to the lowest rank, so every process computes the same shares.

    Returns:
        Each process's article indices, in the order of `batches`.
    """
    cost = [len(batch) * max(lengths[i] for i in batch) for batch in batches]
    order = sorted(range(len(batches)), key=lambda b: -cost[b])  # stable: equal costs keep the batches' order
    loads = [(0, rank) for rank in range(world_size)]
    owner = [0] * len(batches)
    for b in order:
        load, rank = heapq.heappop(loads)
        owner[b] = rank
        heapq.heappush(loads, (load + cost[b], rank))
    return [[i for b, batch in enumerate(batches) if owner[b] == rank for i in batch] for rank in range(world_size)]


class Share:
    """The articles this process titles, and the gathering of every process's titles in process 0.

    Args:
        launch: This process's place.
        tokenizer: The engine's tokenizer: articles are measured as the engine encodes them.
        articles: Every article's text, in input order.
        batch_size, max_source_length, source_prefix: As given to the engine's ``generate_titles``.
    """

    def __init__(
        self,
        launch: Launch,
        tokenizer,
        articles: Sequence[str],
        batch_size: int,
        max_source_length: int,
        source_prefix: str = "",
    ):
        self.launch = launch
        self.count = len(articles)
        if launch.world_size == 1:
            self.indices = list(range(self.count))
            return
        # The engines batch this way (`generate_titles` of each engine): same inputs, same batches.
        _, encoded, _ = article_inputs(tokenizer, articles, max_source_length, source_prefix)
        lengths = [len(ids) for ids in encoded]
        batches = length_sorted_batches(lengths, batch_size)
        self.indices = balanced_shares(batches, lengths, launch.world_size)[launch.rank]

    @property
    def elsewhere(self) -> dict[int, str]:
        """Placeholders for the articles other processes title: passed as ``done`` to an engine's
        ``generate_titles``, they leave this process only its own batches to generate."""
        mine = set(self.indices)
        return {i: "" for i in range(self.count) if i not in mine}

    def gather(self, titles: Sequence[str]) -> list[str] | None:
        """Every article's title in process 0 (None in the others), from each process's titles of its share.

        Args:
            titles: This process's titles by article index (only its share's are read).
        """
        own = {i: titles[i] for i in self.indices}
        if self.launch.world_size == 1:
            return [own[i] for i in range(self.count)]
        import torch.distributed as dist

        shares = [None] * self.launch.world_size if self.launch.is_main else None
        dist.gather_object(own, shares, dst=0)
        if not self.launch.is_main:
            return None
        merged = {i: t for share in shares for i, t in share.items()}
        return [merged[i] for i in range(self.count)]


def progress_path(output_file: str, launch: Launch) -> str:
    """The path whose progress file (`titlegen.progress`) this process keeps: the output's for one process,
    ``OUTPUT.rankR`` for process R of several, so that each process resumes on its own."""
    return output_file if launch.world_size == 1 else f"{output_file}.rank{launch.rank}"
