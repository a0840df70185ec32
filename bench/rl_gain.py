"""Does RL fine-tuning raise ROUGE? A supervised model before and after titlegen-rl, measured in one run.

    python -m bench.rl_gain [--model DIR] [--max_steps 100] [any titlegen-rl flag ...]

1. The supervised model: --model DIR (trained on ../shared/data/lcsts/train.zh-tw.jsonl), or, without
   it, one trained here with trainer_args/tiny_offline.yaml (kept in outputs/bench/rl_gain/sft).
2. titlegen-rl --config trainer_args/rl_scst.yaml for a fixed budget of steps (each: B articles, K
   samples per article), keeping the checkpoint with the best ROUGE-L on the first max_eval_samples
   validation articles.
3. Both models title every article of the LCSTS validation and test files, decoded as the RL run
   validated (num_beams and article_tokens_only: the starting model's unless --generation_* flags say
   otherwise); the table gives tw_rouge F1 x100 (char segmenter), mean title length (char-segmenter
   tokens: characters, with runs of Latin letters or digits counted as one) and repetition rate (share
   of a title's bigrams that repeat an earlier one), so that a reward hack (long, looping titles) shows.
   The test file plays no part in training or checkpoint selection.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench._common import LCSTS, ROOT, machine, markdown_table, offline_model
from titlegen.config import parse_args
from titlegen.data import read_jsonl
from titlegen.generation import is_article_tokens_only
from titlegen.metrics import get_segmenter
from titlegen.model_folder import load_model, load_tokenizer
from titlegen.recipes.rl import rl
from titlegen.rl.config import settings as rl_settings
from titlegen.rl.rollout import evaluate_titles

RESULTS = ROOT / "outputs" / "bench" / "rl_gain"
SPLITS = {"validation": LCSTS / "validation.zh-tw.jsonl", "test": LCSTS / "test.zh-tw.jsonl"}
EXAMPLES = 5


def evaluate(model_dir: Path, max_source_length: int, generation_config) -> dict[str, tuple[dict, list[str]]]:
    """Titles for every article of each split, decoded as `generation_config` says, scored with the char segmenter."""

    model, tokenizer = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    results = {}
    for split, path in SPLITS.items():
        records = read_jsonl(path, fields=("id", "maintext", "title"))
        results[split] = evaluate_titles(
            model, tokenizer, [r["maintext"] for r in records], [r["title"] for r in records], get_segmenter("char"),
            generation_config=generation_config, batch_size=64, max_source_length=max_source_length, progress=False,
        )  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="supervised model folder (default: train one with tiny_offline.yaml)")
    parser.add_argument("--max_steps", type=int, default=100, help="the RL budget, in steps (default: 100)")
    parser.add_argument("--config", default=str(ROOT / "trainer_args" / "rl_scst.yaml"))
    parser.add_argument("--output_dir", default=str(RESULTS / "rl"), help="the RL run's folder (replaced)")
    args, rl_flags = parser.parse_known_args()

    from transformers import GenerationConfig

    start_model = offline_model(args.model, RESULTS / "sft")
    out = Path(args.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--config", args.config, "--model", str(start_model), "--output_dir", str(out),
            "--max_steps", str(args.max_steps), *rl_flags]  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    rl(argv)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    rl_args, _, _, _, data_args, _, training_args = parse_args(
        rl_settings(), ["--config", str(out / "run_config.yaml")]
    )
    decoded = GenerationConfig.from_pretrained(out)  # the decoding the RL run validated with
    num_beams, restrict = decoded.num_beams, is_article_tokens_only(decoded)
    before, after = (evaluate(model, data_args.max_source_length, decoded) for model in (start_model, out))
    batch, k = training_args.per_device_train_batch_size, rl_args.num_return_sequences

    evals = [r for r in read_jsonl(out / "rl_log.jsonl", fields=()) if "eval_rouge-l" in r]
    best_step = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))["best"]["step"]
    print(f"\n{machine()}")
    print(f"RL budget: {args.max_steps} steps x {batch} articles x {k} samples = {args.max_steps * batch * k} "
          f"sampled titles: {wall / 60:.1f} min wall, {cpu / 60:.1f} CPU-min")  # fmt: skip
    print(f"start: {start_model}; RL run: {out}")
    print(
        f"ROUGE-L on the first {data_args.max_eval_samples} validation articles by step: "
        + ", ".join(f"{r['step']}: {r['eval_rouge-l']:.2f}" for r in evals)
        + f" (kept: step {best_step})"
    )
    decoding = "greedy decoding" if num_beams == 1 else f"beam search ({num_beams} beams)"
    decoding += ", titles of article tokens only" if restrict else ""
    print(f"{decoding}, tw_rouge F1 x100 with the char segmenter\n")
    rows = []
    for split in SPLITS:
        for name, m in (("supervised", before[split][0]), ("+ RL", after[split][0])):
            rows.append([split, name, m["rouge-1"], m["rouge-2"], m["rouge-l"], m["title_length"],
                         f"{m['repetition_rate']:.3f}"])  # fmt: skip
        gain = [after[split][0][key] - before[split][0][key] for key in ("rouge-1", "rouge-2", "rouge-l")]
        rows.append([split, "gain", *(f"{g:+.2f}" for g in gain), "", ""])
    header = ["split", "model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "mean length", "repetition rate"]
    print(markdown_table(header, rows))

    records = read_jsonl(SPLITS["validation"], fields=("id", "maintext", "title"))
    print(f"\nThe first {EXAMPLES} validation articles:")
    for i in range(EXAMPLES):
        print(f"- reference:  {records[i]['title']}\n  supervised: {before['validation'][1][i]}\n"
              f"  + RL:       {after['validation'][1][i]}")  # fmt: skip


if __name__ == "__main__":
    main()
