"""Generation engines: one way to write titles, whichever library runs the model.

An engine holds a loaded model and its tokenizer and writes titles with `generate_titles`, whose contract is
that of `titlegen.generation.generate_titles`: texts in, one title per text out in input order; ``done`` and
``on_batch`` for resumable runs; ``seed`` for sampling that depends only on the article; generate arguments as
`titlegen.strategies.decoding_arguments` makes them. Commands pick an engine with `load_engine`:

* ``transformers``: the model folder as training writes it, decoded by transformers' ``generate``
  (`titlegen.generation`).
* ``ct2``: a folder written by ``titlegen-export``, decoded by CTranslate2 (`titlegen.engines.ct2`).

``auto`` (the default) tells them apart by the folder: an export holds ``titlegen_export.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from titlegen import TitlegenError

BACKENDS = ("auto", "transformers", "ct2")
# Weight types titlegen-export writes (CTranslate2's names).
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "float16", "bfloat16", "float32")
DEFAULT_QUANTIZATION = "int8"
# Written into every CTranslate2 export by titlegen-export; a folder that holds it is decoded by CTranslate2.
EXPORT_MARKER = "titlegen_export.json"


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


def is_export(model_dir: str | Path) -> bool:
    """Whether a folder is a CTranslate2 export written by ``titlegen-export``."""
    return (Path(model_dir) / EXPORT_MARKER).is_file()


def resolve_backend(model_name_or_path: str, backend: str = "auto") -> str:
    """The backend that decodes a model folder: `backend`, or for ``auto`` the one the folder is made for.

    Raises:
        TitlegenError: for an unknown backend, or one that cannot read the folder.
    """
    if backend not in BACKENDS:
        raise TitlegenError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    exported = is_export(model_name_or_path)
    if backend == "auto":
        return "ct2" if exported else "transformers"
    if backend == "ct2" and not exported:
        raise TitlegenError(
            f"{model_name_or_path}: not a CTranslate2 export (it has no {EXPORT_MARKER}); "
            f"write one with `titlegen-export {model_name_or_path} -o DIR` and decode DIR"
        )
    if backend == "transformers" and exported:
        raise TitlegenError(
            f"{model_name_or_path}: a CTranslate2 export, which transformers cannot load; use --backend ct2 "
            "(or auto), or the model folder it was exported from"
        )
    return backend


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
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: CUDA when there is a GPU.
        compute_type: ct2 only: the CTranslate2 compute type (default: see `titlegen.engines.ct2`).
        threads: CPU threads for the model (default: the library's own choice).
    """
    backend = resolve_backend(model_name_or_path, backend)
    if backend == "ct2":
        if bf16:
            raise TitlegenError("bf16 is a transformers setting; with the ct2 backend, choose --compute_type")
        from titlegen.engines.ct2 import CT2Engine

        return CT2Engine(model_name_or_path, device=device, compute_type=compute_type, threads=threads)
    if compute_type is not None:
        raise TitlegenError("compute_type is a ct2 setting; with the transformers backend, use --bf16")
    return TransformersEngine(model_name_or_path, bf16=bf16, device=device, threads=threads)


class TransformersEngine:
    """A model folder decoded by transformers' ``generate``, through `titlegen.generation.generate_titles`.

    The folder is loaded and checked by `titlegen.lifecycle.load_model_folder`.
    """

    backend = "transformers"

    def __init__(
        self, model_name_or_path: str, bf16: bool = False, device: str | None = None, threads: int | None = None
    ):
        import torch

        from titlegen.lifecycle import load_model_folder

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
        """transformers honours every generate argument (`titlegen.strategies` has checked them)."""

    def generate_titles(self, articles: Sequence[str], **options) -> list[str]:
        from titlegen.generation import generate_titles

        return generate_titles(self.model, self.tokenizer, articles, bf16=self.bf16, **options)
