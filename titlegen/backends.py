"""The backends that decode a model, by name: what the settings, the export and the engines all need to know.

A low module with no project imports beside `TitlegenError`, so that settings (`titlegen.config`) can offer the
choices without importing an engine. The engines themselves are in `titlegen.engines`.

* ``transformers``: the model folder as training writes it, decoded by transformers' ``generate``.
* ``ct2``: a folder written by ``titlegen-export``, decoded by CTranslate2.

``auto`` tells them apart by the folder: an export holds `EXPORT_MARKER`.
"""

from __future__ import annotations

from pathlib import Path

from titlegen import TitlegenError

BACKENDS = ("auto", "transformers", "ct2")
# Weight types titlegen-export writes (CTranslate2's names).
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "float16", "bfloat16", "float32")
DEFAULT_QUANTIZATION = "int8"
# Written into every CTranslate2 export by titlegen-export; a folder that holds it is decoded by CTranslate2.
EXPORT_MARKER = "titlegen_export.json"
# What the marker says an export is: the engine refuses a marker of another format.
EXPORT_FORMAT = "titlegen ctranslate2 export v1"


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
