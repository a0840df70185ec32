"""CTranslate2 export and engine: the model's own log-probabilities and titles, every decoding setting mapped or
refused, resumable and ordered as the transformers path, and the GPU's float16 fallback."""

import json
import logging
import math

import pytest
import torch

from titlegen import TitlegenError
from titlegen.backends import EXPORT_MARKER, resolve_backend
from titlegen.cli import export_main
from titlegen.engines import TransformersEngine, load_engine
from titlegen.engines.ct2 import CT2Engine, choose_compute_type, safe_compute_type
from titlegen.engines.export import export_model, scales_decoder_outputs
from titlegen.generation import title_generation_config
from titlegen.lora import add_lora
from titlegen.model_folder import load_model, load_tokenizer, trained_settings
from titlegen.modeling import build_model, new_model_config, untie_output_layer
from titlegen.prune import prune_vocabulary
from titlegen.recipes.compare import compare
from titlegen.recipes.predict import predict
from titlegen.recipes.train import train
from titlegen.strategies import STRATEGIES, decoding_arguments

from .conftest import ARTICLES, TINY_MODEL, read_lines
from .test_progress import interrupt_after_first_batch


@pytest.fixture(autouse=True)
def no_whole_character_guard(monkeypatch):
    """transformers decoding without its whole-character guard (`titlegen.characters.WholeCharacters`).

    The guard is a logits processor, which CTranslate2 has no place for: an export's titles can hold byte pieces
    that never form a character, which decoding then drops (`test_titles_hold_no_broken_characters`). The
    random tiny models here write such pieces often, so the tests that compare the two searches compare them
    without the guard.
    """
    monkeypatch.setattr("titlegen.generation.byte_piece_ids", lambda tokenizer: {})
    monkeypatch.setattr("titlegen.trainer.byte_piece_ids", lambda tokenizer: {})


RECORDS = read_lines(ARTICLES)
# Articles of different lengths, so that length-sorted batches reorder them.
TEXTS = [r["maintext"][: 20 + 9 * i] for i, r in enumerate(RECORDS)][::-1]


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    """A random tiny mT5 with an output layer of its own, as google/mt5-small has: its titles are noise, but
    long ones, and any change in decoding changes them."""
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL)
    untie_output_layer(model)
    model.generation_config.max_new_tokens = 8
    folder = tmp_path_factory.mktemp("random") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exports(model_dir, tmp_path_factory):
    """The random model exported in float32 and in int8."""
    root = tmp_path_factory.mktemp("exports")
    for quantization in ("float32", "int8"):
        export_model(model_dir, root / quantization, quantization=quantization)
    return {"float32": root / "float32", "int8": root / "int8"}


@pytest.fixture(scope="module")
def float32(exports):
    return CT2Engine(exports["float32"], threads=1)


@pytest.fixture(scope="module")
def reference(model_dir):
    return TransformersEngine(str(model_dir), threads=1)


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["trained", "random"])
def test_exported_log_probabilities_are_the_models_loss(trained_dir, model_dir, tmp_path, folder):
    """For the trained model (tied output layer) and the random one (untied), in float32."""
    source_dir = trained_dir if folder == "trained" else model_dir
    export_model(source_dir, tmp_path / "export", quantization="float32")
    float32 = CT2Engine(tmp_path / "export", threads=1)
    model, tokenizer = load_model(str(source_dir)).eval(), load_tokenizer(str(source_dir))
    for record in RECORDS:
        source = tokenizer(record["maintext"], max_length=256, truncation=True)["input_ids"]
        target = tokenizer(record["title"])["input_ids"]  # ends with </s>, which CTranslate2 adds itself
        with torch.inference_mode():
            loss = model(input_ids=torch.tensor([source]), labels=torch.tensor([target])).loss.item()
        (scored,) = float32.translator.score_batch(
            [tokenizer.convert_ids_to_tokens(source)], [tokenizer.convert_ids_to_tokens(target[:-1])]
        )
        assert len(scored.log_probs) == len(target)
        assert -sum(scored.log_probs) / len(target) == pytest.approx(loss, abs=1e-4)


def test_the_export_folder_holds_everything_a_command_needs(trained_dir, exports, tmp_path):
    folder = tmp_path / "export"
    export_model(trained_dir, folder)
    for name in ("model.bin", "shared_vocabulary.json", "tokenizer.json", "generation_config.json", "run_config.yaml"):
        assert (folder / name).is_file(), name
    info = json.loads((folder / EXPORT_MARKER).read_text())
    assert info["quantization"] == "int8" and info["source"] == str(trained_dir)
    assert 0 < info["log_prob_error"] < 0.5, "int8 rounds the weights, a little"
    assert json.loads((exports["float32"] / EXPORT_MARKER).read_text())["log_prob_error"] < 1e-4


@pytest.mark.parametrize(
    "model_type, settings, scales",
    [("mt5", {}, False), ("umt5", {}, True), ("t5", {}, True), ("t5", {"tie_word_embeddings": False}, False)],
)  # fmt: skip
def test_output_scale_is_the_models_own(model_type, settings, scales):
    """transformers 5.x says tie_word_embeddings for every mT5 and UMT5; mT5 never scales its output, UMT5 always
    does (as its config says), T5 when the checkpoint's own weights are tied."""
    assert scales_decoder_outputs(new_model_config(model_type, **settings)) is scales


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_float32_titles_are_transformers_titles(float32, reference, strategy):
    arguments = decoding_arguments(strategy)
    expected = reference.generate_titles(TEXTS, progress=False, **arguments)
    assert float32.generate_titles(TEXTS, progress=False, batch_size=4, **arguments) == expected
    assert len(set(expected)) > 1, "the titles differ from article to article"


@pytest.mark.slow
def test_length_limits_are_transformers_limits(float32, reference, tokenizer, tmp_path):
    for arguments in ({"max_new_tokens": 3}, {"max_length": 6}):  # the random model's titles run to the limit
        expected = reference.generate_titles(TEXTS, progress=False, **arguments)
        assert float32.generate_titles(TEXTS, progress=False, **arguments) == expected, arguments
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, TINY_MODEL)
    untie_output_layer(model)
    with torch.no_grad():  # every logit but end-of-title's made small: titles end after a few tokens
        model.lm_head.weight.mul_(0.05)
        model.lm_head.weight[tokenizer.eos_token_id] *= 60
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "export", quantization="float32")
    short, exported = TransformersEngine(str(tmp_path / "model")), CT2Engine(tmp_path / "export", threads=1)
    lengths = set()
    for arguments in ({}, {"min_new_tokens": 3}, {"min_length": 5}):
        expected = short.generate_titles(TEXTS, progress=False, max_new_tokens=8, **arguments)
        assert exported.generate_titles(TEXTS, progress=False, max_new_tokens=8, **arguments) == expected, arguments
        lengths.add(sum(map(len, expected)))
    assert len(lengths) == 3, "each minimum lengthens titles"


def test_int8_titles_are_titles(exports, float32):
    int8 = CT2Engine(exports["int8"], threads=1)
    assert int8.compute_type == "int8"
    titles = int8.generate_titles(TEXTS, progress=False, num_beams=4)
    assert len(titles) == len(TEXTS) and all(isinstance(t, str) and "<" not in t for t in titles)
    greedy = float32.generate_titles(TEXTS, progress=False)
    same = sum(a == b for a, b in zip(int8.generate_titles(TEXTS, progress=False), greedy, strict=True))
    assert same >= len(TEXTS) // 2, "int8 rounds the weights, and rarely changes a greedy title"


def test_titles_hold_no_broken_characters(float32, exports):
    tokenizer = load_tokenizer(str(exports["float32"]))
    ids = [tokenizer(text).input_ids for text in TEXTS]
    raw = [tokenizer.decode(row, skip_special_tokens=True) for row in float32.generate_ids(ids, *float32.decoding())]
    assert any("\ufffd" in title for title in raw), "the random model writes byte pieces that form no character"
    assert not any("\ufffd" in title for title in float32.generate_titles(TEXTS, progress=False))


def test_titles_come_back_in_input_order_whatever_the_batch_size(float32):
    for strategy in ("greedy", "beam"):
        one_by_one = float32.generate_titles(TEXTS, progress=False, batch_size=1, **decoding_arguments(strategy))
        assert (
            float32.generate_titles(TEXTS, progress=False, batch_size=5, **decoding_arguments(strategy)) == one_by_one
        )


def test_done_titles_are_not_generated_again(float32):
    everything = float32.generate_titles(TEXTS, progress=False, batch_size=4)
    reported = []
    done = {i: "kept" for i in range(len(TEXTS)) if i % 2}  # no batch is entirely done: all are generated
    float32.generate_titles(TEXTS, progress=False, batch_size=4, done=done, on_batch=lambda b, t: reported.append(b))
    assert sorted(i for batch in reported for i in batch) == list(range(len(TEXTS)))
    first_batch = reported[0]
    done = {i: everything[i] for i in first_batch}
    reported.clear()
    titles = float32.generate_titles(
        TEXTS, progress=False, batch_size=4, done=done, on_batch=lambda b, t: reported.append(b)
    )
    assert titles == everything and first_batch not in reported and len(reported) == 2


def test_article_tokens_only_keeps_to_the_articles_tokens(float32, reference):
    restricted = float32.generate_titles(TEXTS, progress=False, num_beams=4, article_tokens_only=True)
    assert all(set(title) <= set(text) for text, title in zip(TEXTS, restricted, strict=True)), (
        "characters of the article"
    )
    assert restricted != float32.generate_titles(TEXTS, progress=False, num_beams=4)
    # Greedy titles are transformers'. Beam search ranks titles by the probabilities renormalised over the allowed
    # tokens (CTranslate2 suppresses tokens before its softmax): the titles of transformers' renormalize_logits.
    # CTranslate2's beam search also stops as soon as num_beams titles are finished: transformers' early_stopping.
    greedy = reference.generate_titles(TEXTS, progress=False, article_tokens_only=True)
    assert float32.generate_titles(TEXTS, progress=False, article_tokens_only=True) == greedy
    renormalised = reference.generate_titles(
        TEXTS, progress=False, num_beams=4, article_tokens_only=True, renormalize_logits=True, early_stopping=True
    )
    assert restricted == renormalised


def test_a_models_own_article_tokens_only_is_its_default(model_dir, float32, tmp_path):

    export_model(model_dir, tmp_path / "export", quantization="float32")
    # As tiny_offline.yaml's models save it.
    config = title_generation_config(load_model(str(model_dir)), max_new_tokens=8, article_tokens_only=True)
    config.save_pretrained(tmp_path / "export")
    restricting = CT2Engine(tmp_path / "export", threads=1)
    assert restricting.decoding(None)[1] is True and restricting.decoding(None, article_tokens_only=False)[1] is False
    expected = float32.generate_titles(TEXTS, progress=False, article_tokens_only=True)
    assert restricting.generate_titles(TEXTS, progress=False) == expected
    lifted = restricting.generate_titles(TEXTS, progress=False, article_tokens_only=False)
    assert lifted == float32.generate_titles(TEXTS, progress=False) != expected


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_preset_is_mapped_or_refused(float32, strategy):
    arguments = decoding_arguments(strategy)
    options, restrict = float32.decoding(None, **arguments)
    assert options["beam_size"] == arguments["num_beams"] and restrict is False
    assert options["no_repeat_ngram_size"] == arguments["no_repeat_ngram_size"]
    if arguments["do_sample"]:
        assert (options["sampling_topk"], options["sampling_topp"], options["sampling_temperature"]) == (
            arguments["top_k"], arguments["top_p"], arguments["temperature"]
        )  # fmt: skip
        with pytest.raises(TitlegenError, match="cannot seed sampling per article"):
            float32.check_decoding(seed=42, **arguments)
    else:
        assert "sampling_topk" not in options
        float32.check_decoding(seed=42, **arguments)


@pytest.mark.parametrize(
    "arguments, refused",
    [({"typical_p": 0.5, "do_sample": True}, "typical_p=0.5"), ({"num_return_sequences": 2, "num_beams": 2},
     "num_return_sequences=2"), ({"min_p": 0.1, "do_sample": True}, "min_p=0.1"),
     ({"early_stopping": "never", "num_beams": 2}, "early_stopping='never'"),
     ({"do_sample": True, "num_beams": 2}, "cannot sample within beam search"),
     ({"logits_processor": []}, "cannot honour logits_processor")],
)  # fmt: skip
def test_arguments_the_engine_cannot_honour_are_refused(float32, arguments, refused):
    with pytest.raises(TitlegenError, match=refused.replace("(", r"\(")):
        float32.generate_titles(TEXTS, progress=False, **arguments)


def test_sampling_without_a_seed_samples(float32):
    greedy = float32.generate_titles(TEXTS, progress=False)
    assert float32.generate_titles(TEXTS, progress=False, **decoding_arguments("top_k", top_k=1)) == greedy
    sampled = float32.generate_titles(TEXTS, progress=False, **decoding_arguments("temperature", temperature=2.0))
    assert len(sampled) == len(TEXTS) and sampled != greedy


def test_bad_words_are_suppressed(float32):
    titles = float32.generate_titles(TEXTS, progress=False)
    character = titles[0][0]
    bad = [[i] for token, i in float32.tokenizer.get_vocab().items() if character in token]
    again = float32.generate_titles(TEXTS, progress=False, bad_words_ids=bad)
    assert character in "".join(titles) and character not in "".join(again)


@pytest.mark.parametrize(
    "device, quantization, supported, expected",
    [("cpu", "int8", {"int8", "int8_float32", "float32"}, "int8"),
     ("cpu", "float16", {"int8", "int8_float32", "float32"}, "float32"),
     ("cpu", "float32", {"int8", "float32"}, "float32"),
     ("cuda", "float32", {"float32", "float16", "bfloat16", "int8_float16", "int8_bfloat16"}, "bfloat16"),
     ("cuda", "float16", {"float32", "float16", "int8_float16"}, "float16"),
     ("cuda", "int8", {"float32", "float16", "bfloat16", "int8_float16", "int8_bfloat16"}, "int8_bfloat16"),
     ("cuda", "int8", {"float32", "float16", "int8_float16"}, "int8_float16")],
)  # fmt: skip
def test_compute_type_by_device(device, quantization, supported, expected):
    assert choose_compute_type(device, quantization, supported) == expected


def test_a_compute_type_the_device_lacks_is_refused():
    with pytest.raises(TitlegenError, match="compute type 'bfloat16' is not available on cpu"):
        choose_compute_type("cpu", "int8", {"int8", "float32"}, requested="bfloat16")
    assert [safe_compute_type(t) for t in ("float16", "bfloat16", "int8_float16", "int8", "float32")] == [
        "float32", "float32", "int8_float32", None, None
    ]  # fmt: skip


class Overflowing:
    """A translator whose every score is NaN, as mT5's are in float16 on a GPU."""

    def translate_batch(self, sources, **options):
        class Result:
            hypotheses = [["▁"]]
            scores = [math.nan]

        return [Result() for _ in sources]


def test_non_finite_scores_reload_the_model_in_float32(exports, float32, caplog):
    class HalfPrecisionEngine(CT2Engine):
        def _load_translator(self, compute_type):
            return Overflowing() if compute_type == "float16" else super()._load_translator(compute_type)

    engine = HalfPrecisionEngine(exports["float32"], threads=1, compute_type="float32")
    engine.compute_type, engine.translator = "float16", Overflowing()  # as chosen for a GPU without bfloat16
    with caplog.at_level(logging.WARNING):
        titles = engine.generate_titles(TEXTS, progress=False, num_beams=4)
    assert "non-finite title scores in float16 compute" in caplog.text and engine.compute_type == "float32"
    assert titles == float32.generate_titles(TEXTS, progress=False, num_beams=4)

    engine.translator = Overflowing()  # in float32 compute, nothing is safer
    with pytest.raises(TitlegenError, match="non-finite title scores in float32 compute"):
        engine.generate_titles(TEXTS, progress=False)


def test_titles_longer_than_a_models_absolute_positions_are_refused(reference, tokenizer):
    assert reference.check_decoding(max_new_tokens=1024) is None  # mT5's positions are relative: no bound of its own
    bart = TransformersEngine.__new__(TransformersEngine)
    bart.model = build_model(
        "bart",
        tokenizer,
        "d_model=16,encoder_layers=1,decoder_layers=1,encoder_attention_heads=2,"
        "decoder_attention_heads=2,encoder_ffn_dim=32,decoder_ffn_dim=32,max_position_embeddings=16",
    )
    bart.check_decoding(max_new_tokens=16)
    with pytest.raises(TitlegenError, match=r"max_new_tokens 17 is more than the model's 16 positions"):
        bart.check_decoding(max_new_tokens=17)


def test_backend_follows_the_folder(model_dir, exports):
    assert resolve_backend(str(exports["int8"])) == "ct2" and resolve_backend(str(model_dir)) == "transformers"
    with pytest.raises(TitlegenError, match="not a CTranslate2 export .*titlegen-export"):
        resolve_backend(str(model_dir), "ct2")
    with pytest.raises(TitlegenError, match="a CTranslate2 export, which transformers cannot load"):
        resolve_backend(str(exports["int8"]), "transformers")
    with pytest.raises(TitlegenError, match="bf16 is a transformers setting"):
        load_engine(str(exports["int8"]), bf16=True)


def test_export_refuses_bad_requests(model_dir, exports, tmp_path):
    with pytest.raises(TitlegenError, match="already exists"):
        export_model(model_dir, exports["int8"])
    with pytest.raises(TitlegenError, match="unknown quantization 'int4'"):
        export_model(model_dir, tmp_path / "x", quantization="int4")
    with pytest.raises(TitlegenError, match="already a CTranslate2 export"):
        export_model(exports["int8"], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_predict_decodes_an_export_like_the_model_and_resumes(model_dir, exports, tmp_path, monkeypatch):
    flags = ["--input", str(ARTICLES), "--batch_size", "4", "--num_beams", "4"]
    expected = predict(["--model", str(model_dir), "--output", str(tmp_path / "expected.jsonl"), *flags])
    args = ["--model", str(exports["float32"]), "--output", str(tmp_path / "out.jsonl"), *flags]
    with monkeypatch.context() as patch:
        interrupt_after_first_batch(patch)
        with pytest.raises(KeyboardInterrupt):
            predict(args)
    translated = []
    translate = CT2Engine._translate
    monkeypatch.setattr(CT2Engine, "_translate", lambda self, s, *a: translated.extend(s) or translate(self, s, *a))
    assert predict(args) == expected
    assert len(translated) == len(RECORDS) - 4, "the first batch was kept"
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "expected.jsonl").read_bytes()


@pytest.mark.slow
def test_run_sh_decodes_an_export(model_dir, exports, tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT, subprocess_env

    env = {**subprocess_env(), "TITLEGEN_MODEL": str(exports["float32"]), "PYTHON": sys.executable}
    out = tmp_path / "submission.jsonl"
    result = subprocess.run(["bash", str(ROOT / "run.sh"), str(ARTICLES), str(out)], env=env, capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = predict(["--model", str(model_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "t.jsonl")])
    assert read_lines(out) == expected


@pytest.mark.slow
def test_run_sh_decodes_an_export_of_a_guarded_model_without_its_guard(trained_dir, tmp_path):
    """The offline model decodes with the loop guard (no_loops), which CTranslate2 cannot apply: README's command
    decodes its export without it, with a warning, as transformers does with ``--no_loops false``."""
    import subprocess
    import sys

    from .conftest import ROOT, subprocess_env

    export = tmp_path / "export"
    export_model(trained_dir, export, quantization="float32")
    env = {**subprocess_env(), "TITLEGEN_MODEL": str(export), "PYTHON": sys.executable}
    out = tmp_path / "submission.jsonl"
    result = subprocess.run(["bash", str(ROOT / "run.sh"), str(ARTICLES), str(out)], env=env, capture_output=True,
                            text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "decoding without the loop guard (no_loops)" in result.stderr
    unguarded = predict(["--model", str(trained_dir), "--input", str(ARTICLES), "--output", str(tmp_path / "t.jsonl"),
                         "--no_loops", "false"])  # fmt: skip
    assert read_lines(out) == unguarded


def test_predict_refuses_seeded_sampling_before_writing_anything(exports, tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(TitlegenError, match="cannot seed sampling per article"):
        predict(
            ["--model", str(exports["int8"]), "--input", str(ARTICLES), "--output", str(out), "--strategy", "top_p"]
        )
    assert list(tmp_path.iterdir()) == []


def test_compare_refuses_seeded_sampling_before_any_work_and_runs_a_grid(exports, tmp_path):
    args = ["--model", str(exports["int8"]), "--input", str(ARTICLES), "--limit", "4"]
    with pytest.raises(TitlegenError, match="setting 'top_k=10': the ct2 backend cannot seed sampling"):
        compare([*args, "--output_dir", str(tmp_path / "default")])
    assert not (tmp_path / "default").exists()
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {strategy: greedy}\n- {strategy: beam, num_beams: 4, article_tokens_only: true}\n")
    rows = compare([*args, "--output_dir", str(tmp_path / "out"), "--grid", str(grid)])
    assert [r["setting"] for r in rows] == ["greedy", "beam num_beams=4 article_tokens_only=True"]
    assert "CTranslate2, int8 on cpu" in (tmp_path / "out" / "comparison.md").read_text()


@pytest.mark.slow
def test_a_lora_adapter_and_a_pruned_model_export_as_they_decode(model_dir, tmp_path):

    torch.manual_seed(1)
    adapter = add_lora(load_model(str(model_dir)), r=2)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # adapters start as zero; these change every title
    adapter.save_pretrained(tmp_path / "adapter")
    load_tokenizer(str(model_dir)).save_pretrained(tmp_path / "adapter")
    prune_vocabulary(str(model_dir), [r["maintext"] for r in RECORDS], tmp_path / "pruned")
    titles = {}
    for folder in ("adapter", "pruned"):
        info = export_model(tmp_path / folder, tmp_path / f"{folder}-export", quantization="float32")
        assert info["log_prob_error"] < 1e-4, folder
        titles[folder] = CT2Engine(tmp_path / f"{folder}-export", threads=1).generate_titles(TEXTS, progress=False)
        expected = TransformersEngine(str(tmp_path / folder), threads=1).generate_titles(TEXTS, progress=False)
        assert titles[folder] == expected, folder
    assert titles["adapter"] != TransformersEngine(str(model_dir)).generate_titles(TEXTS, progress=False), "merged"


@pytest.mark.slow
def test_evaluation_during_training_can_decode_with_ctranslate2(tmp_path, monkeypatch):
    from .conftest import tiny_train_args

    calls = []
    generate_ids = CT2Engine.generate_ids
    monkeypatch.setattr(CT2Engine, "generate_ids", lambda self, *a: calls.append(a) or generate_ids(self, *a))
    run = tmp_path / "run"
    train(tiny_train_args(run, "--generation_backend", "ct2", "--generation_num_beams", "2", "--num_train_epochs", "1",
                          "--generation_no_loops", "false"))  # fmt: skip
    assert len(calls) == 2, "the evaluation and the final prediction, a batch each"
    assert "eval_rouge-l" in json.loads((run / "eval_results.json").read_text())
    titles = [r["title"] for r in read_lines(run / "eval_predictions.jsonl")]
    max_source_length = trained_settings(str(run)).max_source_length
    expected = TransformersEngine(str(run)).generate_titles(
        [r["maintext"] for r in RECORDS], progress=False, max_source_length=max_source_length
    )
    same = sum(a == b for a, b in zip(titles, expected, strict=True))
    # int8 compute changes the near-tied titles of a tiny model trained for one epoch; most others agree.
    assert same >= len(RECORDS) // 3, "the titles of transformers, but where int8 compute on CPU changes one"


@pytest.mark.slow
def test_export_command(model_dir, tmp_path, capsys):
    import subprocess
    import sys

    from .conftest import ROOT

    code = (
        "import sys\nfrom titlegen.cli import export_main\n"
        "try:\n    export_main(['--help'])\nexcept SystemExit:\n    assert 'torch' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "--quantization" in result.stdout, result.stderr
    assert export_main([str(model_dir), "-o", str(tmp_path / "out"), "--quantization", "float32"]) == 0
    assert "in float32, log-probabilities within" in capsys.readouterr().out
    assert export_main([str(model_dir), "-o", str(tmp_path / "out")]) == 2
    assert "already exists; choose another output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluation_with_ctranslate2_merges_lora_adapters(trained_dir, tmp_path):
    from .conftest import tiny_train_args

    args = ["--model_name_or_path", str(trained_dir), "--use_lora", "true", "--lora_r", "2"]
    args = [*args, "--generation_backend", "ct2", "--num_train_epochs", "1", "--generation_no_loops", "false"]
    metrics = train(tiny_train_args(tmp_path / "run", *args))
    assert "eval_rouge-l" in metrics and len(read_lines(tmp_path / "run" / "eval_predictions.jsonl")) == len(RECORDS)
