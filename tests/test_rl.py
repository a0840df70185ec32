"""RL fine-tuning: reward, advantages, log-probs, the PPO and KL terms, update steps, and the recipe."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from titlegen import TitlegenError
from titlegen.checkpoints import trainable_state
from titlegen.config import parse_args
from titlegen.generation import is_article_tokens_only
from titlegen.lora import add_lora
from titlegen.metrics import CharSegmenter, JiebaSegmenter, tw_rouge
from titlegen.modeling import build_model
from titlegen.recipes.rl import main as rl_main
from titlegen.recipes.rl import rl
from titlegen.rl.config import settings
from titlegen.rl.losses import completion_mask, encode, kl_penalty, ppo_clip_loss, title_logprobs
from titlegen.rl.reward import compute_advantages, repeated_bigram_share, rouge_rewards, title_statistics
from titlegen.rl.rollout import batch_indices, frozen_copy, ppo_update, sample_rollout

from .conftest import ARTICLES, ROOT, TINY_MODEL, f1, read_lines

# Reward -------------------------------------------------------------------------------------------------------------


def test_rouge_rewards_hand_checked():
    # 林志穎公司 vs 林志穎的公司 (char): 5 of 5/6 unigrams, 3 of 4/5 bigrams, LCS 5.
    title, ref, seg = ["林志穎公司"], ["林志穎的公司"], CharSegmenter()
    r1, r2, rl_ = f1(1, 5 / 6), f1(3 / 4, 3 / 5), f1(1, 5 / 6)
    assert rouge_rewards(title, ref, seg, weights=(1, 0, 0))[0] == pytest.approx(r1, rel=1e-6)
    assert rouge_rewards(title, ref, seg, weights=(0, 1, 0))[0] == pytest.approx(r2, rel=1e-6)
    mixed = rouge_rewards(title, ref, seg, weights=(0.25, 0.25, 0.5))[0]
    assert mixed == pytest.approx(0.25 * r1 + 0.25 * r2 + 0.5 * rl_, rel=1e-6)
    # One character short of the reference's six: a relative length difference of 1/6.
    penalised = rouge_rewards(title, ref, seg, weights=(0, 0, 1), length_penalty=0.6)[0]
    assert penalised == pytest.approx(rl_ - 0.6 / 6, rel=1e-6)


def test_repetition_penalty_and_empty_titles():
    seg = CharSegmenter()
    # 股市股市股市: bigrams 股市 市股 股市 市股 股市, 2 distinct of 5.
    assert repeated_bigram_share(seg(["股市股市股市"])[0]) == pytest.approx(3 / 5)
    assert repeated_bigram_share(["股", "市"]) == 0.0
    plain, penalised = (rouge_rewards(["股市股市股市"], ["股市大漲"], seg, repetition_penalty=w)[0] for w in (0.0, 0.5))
    assert penalised == pytest.approx(plain - 0.5 * 3 / 5)
    assert rouge_rewards(["", "..."], ["標題", "標題"], seg) == [0.0, 0.0]
    # What evaluations report: mean length and the share of titles that repeat a bigram of their own.
    assert title_statistics(["股市股市", "股市大漲了"], seg) == {"title_length": 4.5, "repetition_rate": 0.5}


@pytest.mark.slow
def test_reward_is_the_reported_metric_pair_by_pair():
    titles = ["央行利率不變 總裁稱通膨壓力趨緩", "高雄港貨櫃量創新高", "Apple發表iPhone 17 Pro"]
    refs = ["央行維持利率不變", "高雄港貨櫃裝卸量創三年新高", "iPhone 17 Pro 9月19日在臺開賣"]
    for seg in (CharSegmenter(), JiebaSegmenter()):
        for weights, key in (((1, 0, 0), "rouge-1"), ((0, 1, 0), "rouge-2"), ((0, 0, 1), "rouge-l")):
            rewards = rouge_rewards(titles, refs, seg, weights=weights)
            assert sum(rewards) / len(rewards) == pytest.approx(tw_rouge(titles, refs, seg)[key]["f"], rel=1e-12)


# Baselines and advantages -------------------------------------------------------------------------------------------


def test_greedy_baseline_advantages():
    rewards = torch.tensor([[0.5, 0.2], [0.1, 0.9]])
    advantages = compute_advantages(rewards, "greedy", torch.tensor([0.3, 0.5]))
    assert torch.allclose(advantages, torch.tensor([[0.2, -0.1], [-0.4, 0.4]]))


def test_leave_one_out_advantages():
    advantages = compute_advantages(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.6]]), "leave_one_out")
    # Each sample minus the mean of the other two.
    assert torch.allclose(advantages, torch.tensor([[1 - 2.5, 2 - 2.0, 3 - 1.5], [-0.3, -0.3, 0.6]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_advantages(torch.tensor([[1.0], [2.0]]), "leave_one_out")
    with pytest.raises(ValueError, match="needs greedy_rewards"):
        compute_advantages(torch.tensor([[1.0]]), "greedy")


# The PPO and KL terms -----------------------------------------------------------------------------------------------


def test_completion_mask_ends_at_the_first_eos():
    titles = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0], [5, 1, 7, 1]])
    expected = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert completion_mask(titles, eos_token_id=1).tolist() == [[bool(v) for v in row] for row in expected]


def test_clipped_objective_matches_a_hand_computation():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 7.0], [0.5, 1.5, 1.0, 1.0]])
    old = torch.log(torch.full_like(ratios, 0.2))
    logprobs = (old + torch.log(ratios)).requires_grad_()
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    loss, clip_fraction = ppo_clip_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # min(r·A, clip(r, 0.8, 1.2)·A) per token: A=+1: 1.2, 0.5, 1.1; A=-1: -0.8, -1.5, -1, -1.
    surrogate = [1.2, 0.5, 1.1, -0.8, -1.5, -1.0, -1.0]
    assert loss.item() == pytest.approx(-sum(surrogate) / 7, rel=1e-6)
    assert clip_fraction.item() == pytest.approx(4 / 7)  # 1.5, 0.5, 0.5, 1.5 lie outside [0.8, 1.2]
    loss.backward()
    # d/dlogp of -r·A/7 is -r·A/7 where the unclipped term is the minimum, 0 where the clip holds it.
    expected = torch.tensor([[0.0, -0.5, -1.1, 0.0], [0.0, 1.5, 1.0, 1.0]]) / 7
    assert torch.allclose(logprobs.grad, expected, atol=1e-7)


def test_kl_penalty_is_zero_for_the_same_model_and_positive_otherwise():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    mask = torch.tensor([[True, True, False]])
    assert kl_penalty(logprobs, logprobs.clone(), mask).item() == 0.0
    ref = torch.log(torch.tensor([[0.25, 0.25, 0.1]]))
    # k3 = exp(r) - r - 1 with r = log(0.25/0.5) on the first token, 0 on the second.
    assert kl_penalty(logprobs, ref, mask).item() == pytest.approx((0.5 - math.log(0.5) - 1) / 2, rel=1e-6)


# Rollouts and updates on a tiny model -------------------------------------------------------------------------------


@pytest.fixture
def tiny(tokenizer):
    """A 1-layer mT5 from a config and a batch of 3 fixture articles with their titles."""
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL).eval()
    records = read_lines(ARTICLES)[:3]
    batch = dict(tokenizer([r["maintext"] for r in records], padding=True, return_tensors="pt"))
    labels = tokenizer(text_target=[r["title"] for r in records], padding=True, return_tensors="pt")["input_ids"]
    batch["labels"] = labels.masked_fill(labels == tokenizer.pad_token_id, -100)
    return model, batch, [r["title"] for r in records]


def length_reward(titles, references):
    """A reward that differs between samples of a random model (ROUGE of its titles is mostly 0)."""
    return [float(len(t)) for t in titles]


def rollout_of(model, tokenizer, batch, references, **kwargs):
    settings = {"num_return_sequences": 3, "baseline": "leave_one_out", "max_new_tokens": 8, **kwargs}
    return sample_rollout(model, tokenizer, batch, references, length_reward, **settings)


def test_title_logprobs_are_the_sampling_policys(tiny, tokenizer):
    """The teacher-forced log-probs equal those of the sampling pass, so the PPO ratio starts at 1."""
    model, batch, _ = tiny
    torch.manual_seed(1)
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=True,
                             num_return_sequences=2, max_new_tokens=6, top_k=0, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
        titles = out.sequences[:, 1:]
        sampled = torch.stack(out.logits, dim=1).log_softmax(-1).gather(-1, titles[..., None]).squeeze(-1)
        teacher_forced = title_logprobs(model, encode(model, batch["input_ids"], batch["attention_mask"]),
                                        batch["attention_mask"], titles)  # fmt: skip
    mask = completion_mask(titles, tokenizer.eos_token_id)
    assert torch.allclose(teacher_forced[mask], sampled[mask], atol=1e-5)


def test_ratio_is_exactly_one_on_the_first_pass(tiny, tokenizer):
    model, batch, refs = tiny
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rollout = rollout_of(model, tokenizer, batch, refs)
    # With ε = 1e-9 any ratio other than exactly 1 would count as clipped.
    first = ppo_update(model, optimizer, batch, rollout, ppo_epochs=1, cliprange=1e-9)
    assert first["ratio"] == 1.0 and first["clip_fraction"] == 0.0
    # A second pass over the same samples sees the updated policy: ratios move off 1.
    two = ppo_update(model, optimizer, batch, rollout_of(model, tokenizer, batch, refs), ppo_epochs=2, cliprange=1e-9)
    assert two["clip_fraction"] > 0.0


def test_kl_is_zero_while_the_policy_equals_the_reference(tiny, tokenizer):
    model, batch, refs = tiny
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    reference = frozen_copy(model)
    rollout = rollout_of(model, tokenizer, batch, refs, with_reference=True, reference_model=reference)
    assert ppo_update(model, optimizer, batch, rollout, beta=0.1)["kl"] == 0.0
    rollout = rollout_of(model, tokenizer, batch, refs, with_reference=True, reference_model=reference)
    assert ppo_update(model, optimizer, batch, rollout, beta=0.1)["kl"] > 0.0, "the policy moved away"


def test_lora_reference_is_the_model_without_adapters(tiny, tokenizer):
    model, batch, refs = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    policy = add_lora(model, r=4, alpha=8)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    # Fresh adapters add zero: the policy is the reference, no copy needed.
    rollout = rollout_of(policy, tokenizer, batch, refs, with_reference=True)
    assert ppo_update(policy, optimizer, batch, rollout, beta=0.1)["kl"] == 0.0
    rollout = rollout_of(policy, tokenizer, batch, refs, with_reference=True)
    assert ppo_update(policy, optimizer, batch, rollout, beta=0.1)["kl"] > 0.0
    trained = {k: v for k, v in trainable_state(policy).items()}
    assert trained and all("lora_" in k for k in trained), "only the adapters train"
    base = policy.get_base_model().state_dict()
    frozen = {k.replace(".base_layer", ""): v for k, v in base.items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], v) for k, v in before.items()), "the base weights stay as they were"


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"baseline": "greedy", "ppo_epochs": 1, "gamma": 1.0, "beta": 0.0},
        {"baseline": "leave_one_out", "ppo_epochs": 2, "gamma": 0.7, "beta": 0.05},
    ],
    ids=["scst", "ppo-kl-mixed"],
)
def test_a_few_steps_change_the_weights_and_keep_losses_finite(tiny, tokenizer, settings):
    model, batch, refs = tiny
    reference = frozen_copy(model)
    start = {k: v.clone() for k, v in trainable_state(model).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampling = {"baseline": settings["baseline"], "with_reference": settings["beta"] > 0, "reference_model": reference}
    for _ in range(3):
        rollout = rollout_of(model, tokenizer, batch, refs, **sampling)
        assert rollout.rewards.shape == (3, 3) and rollout.titles.shape[0] == 9
        update = {k: v for k, v in settings.items() if k != "baseline"}
        stats = ppo_update(model, optimizer, batch, rollout, **update)
        assert all(math.isfinite(v) for v in stats.values()), stats
    assert ("supervised_loss" in stats) == (settings["gamma"] < 1)
    changed = [k for k, v in trainable_state(model).items() if not torch.equal(v, start[k])]
    assert len(changed) == len(start), "every trainable tensor moved"


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["greedy", "leave_one_out"])
def test_steps_raise_the_reward_they_are_given(tiny, tokenizer, baseline):
    """The whole loop optimises: rewarding short titles teaches a random model to stop early."""
    model, batch, refs = tiny
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    rewards = []
    for _ in range(80):
        rollout = sample_rollout(model, tokenizer, batch, refs, lambda titles, _: [-len(t) / 10 for t in titles],
                                 num_return_sequences=8, baseline=baseline, max_new_tokens=8)  # fmt: skip
        ppo_update(model, optimizer, batch, rollout)
        rewards.append(rollout.rewards.mean().item())
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.5, (first, last)


def test_batches_are_reproducible_and_cover_every_record():
    first_epoch = [i for step in range(3) for i in batch_indices(12, 4, step, seed=7)]
    assert sorted(first_epoch) == list(range(12))
    assert batch_indices(12, 4, 5, seed=7) == batch_indices(12, 4, 5, seed=7)
    assert batch_indices(12, 4, 0, seed=7) != batch_indices(12, 4, 0, seed=8)
    assert len(batch_indices(5, 8, 3, seed=0)) == 8, "a batch larger than the data spans epochs"


# The recipe ---------------------------------------------------------------------------------------------------------


def rl_args(model_dir, output_dir, *extra):
    return [
        "--config", str(ROOT / "trainer_args" / "rl_scst.yaml"),
        "--model", str(model_dir),
        "--train_file", str(ARTICLES),
        "--validation_file", str(ARTICLES),
        "--max_eval_samples", "4",
        "--max_target_length", "16",
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--num_return_sequences", "2",
        "--max_steps", "2",
        "--eval_steps", "1",
        "--learning_rate", "1e-3",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_recipe_writes_a_model_logs_and_curves(trained_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "rl"
    results = rl(rl_args(trained_dir, out))
    outputs = [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "run_config.yaml",
        "rl_log.jsonl",
        "eval_results.json",
        "rl_curves.png",
        "best/trainable.safetensors",
        "checkpoint-2/state.json",
    ]
    for name in outputs:
        assert (out / name).is_file(), name
    # rl_scst.yaml leaves the article length to the starting model's run_config.yaml (tiny_offline: 64).
    assert yaml.safe_load((out / "run_config.yaml").read_text())["max_source_length"] == 64
    log = read_lines(out / "rl_log.jsonl")
    steps = [r for r in log if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward", "advantage", "kl", "clip_fraction", "title_tokens", "learning_rate", "loss"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert [r["step"] for r in log if "eval_rouge-l" in r] == [0, 1, 2]
    assert results["start"]["step"] == 0 and results["best"]["eval_rouge-l"] >= results["start"]["eval_rouge-l"]
    assert AutoModelForSeq2SeqLM.from_pretrained(out).generation_config.max_new_tokens == 16
    assert "titlegen-rl --config" in (out / "run_config.yaml").read_text()


@pytest.mark.slow
def test_validation_and_the_saved_model_decode_as_the_starting_model(trained_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, GenerationConfig

    start = tmp_path / "beam_model"
    shutil.copytree(trained_dir, start)
    config = GenerationConfig.from_pretrained(start)
    config.num_beams, config.article_tokens_only = 3, True
    config.save_pretrained(start)
    rl(rl_args(start, tmp_path / "rl", "--max_steps", "1"))
    saved = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "rl").generation_config
    assert saved.num_beams == 3 and is_article_tokens_only(saved)
    rl(rl_args(start, tmp_path / "greedy", "--max_steps", "1", "--generation_num_beams", "1",
               "--generation_article_tokens_only", "false"))  # fmt: skip
    saved = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "greedy").generation_config
    assert saved.num_beams == 1 and not is_article_tokens_only(saved)


@pytest.mark.slow
def test_recipe_with_lora_saves_a_merged_model(trained_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    out = tmp_path / "rl_lora"
    rl(rl_args(trained_dir, out, "--use_lora", "true", "--lora_r", "4", "--baseline", "leave_one_out",
               "--ppo_epochs", "2", "--gamma", "0.9"))  # fmt: skip
    steps = [r for r in read_lines(out / "rl_log.jsonl") if "reward" in r]
    assert len(steps) == 2 and all(math.isfinite(r["supervised_loss"]) for r in steps)
    assert all(k.count("lora_") for k in trainable_state_keys(out / "best" / "trainable.safetensors"))
    model = AutoModelForSeq2SeqLM.from_pretrained(out)  # a plain model: the adapters are merged
    assert not any("lora" in name for name, _ in model.named_parameters())


def trainable_state_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_resuming_continues_exactly_where_the_run_stopped(trained_dir, tmp_path):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    rl(rl_args(trained_dir, straight, "--max_steps", "3"))
    rl(rl_args(trained_dir, resumed, "--max_steps", "2"))
    assert rl_main(rl_args(trained_dir, resumed, "--max_steps", "3")) == 2, "an earlier run is never overwritten"
    rl(rl_args(trained_dir, resumed, "--max_steps", "3", "--resume", "true"))
    assert read_lines(resumed / "rl_log.jsonl") == read_lines(straight / "rl_log.jsonl")
    a, b = (load_file(d / "checkpoint-3" / "trainable.safetensors") for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (resumed / "checkpoint-2").exists(), "only the latest checkpoint is kept"


def test_bad_input_is_reported_with_file_line_and_field(trained_dir, tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text(
        '{"id": "1", "maintext": "文章", "title": "標題"}\n{"id": "2", "maintext": "文章"}\n', encoding="utf-8"
    )
    assert rl_main(rl_args(trained_dir, tmp_path / "a", "--train_file", str(bad))) == 2
    assert "train.jsonl:2: field 'title' is missing" in capsys.readouterr().err

    config = tmp_path / "rl.yaml"
    config.write_text("baseline: average\n")
    assert rl_main(rl_args(trained_dir, tmp_path / "b", "--config", str(config))) == 2
    assert "baseline must be one of greedy, leave_one_out, got 'average'" in capsys.readouterr().err

    assert rl_main(rl_args(tmp_path / "no_model", tmp_path / "c")) == 2
    assert "no_model" in capsys.readouterr().err

    assert rl_main(["--config", str(ROOT / "trainer_args" / "rl_scst.yaml"), "--output_dir", str(tmp_path / "d")]) == 2
    assert "pass --model DIR" in capsys.readouterr().err


def test_settings_are_checked():
    with pytest.raises(TitlegenError, match="num_return_sequences=1 is too small for leave_one_out"):
        parse_args(settings(), ["--baseline", "leave_one_out", "--num_return_sequences", "1"])
    with pytest.raises(TitlegenError, match="gamma must be in"):
        parse_args(settings(), ["--gamma", "1.5"])
    with pytest.raises(TitlegenError, match="not all 0"):
        parse_args(settings(), ["--rouge_l_weight", "0"])
    with pytest.raises(TitlegenError, match="cliprange must be at least 0"):
        parse_args(settings(), ["--cliprange", "-1"])


@pytest.mark.slow
def test_help_needs_no_heavy_imports():
    code = "import sys, titlegen.recipes.rl\nassert not {'torch', 'transformers'} & set(sys.modules), 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "titlegen.recipes.rl", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and "--num_return_sequences" in result.stdout


@pytest.mark.slow
def test_run_config_reruns_the_same_settings(trained_dir, tmp_path):
    out = tmp_path / "rl"
    rl(rl_args(trained_dir, out, "--max_steps", "1", "--beta", "0.1"))
    again = parse_args(settings(), ["--config", str(out / "run_config.yaml")])
    assert again[0].beta == 0.1 and again[2].model_name_or_path == str(trained_dir)
    assert json.loads((out / "eval_results.json").read_text())["segmenter"] == "char"
