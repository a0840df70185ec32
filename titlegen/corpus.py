"""The real data: where it is (one setting) and how to get it (``titlegen-data``).

The data folder holds ``lcsts/{train,validation,test}.zh-{tw,cn}.jsonl`` (LCSTS PART_II, with its original
TSV files in ``lcsts/original/``) and ``adl-news/sample_{test,submission}.jsonl`` (the course's 10 sample
articles and titles). It is ``$TITLEGEN_DATA`` when set; otherwise ``../shared/data`` where that exists
(the development machine's copy); otherwise the folder ``titlegen-data`` writes by default. Configs name it
as ``${TITLEGEN_DATA}`` in their paths (expanded by `expand_data_dir`), and ``make`` passes its ``DATA`` variable as
``TITLEGEN_DATA``.

``titlegen-data`` downloads the original files from pinned commits of their public repositories, refuses
any file whose SHA-256 differs from the pinned one, and writes the jsonl files exactly as the
development copy was made: one record per row of the original TSV (``title<TAB>text``), with the id
``lcsts2-{train,val,test}-ROW``; an article that appeared before (in this split or an earlier one, in
the order train, validation, test) is left out, and so are the rows `LEFT_OUT` lists; the Traditional
Chinese files are the Simplified ones converted by OpenCC's ``s2twp``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from titlegen import TitlegenError
from titlegen.data import atomic_write_bytes, write_jsonl

DATA_ENV = "TITLEGEN_DATA"
DATA_PLACEHOLDER = "${" + DATA_ENV + "}"
DEVELOPMENT_COPY = Path("../shared/data")

# LCSTS PART_II as distributed in the CLUE generation benchmark, at the last commit that holds it.
LCSTS_URL = (
    "https://raw.githubusercontent.com/CLUEbenchmark/CLGE/2fb38e170310698193780fdcd532190dfe6fc5ce/LGECdataset/lcsts/"
)
# The course's sample files, as a course repository committed them.
COURSE_URL = "https://raw.githubusercontent.com/vincent0408/ADL22/8596a3c3c51169125b056b548c559cc22b51f161/HW3/data/"
SHA256 = {
    "train.tsv": "56e8721b1b09884b41b535d63b14a80bd33e8883078b3d81e0fb17f75f71f1e9",
    "val.tsv": "f82469ccde104a2a1d9686901ebf3423075f242412eabb8129e183b2e3a367b5",
    "test.tsv": "8c76704885aafd89178e247a18ee29d8763dca6ae2a4c181f6b662e16a282926",
    "sample_test.jsonl": "76317332e6e05a12226e3f52919e33b3db3810b304a3cf42296dd14c3b185ce2",
    "sample_submission.jsonl": "29594e3fb5252193509414238338a01f3f9c92fb889651034270454f45512e6a",
}
# Our split name, and the name of its original file and ids.
SPLITS = {"train": "train", "validation": "val", "test": "test"}
# Rows that the development copy leaves out besides repeated articles; its notes do not say why, so they are
# listed here by row number (0-based), to write the same files.
LEFT_OUT = {
    "train": (
        281, 329, 734, 1204, 1221, 1232, 1233, 1277, 1286, 1302, 1328, 1338, 1392, 1419, 1490, 1830, 2070, 2248,
        2481, 2545, 2613, 2631, 2658, 2703, 2761, 2770, 2835, 2860, 2865, 2962, 3014, 3131, 3246, 3295, 3317, 3420,
        3429, 3498, 3523, 3687, 3738, 4894, 5170, 5189, 5210, 5219, 5242, 5245, 5259, 5270, 5301, 5319, 5373, 5395,
        5462, 5470, 5488, 6360, 6441, 6730, 6769, 6836, 7244, 7450, 7452, 7680, 8022, 8452, 8503, 8593,
    ),
    "val": (288, 290, 488, 508, 510, 521, 523, 529, 530, 539, 546, 551, 563, 572, 595, 615, 621),
    "test": (707, 766, 803),
}  # fmt: skip
# The Traditional Chinese files were converted with this package; other OpenCC versions differ in a few words.
OPENCC = "opencc-python-reimplemented==0.1.7"


def default_download_dir() -> Path:
    """Where ``titlegen-data`` writes unless told otherwise: ``$XDG_CACHE_HOME/titlegen/data``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "titlegen" / "data"


def data_dir() -> Path:
    """The data folder: ``$TITLEGEN_DATA``, else ``../shared/data`` where it exists, else `default_download_dir`."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    if DEVELOPMENT_COPY.is_dir():
        return DEVELOPMENT_COPY
    return default_download_dir()


def expand_data_dir(value):
    """`value` with ``${TITLEGEN_DATA}`` replaced by `data_dir` in it, or in each of its strings if a list."""
    if isinstance(value, str) and DATA_PLACEHOLDER in value:
        return value.replace(DATA_PLACEHOLDER, str(data_dir()))
    if isinstance(value, list):
        return [expand_data_dir(v) for v in value]
    return value


def fetch(name: str, source: str) -> bytes:
    """The bytes of original file `name` from `source` (a URL prefix or a folder), checked against its SHA-256."""
    # Here, not at the top: every command reads the data folder's location from this module (its settings name
    # ${TITLEGEN_DATA}), and urllib's import costs each of them more than the rest of titlegen's; only
    # titlegen-data downloads.
    import urllib.error
    import urllib.request

    url = source if "://" in source else Path(source).resolve().as_uri() + "/"
    url = url.rstrip("/") + "/" + name
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        hint = "" if url.startswith("file:") else ". Offline, put the original files in a folder: --source FOLDER"
        raise TitlegenError(f"cannot read {url}: {reason}{hint}") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise TitlegenError(f"{url}: SHA-256 {digest} is not the pinned {SHA256[name]}; refusing the file")
    return data


def lcsts_records(originals: dict[str, bytes]) -> dict[str, list[dict]]:
    """The LCSTS records of each split, from the original TSV files' bytes (keys: ``train.tsv``, ...)."""
    seen: set[str] = set()
    records = {}
    for split, name in SPLITS.items():
        left_out = set(LEFT_OUT[name])
        records[split] = []
        for row, line in enumerate(originals[f"{name}.tsv"].decode("utf-8").split("\n")[:-1]):
            title, text = line.split("\t")  # the checksums guarantee one tab per line
            if text in seen:
                continue
            seen.add(text)
            if row not in left_out:
                records[split].append({"id": f"lcsts2-{name}-{row}", "maintext": text, "title": title})
    return records


def traditional(records: list[dict]) -> list[dict]:
    """The records converted to Traditional Chinese (Taiwan, with its phrasing) by OpenCC's ``s2twp``."""
    from opencc import OpenCC

    converter = OpenCC("s2twp")
    return [
        {**r, "maintext": converter.convert(r["maintext"]), "title": converter.convert(r["title"])} for r in records
    ]


def download(output_dir: str | Path, source: str | None = None) -> list[Path]:
    """Fetches, checks and writes the data folder; returns the files written.

    Args:
        output_dir: The data folder to write (``lcsts/`` and ``adl-news/`` in it).
        source: Where the original files are: a folder or URL holding all five under their original names
            (``train.tsv``, ``val.tsv``, ``test.tsv``, ``sample_test.jsonl``, ``sample_submission.jsonl``).
            By default, the pinned commits of their public repositories.
    """

    originals = {name: fetch(name, source or (LCSTS_URL if name.endswith(".tsv") else COURSE_URL)) for name in SHA256}
    output_dir = Path(output_dir)
    written = []
    for name in ("sample_test.jsonl", "sample_submission.jsonl"):
        atomic_write_bytes(output_dir / "adl-news" / name, originals[name])
        written.append(output_dir / "adl-news" / name)
    for name in SPLITS.values():  # the checked originals too, as the development copy keeps them (and its tests read)
        atomic_write_bytes(output_dir / "lcsts" / "original" / f"clge_lcsts_{name}.tsv", originals[f"{name}.tsv"])
        written.append(output_dir / "lcsts" / "original" / f"clge_lcsts_{name}.tsv")
    try:
        import opencc  # noqa: F401
    except ImportError:
        opencc = None
    for split, records in lcsts_records(originals).items():
        versions = {"zh-cn": records}
        if opencc is not None:
            versions["zh-tw"] = traditional(records)
        for script, recs in versions.items():
            path = output_dir / "lcsts" / f"{split}.{script}.jsonl"
            write_jsonl(path, recs)
            written.append(path)
    if opencc is None:
        print(f"note: no Traditional Chinese files (zh-tw), which the configs train on: pip install '{OPENCC}'")
    return written
