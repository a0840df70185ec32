"""titlegen-data and the data folder setting, offline: the original files come from a local folder."""

import hashlib
import sys
from pathlib import Path

import pytest
from transformers import Seq2SeqTrainingArguments

from titlegen import TitlegenError
from titlegen.arguments import DataArguments, ModelArguments, RunArguments
from titlegen.cli import data_main
from titlegen.config import load_config_file
from titlegen.corpus import DATA_ENV, OPENCC, SHA256, data_dir, download, lcsts_records, traditional
from titlegen.data import write_jsonl

from .conftest import ROOT, real_data

# The original files, as the data folder keeps them (titlegen-data writes them into lcsts/original too).
ORIGINAL_PATHS = {
    "train.tsv": "lcsts/original/clge_lcsts_train.tsv",
    "val.tsv": "lcsts/original/clge_lcsts_val.tsv",
    "test.tsv": "lcsts/original/clge_lcsts_test.tsv",
    "sample_test.jsonl": "adl-news/sample_test.jsonl",
    "sample_submission.jsonl": "adl-news/sample_submission.jsonl",
}


@pytest.fixture
def originals() -> dict[str, Path]:
    """The original files in the data folder; the test is skipped without them."""
    return {name: real_data(path) for name, path in ORIGINAL_PATHS.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(originals, tmp_path) -> Path:
    """A local copy of the original files under their upstream names, as a user without network would make."""
    folder = tmp_path / "originals"
    folder.mkdir()
    for name, path in originals.items():
        (folder / name).symlink_to(path)
    return folder


def test_the_pinned_checksums_are_those_of_the_original_files(originals):
    assert {name: sha256(path) for name, path in originals.items()} == SHA256


def test_written_files_equal_the_development_copy(source, tmp_path, capsys, monkeypatch):
    # Without OpenCC here (the Traditional Chinese of all 10k pairs takes most of a minute): it is checked below.
    monkeypatch.setitem(sys.modules, "opencc", None)
    out = tmp_path / "data"
    assert data_main(["--source", str(source), "--output_dir", str(out)]) == 0
    written = sorted(p.relative_to(out) for p in out.rglob("*.jsonl"))
    expected = ["adl-news/sample_submission.jsonl", "adl-news/sample_test.jsonl"]
    expected += [f"lcsts/{split}.zh-cn.jsonl" for split in ("test", "train", "validation")]
    assert written == [Path(name) for name in expected]
    for name in written:
        assert sha256(out / name) == sha256(real_data(str(name))), name
    for name, path in ORIGINAL_PATHS.items():  # the originals are kept, so that these tests run on the folder
        assert sha256(out / path) == SHA256[name], name
    printed = capsys.readouterr().out
    assert str(out / "lcsts/train.zh-cn.jsonl") in printed
    assert "note: no Traditional Chinese files (zh-tw)" in printed and OPENCC in printed


@pytest.mark.slow
def test_traditional_chinese_equals_the_development_copy(originals, tmp_path):
    records = traditional(lcsts_records({name: path.read_bytes() for name, path in originals.items()})["test"])
    write_jsonl(tmp_path / "test.zh-tw.jsonl", records)
    assert sha256(tmp_path / "test.zh-tw.jsonl") == sha256(real_data("lcsts/test.zh-tw.jsonl"))


def test_a_file_that_fails_its_checksum_is_refused(source, tmp_path):
    tampered = source / "val.tsv"
    data = tampered.read_bytes()
    tampered.unlink()
    tampered.write_bytes(data.replace("的".encode(), "地".encode(), 1))
    with pytest.raises(TitlegenError, match=r"val\.tsv: SHA-256 [0-9a-f]{64} is not the pinned"):
        download(tmp_path / "data", source=str(source))
    assert not (tmp_path / "data").exists(), "nothing is written"


def test_no_network_is_one_clear_line(tmp_path, capsys):
    # Port 9 of the loopback address: refused at once, as a download is where there is no network.
    assert data_main(["--source", "http://127.0.0.1:9/lcsts", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read http://127.0.0.1:9/lcsts/train.tsv") and "--source FOLDER" in err
    assert err.count("\n") == 1


def test_the_data_folder_is_one_setting(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_dir() == tmp_path
    types = (ModelArguments, DataArguments, RunArguments, Seq2SeqTrainingArguments)
    values = load_config_file(str(ROOT / "trainer_args/tiny_offline.yaml"), types)
    assert values["train_file"] == f"{tmp_path}/lcsts/train.zh-tw.jsonl"
    monkeypatch.delenv(DATA_ENV)
    checkout = tmp_path / "work" / "titlegen"  # a checkout beside a shared/data folder, as on the development machine
    checkout.mkdir(parents=True)
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    monkeypatch.chdir(checkout)
    assert data_dir() == Path("../shared/data")
    monkeypatch.chdir(tmp_path)  # no ../shared/data here: the folder titlegen-data writes by default
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache/titlegen/data"
