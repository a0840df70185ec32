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


def test_every_import_of_the_project_resolves():
    """Benchmarks import inside their functions, which run only in long measurements: a name moved elsewhere
    (as trained_settings once did) would fail there, minutes in. Every `from titlegen|bench... import name`
    of the package and the benchmarks must name something that exists."""
    import ast
    import importlib

    from .conftest import ROOT

    missing = []
    for path in sorted([*(ROOT / "bench").glob("*.py"), *(ROOT / "titlegen").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module.split(".")[0] not in ("titlegen", "bench"):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing
