import math

import pytest
import torch

from titlegen import TitlegenError
from titlegen.model_folder import load_model, load_tokenizer
from titlegen.modeling import (
    build_model,
    count_parameters,
    freeze_embeddings,
    freeze_encoder,
    share_embedding_module,
    untie_output_layer,
)
from titlegen.trainer import without_tied_copies

SMALL = "d_model=256,d_kv=32,d_ff=512,num_heads=4,num_layers=2,num_decoder_layers=2"


def initial_loss(model, vocab_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(3, vocab_size, (8, 40), generator=g)
    labels = torch.randint(3, vocab_size, (8, 12), generator=g)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=inputs, labels=labels)
    return out.loss.item(), out.logits.std().item()


def test_a_model_built_from_config_starts_near_a_uniform_guess(tokenizer):
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, SMALL)
    assert model.config.vocab_size == len(tokenizer)
    loss, logit_std = initial_loss(model, len(tokenizer))
    assert abs(loss - math.log(len(tokenizer))) < 1.0, loss
    assert logit_std < 2.0


def test_without_the_fix_the_initial_loss_is_far_off(tokenizer):
    """Guards the reason for fix_tied_output_scale: a bare config starts with huge logits."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("mt5", vocab_size=len(tokenizer))
    config.update_from_string(SMALL)
    loss, _ = initial_loss(AutoModelForSeq2SeqLM.from_config(config), len(tokenizer))
    assert loss > 5 * math.log(len(tokenizer))


def test_overrides_reach_the_settings_a_config_derives(tokenizer):
    """On a built T5 config, feed_forward_proj=relu alone would leave a gated GELU feed-forward."""
    relu = build_model("mt5", tokenizer, SMALL + ",feed_forward_proj=relu")
    assert (relu.config.is_gated_act, relu.config.dense_act_fn) == (False, "relu")
    assert hasattr(relu.encoder.block[0].layer[1].DenseReluDense, "wi")
    gated = build_model("mt5", tokenizer, SMALL)  # mT5's own: gated GELU
    assert (gated.config.is_gated_act, gated.config.dense_act_fn) == (True, "gelu_new")
    assert (gated.config.d_model, gated.config.vocab_size) == (256, len(tokenizer)), "overrides and settings kept"
    wider = build_model("mt5", tokenizer, "vocab_size=4000,d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    assert wider.config.vocab_size == 4000, "an override wins over a setting"
    assert wider.config.num_decoder_layers == 1, "as MT5Config(num_layers=1) gives"


def test_bad_config_overrides_are_reported(tokenizer):
    with pytest.raises(TitlegenError, match="config_overrides='d_model=big'"):
        build_model("mt5", tokenizer, "d_model=big")


def test_freeze_encoder_keeps_encoder_fixed_during_training(tokenizer):
    torch.manual_seed(0)
    model = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    frozen = freeze_encoder(model)
    trainable, total = count_parameters(model)
    assert frozen > 0 and trainable == total - frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(["北市增設公共自行車站"], return_tensors="pt")
    labels = tokenizer(text_target=["自行車站"], return_tensors="pt").input_ids
    for _ in range(3):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    encoder_names = [n for n in before if n.startswith("encoder.") and "embed_tokens" not in n]
    assert encoder_names
    for name in encoder_names:
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["decoder.block.0.layer.0.SelfAttention.q.weight"],
                           after["decoder.block.0.layer.0.SelfAttention.q.weight"])  # fmt: skip


def test_missing_model_folder_says_how_to_work_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, at import: asks no network
    monkeypatch.chdir(tmp_path)
    # A name that could be a hub id, and is no folder here: the hub's answer, and how to do without it.
    with pytest.raises(TitlegenError, match=r"there is no folder 'outputs/no-such-model' and the hub .*tiny_offline"):
        load_model("outputs/no-such-model")
    with pytest.raises(TitlegenError, match="point model_name_or_path at a local folder"):
        load_tokenizer("outputs/no-such-model")
    # A path that cannot be a hub id is a missing folder, whatever the hub holds.
    with pytest.raises(TitlegenError, match=f"^{tmp_path}/no-such-model: no such model folder$"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(TitlegenError, match=r"^\./no-such-model: no such tokenizer folder$"):
        load_tokenizer("./no-such-model")


def test_a_folder_without_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(TitlegenError, match="not a model folder"):
        load_model(str(tmp_path))


def test_pickled_tensors_load_with_the_weights_only_unpickler(tokenizer, tmp_path):
    """A pytorch_model.bin of plain tensors, as the hub's mT5 checkpoints are, loads; one that holds other
    objects is refused (tests/test_hub_layout.py)."""
    model = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_model(str(tmp_path))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_code_shipped_in_a_model_folder_is_never_run(tokenizer, tmp_path):
    """A folder whose config points at its own Python code (auto_map) loads with the built-in classes."""
    import json

    build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    marker = tmp_path / "code-ran"
    (tmp_path / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    auto_map = {
        "config.json": {"AutoConfig": "custom.Custom", "AutoModelForSeq2SeqLM": "custom.Custom"},
        "tokenizer_config.json": {"AutoTokenizer": ["custom.Custom", None]},
    }
    for name, entries in auto_map.items():
        settings = json.loads((tmp_path / name).read_text())
        settings["auto_map"] = entries
        (tmp_path / name).write_text(json.dumps(settings))
    assert type(load_model(str(tmp_path))).__name__ == "MT5ForConditionalGeneration"
    assert load_tokenizer(str(tmp_path))("新聞").input_ids == tokenizer("新聞").input_ids
    assert not marker.exists(), "trust_remote_code=True would have run custom.py"


def test_freeze_embeddings_freezes_input_and_untied_output_layer(tokenizer):
    model = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    assert freeze_embeddings(model) == len(tokenizer) * 32, "a tied output layer counts once"
    untie_output_layer(model)
    assert freeze_embeddings(model) == 2 * len(tokenizer) * 32
    assert not model.shared.weight.requires_grad and not model.lm_head.weight.requires_grad
    trainable, total = count_parameters(model)
    assert trainable == total - 2 * len(tokenizer) * 32


def test_an_untied_output_layer_stays_untied_when_reloaded(tokenizer, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    untie_output_layer(model)
    assert model.lm_head.weight is not model.shared.weight
    model.save_pretrained(tmp_path)
    again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is not again.shared.weight
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert torch.equal(again.shared.weight, model.shared.weight)


def test_share_embedding_module_makes_one_look_up_module_and_changes_nothing_else(tokenizer, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1").eval()
    inputs, labels = torch.tensor([[5, 6, 7, 1]]), torch.tensor([[8, 9, 1]])
    before, keys = model(input_ids=inputs, labels=labels).logits, set(model.state_dict())
    assert model.encoder.embed_tokens is not model.shared  # transformers 5: three modules, one weight
    assert share_embedding_module(model)
    assert model.encoder.embed_tokens is model.shared and model.decoder.embed_tokens is model.shared
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(input_ids=inputs, labels=labels).logits, before, rtol=0, atol=0)
    # A full state dict of separate copies (as FSDP gathers it) saves the embedding once, and reloads tied.
    copies = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    kept = without_tied_copies(model, copies)
    assert {"lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} & set(kept) == set()
    model.save_pretrained(tmp_path, state_dict=kept)
    again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.shared.weight
    torch.testing.assert_close(again.eval()(input_ids=inputs, labels=labels).logits, before, rtol=0, atol=0)


def test_share_embedding_module_leaves_other_models_alone(tokenizer):
    model = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    model.encoder.embed_tokens = torch.nn.Embedding(len(tokenizer), 32)  # an encoder with its own embedding
    assert not share_embedding_module(model)
    assert model.decoder.embed_tokens is not model.shared
    untied = build_model("mt5", tokenizer, "d_model=32,d_kv=8,d_ff=64,num_heads=2,num_layers=1")
    untie_output_layer(untied)
    kept = without_tied_copies(untied, {n: t.clone() for n, t in untied.state_dict().items()})
    assert "lm_head.weight" in kept and "encoder.embed_tokens.weight" not in kept
