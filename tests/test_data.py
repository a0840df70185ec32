import json
import os

import pytest

from titlegen.data import DataError, atomic_output_dir, read_jsonl, split_records, write_jsonl

FIELDS = ("id", "maintext", "title")


def write(tmp_path, content: bytes | str, name="in.jsonl"):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def line(**record) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


GOOD = line(id="1", maintext="文章一", title="標題一") + line(id="2", maintext="文章二", title="標題二")


def test_reads_records_in_order_with_extra_fields(tmp_path):
    path = write(
        tmp_path,
        line(id="a", maintext="文", title="題", date_publish="2021") + line(id="b", maintext="x", title="y"),
    )
    records = read_jsonl(path, FIELDS)
    assert [r["id"] for r in records] == ["a", "b"]
    assert records[0]["date_publish"] == "2021"


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"id": "1", "maintext": "x", "title": "y"}\n{"id": "2", "maintext": \n',
            r"in\.jsonl:2: not valid JSON",
        ),
        (line(id="1", maintext="x"), r"in\.jsonl:1: field 'title' is missing"),
        (line(id="1", maintext=3, title="y"), r"in\.jsonl:1: field 'maintext' must be a string, got int"),
        (line(id="1", maintext="   ", title="y"), r"in\.jsonl:1: field 'maintext' is empty"),
        (
            line(id="1", maintext="x", title=None),
            r"in\.jsonl:1: field 'title' must be a string, got NoneType",
        ),
        ("[1, 2]\n", r"in\.jsonl:1: expected a JSON object, got list"),
        ("", r"in\.jsonl: no records"),
        ("\n\n  \n", r"in\.jsonl: no records"),
        (
            GOOD + line(id="1", maintext="x", title="y"),
            r"in\.jsonl:3: field 'id' repeats the id '1' of line 1",
        ),
    ],
    ids=[
        "bad-json",
        "missing",
        "not-string",
        "empty-text",
        "null",
        "not-object",
        "empty-file",
        "blank-file",
        "dup-id",
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        read_jsonl(write(tmp_path, content), FIELDS)


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path, GOOD.encode() + b'{"id": "3", "maintext": "\xff\xfe", "title": "t"}\n')
    with pytest.raises(DataError, match=r"in\.jsonl:3: not valid UTF-8"):
        read_jsonl(path, FIELDS)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl", FIELDS)


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    content = (
        b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode() + b"\r\n" + line(id="3", maintext="m", title="t").encode()
    )
    records = read_jsonl(write(tmp_path, content), FIELDS)
    assert [r["id"] for r in records] == ["1", "2", "3"]
    assert records[1]["title"] == "標題二"


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_jsonl(tmp_path / "private.jsonl", [{"title": "t", "id": "1"}])
        os.umask(0o022)
        write_jsonl(tmp_path / "shared.jsonl", [{"title": "t", "id": "1"}])
        with atomic_output_dir(tmp_path / "run") as folder:
            (folder / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "private.jsonl").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


def test_fields_may_be_empty_when_asked(tmp_path):
    path = write(tmp_path, line(id="1", title=""))
    assert read_jsonl(path, ("id", "title"), may_be_empty=("title",))[0]["title"] == ""


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"title": "舊", "id": "1"}])

    def failing():
        yield {"title": "新", "id": "1"}
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_jsonl(path, failing())
    assert path.read_text(encoding="utf-8") == '{"title": "舊", "id": "1"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"], "no temporary file is left behind"


def test_split_is_seeded_and_disjoint():
    records = [{"id": str(i)} for i in range(100)]
    train, held = split_records(records, 10, seed=1)
    assert len(held) == 10 and len(train) == 90
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert split_records(records, 10, seed=1) == (train, held)
    assert split_records(records, 10, seed=2)[1] != held
