"""titlegen-predict-ray on a local Ray instance (2 CPUs, 127.0.0.1, no dashboard), 2 CPU actors: the titles of
titlegen-predict, in input order, from one file or a folder of shards."""

import json
import os

import pytest

from titlegen.raydata import LOOPBACK_ONLY
from titlegen.recipes.predict import predict

from .conftest import ARTICLES, read_lines

os.environ.update(LOOPBACK_ONLY)  # before ray is imported: its node address stays 127.0.0.1
ray = pytest.importorskip("ray", reason="the ray extra is part of dev: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_titles_a_folder_of_shards_like_predict(local_ray, trained_dir, tmp_path):
    from titlegen.recipes.predict_ray import main, predict_ray

    records = read_lines(ARTICLES)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, part in (("a.jsonl", records[:7]), ("b.jsonl", records[7:])):  # read in path order
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    expected = predict(["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "p.jsonl")])

    out = tmp_path / "titles.jsonl"
    settings = ["--model", str(trained_dir), "--concurrency", "2", "--num_cpus", "1", "--rows_per_batch", "3"]
    assert predict_ray([*settings, "--input", str(folder), "--output", str(out)]) == len(records)
    assert out.read_bytes() == (tmp_path / "p.jsonl").read_bytes()
    shards = sorted((tmp_path / "titles.jsonl.shards").glob("*.json"))
    assert shards and sorted(r["id"] for s in shards for r in read_lines(s)) == sorted(r["id"] for r in expected)
    assert {json.dumps(r, ensure_ascii=False) for s in shards for r in read_lines(s)} == {
        json.dumps(r, ensure_ascii=False) for r in expected
    }, "shards hold the same titles, with Chinese kept as is"

    # Bad input is refused before Ray titles anything, naming the file and line.
    (folder / "c.jsonl").write_text('{"id": "x"}\n', encoding="utf-8")
    assert main([*settings, "--input", str(folder), "--output", str(tmp_path / "bad.jsonl")]) == 2
    assert not (tmp_path / "bad.jsonl").exists()
