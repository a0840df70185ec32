"""The peft_cost benchmark's measurement, on the tiny trained model: every setting trains and reports."""

import re

import pytest
import torch

from bench import gpu_check
from bench.peft_cost import SETTINGS, measure

from .conftest import real_data


def test_every_setting_trains_and_reports_its_cost(trained_dir):
    real_data("lcsts/train.zh-tw.jsonl")  # the benchmark's articles
    threads = torch.get_num_threads()  # measure() sets the thread count of its process
    try:
        results = {s: measure(s, str(trained_dir), batch_size=2, steps=1, threads=1) for s in SETTINGS}
    finally:
        torch.set_num_threads(threads)
    for result in results.values():
        assert len(result["seconds"]) == 1 and result["seconds"][0] > 0
        # Peak above the runtime's memory holds in the fresh process the benchmark gives each measurement; here
        # all settings share one process, whose resident memory can shrink between them, so both are only positive.
        assert result["peak_mib"] > 0 and result["runtime_mib"] > 0 and result["source_lengths"][0] > 0
    trainable = {s: r["trainable"] for s, r in results.items()}
    total = results["full"]["total"]
    assert trainable["full"] == trainable["pruned"] == total  # `pruned` trains whatever folder it is given
    assert 0 < trainable["lora"] < trainable["decoder-blocks"] < trainable["decoder"] < total


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_cpu(capsys):
    """The GPU check's smoke mode: every row measured (the 2-process row needs 2 GPUs and says so)."""
    threads = torch.get_num_threads()
    try:
        gpu_check.main(["--device", "cpu", "--tiny"])
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    speeds = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[1] for row in rows[1:]}
    names = ["plain loop, fp32", "titlegen transformers, bf16", "ct2 float32", "ct2 int8"]
    assert [n for n in names if not any(k.endswith(n) for k in speeds)] == []
    measured = [
        float(re.match(r"([0-9.]+) (steps|titles)/s", v).group(1)) for k, v in speeds.items() if "skipped" not in v
    ]
    assert len(measured) == 5 and all(rate > 0 for rate in measured), speeds
    assert "estimate" in rows[1] and "skipped: needs 2 GPUs" in rows[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_gpu_check_without_a_gpu_says_how_to_run_it_on_cpu():
    with pytest.raises(SystemExit, match="--device cpu --tiny"):
        gpu_check.main([])
