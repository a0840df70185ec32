"""The peft_cost benchmark's measurement, on the tiny trained model: every setting trains and reports."""

import torch

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
