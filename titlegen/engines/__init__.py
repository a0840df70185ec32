"""Generation engines: one way to write titles, whichever library runs the model.

An engine holds a loaded model and its tokenizer and writes titles with `generate_titles`, whose contract is
that of `titlegen.generation.generate_titles`: texts in, one title per text out in input order; ``done`` and
``on_batch`` for resumable runs; ``seed`` for sampling that depends only on the article; generate arguments as
`titlegen.strategies.decoding_arguments` makes them. Commands pick an engine with `load_engine`:

* ``transformers``: the model folder as training writes it, decoded by transformers' ``generate``
  (`titlegen.generation`).
* ``ct2``: a folder written by ``titlegen-export``, decoded by CTranslate2 (`titlegen.engines.ct2`).

``auto`` (the default) tells them apart by the folder (`titlegen.backends.resolve_backend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from titlegen import TitlegenError
from titlegen.backends import resolve_backend
from titlegen.cpu import configure_process
from titlegen.engines.ct2 import CT2Engine
from titlegen.generation import generate_titles
from titlegen.model_folder import load_model_folder


class Engine(Protocol):
    """What commands need from a loaded model, whichever library runs it."""

    backend: str
    tokenizer: object
    generation_config: object  # transformers' GenerationConfig: the folder's own decoding settings

    def generate_titles(self, articles: Sequence[str], **options) -> list[str]:
        """Titles in the order of `articles`; `options` as for `titlegen.generation.generate_titles`."""
        ...

    def check_decoding(self, seed: int | None = None, **generate_kwargs) -> None:
        """Raises `TitlegenError` for generate arguments this engine cannot honour, before any work."""
        ...


def load_engine(
    model_name_or_path: str,
    backend: str = "auto",
    *,
    bf16: bool = False,
    device: str | None = None,
    compute_type: str | None = None,
    threads: int | None = None,
) -> Engine:
    """Loads a model folder (or hub id) for generation.

    Args:
        model_name_or_path: A model or LoRA adapter folder, a hub id, or a ``titlegen-export`` folder.
        backend: ``transformers``, ``ct2``, or ``auto`` (by the folder, see `resolve_backend`).
        bf16: transformers only: generate under bfloat16 autocast.
        device: ``cpu`` or ``cuda``; default: CUDA when there is a GPU.
        compute_type: ct2 only: the CTranslate2 compute type (default: see `titlegen.engines.ct2`).
        threads: CPU threads for the model (default: the library's own choice).
    """
    backend = resolve_backend(model_name_or_path, backend)
    if backend == "ct2":
        if bf16:
            raise TitlegenError("bf16 is a transformers setting; with the ct2 backend, choose --compute_type")
        return CT2Engine(model_name_or_path, device=device, compute_type=compute_type, threads=threads)
    if compute_type is not None:
        raise TitlegenError("compute_type is a ct2 setting; with the transformers backend, use --bf16")
    return TransformersEngine(model_name_or_path, bf16=bf16, device=device, threads=threads)


class TransformersEngine:
    """A model folder decoded by transformers' ``generate``, through `titlegen.generation.generate_titles`.

    The folder is loaded and checked by `titlegen.model_folder.load_model_folder`.
    """

    backend = "transformers"

    def __init__(
        self, model_name_or_path: str, bf16: bool = False, device: str | None = None, threads: int | None = None
    ):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)
        folder = load_model_folder(model_name_or_path)
        self.tokenizer = folder.tokenizer
        self.model = folder.model.to(self.device)
        self.bf16 = bf16

    @property
    def generation_config(self):
        return self.model.generation_config

    def check_decoding(self, seed: int | None = None, **generate_kwargs) -> None:
        """transformers honours every generate argument (`titlegen.strategies` has checked them), but a model with
        absolute positions (``max_position_embeddings``) cannot write a title longer than it has positions for.
        mT5's are relative: titlegen's own bound (`titlegen.arguments.MAX_NEW_TOKENS`) is its only one."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        longest = generate_kwargs.get("max_new_tokens")
        if positions and longest and longest > positions:
            raise TitlegenError(
                f"max_new_tokens {longest} is more than the model's {positions} positions (max_position_embeddings)"
            )

    def generate_titles(self, articles: Sequence[str], **options) -> list[str]:
        return generate_titles(self.model, self.tokenizer, articles, bf16=self.bf16, **options)


def start_engine(args):
    """Seeds and CPU switches (`configure_process`), then the engine that `args`
    (`titlegen.arguments.GenerationArguments`) names: how titlegen-predict, titlegen-compare and titlegen-serve start.
    """
    configure_process(args.seed)
    return load_engine(
        args.model_name_or_path, args.backend, bf16=args.bf16, compute_type=args.compute_type, threads=args.threads
    )
