"""Hugging Face checkpoint folders: tiny models saved by transformers load into ours with equal logits;
the official configs of every size map to our presets; bad folders fail with errors naming file and tensor."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from gemma3_minimal import Gemma3ForCausalLM, Gemma3ForConditionalGeneration, get_config, load_pretrained
from gemma3_minimal.hf_checkpoint import build_on_meta, config_from_hf, load_hf_model
from gemma3_minimal.pretrained import CHECKPOINT_ENV, default_checkpoint, load_model
from hf_reference import random_pair

TINY = get_config("tiny")  # layers 0-4 and 6-7 local, 5 global; window 8
OFFICIAL = Path(__file__).parent / "data" / "official_configs"
PRESET_OF = {"gemma-3-270m": "270m", "gemma-3-1b-it": "1b", "gemma-3-4b-it": "4b",
             "gemma-3-12b-it": "12b", "gemma-3-27b-it": "27b"}
# DESIGN.md; the multimodal ones include the vision tower.
PARAMETERS = {"270m": 268_098_176, "1b": 999_885_952, "4b": 4_299_915_632, "12b": 12_187_079_280,
              "27b": 27_432_062_576}
TEXT_PARAMETERS_4B = 3_880_099_328


def save_tiny(folder: Path, cfg, max_shard_size: str | None = None, seed: int = 0) -> None:
    """transformers' Gemma3ForCausalLM with random weights (norms included), saved by save_pretrained."""
    _, theirs = random_pair(cfg, seed=seed)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    theirs.save_pretrained(folder, **kwargs)


@pytest.fixture(scope="module")
def text_folders(tmp_path_factory):
    """One single-file checkpoint of TINY, one sharded checkpoint of TINY with x8 linear RoPE scaling."""
    root = tmp_path_factory.mktemp("hf")
    save_tiny(root / "single", TINY, seed=1)
    save_tiny(root / "sharded", TINY.replace(rope_scaling_factor=8.0), max_shard_size="40KB", seed=2)
    return root


@pytest.fixture
def broken(text_folders, tmp_path):
    """A fresh copy of the sharded checkpoint, to damage."""
    return Path(shutil.copytree(text_folders / "sharded", tmp_path / "ckpt"))


@pytest.mark.parametrize("kind", ["single", "sharded"])
def test_text_checkpoint_logits_equal_transformers(text_folders, kind):
    from transformers import Gemma3ForCausalLM as HFGemma3ForCausalLM

    folder = text_folders / kind
    shards = sorted(folder.glob("*.safetensors"))
    assert (len(shards) > 1) == (kind == "sharded") and (folder / "model.safetensors.index.json").exists() == (kind == "sharded")
    ours = load_hf_model(folder, progress=False)
    theirs = HFGemma3ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    assert isinstance(ours, Gemma3ForCausalLM) and not ours.training
    expected_scaling = 8.0 if kind == "sharded" else 1.0
    assert ours.config == TINY.replace(rope_scaling_factor=expected_scaling, name=kind)
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))  # 40 > window 8
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-5, rtol=0)


def test_bfloat16_load_casts_every_tensor_and_ties_the_head(text_folders):
    from safetensors.torch import load_file

    folder = text_folders / "single"
    model = load_hf_model(folder, dtype=torch.bfloat16, progress=False)
    stored = load_file(folder / "model.safetensors")
    params = dict(model.named_parameters())
    assert set(params) == set(stored) - {"lm_head.weight"}
    for name, p in params.items():
        assert p.dtype == torch.bfloat16 and p.device.type == "cpu"
        assert torch.equal(p, stored[name].to(torch.bfloat16)), name
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_load_pretrained_dispatches_folders_and_takes_the_folders_tokenizer(text_folders, tmp_path):
    from gemma3_minimal import train_tokenizer

    folder = Path(shutil.copytree(text_folders / "single", tmp_path / "ckpt"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog 0123456789\n" * 200)
    train_tokenizer([corpus], vocab_size=300, model_prefix=tmp_path / "small")
    shutil.copy(tmp_path / "small.model", folder / "tokenizer.model")
    model, tok = load_pretrained(str(folder))
    assert isinstance(model, Gemma3ForCausalLM) and model.config.name == "ckpt"
    assert tok.vocab_size == 300
    assert tok.decode(tok.encode("the lazy fox")) == "the lazy fox"


def test_folder_without_tokenizer_gets_the_bundled_one(text_folders):
    from gemma3_minimal.hf_checkpoint import load_tokenizer

    assert load_tokenizer(text_folders / "single").vocab_size == 262_144


def test_default_checkpoint_reads_the_environment(text_folders, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert default_checkpoint() == "270m"
    monkeypatch.setenv(CHECKPOINT_ENV, str(text_folders / "sharded"))
    assert default_checkpoint() == str(text_folders / "sharded")
    assert load_model().config.name == "sharded"  # no argument: the environment's checkpoint


# --- The official configs -------------------------------------------------------------------------


def count_parameters(cfg) -> int:
    """Distinct parameters of our model built on the meta device (the tied head counted once)."""
    return sum(p.numel() for p in build_on_meta(cfg).parameters())


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_official_config_maps_to_the_preset(name):
    """The 270M and 1B configs give our presets exactly; the multimodal ones too, once their padded
    262,208-row vocabulary is set back to the tokenizer's 262,144 (DESIGN counts that table)."""
    preset = get_config(PRESET_OF[name])
    cfg = config_from_hf(json.loads((OFFICIAL / f"{name}.json").read_text()), name=preset.name)
    assert cfg.vocab_size == (262_144 if preset.vision is None else 262_208)
    assert cfg.replace(vocab_size=262_144) == preset
    assert count_parameters(cfg.replace(vocab_size=262_144)) == PARAMETERS[preset.name]


def test_official_4b_text_parameter_count():
    cfg = config_from_hf(json.loads((OFFICIAL / "gemma-3-4b-it.json").read_text()))
    assert count_parameters(cfg.replace(vocab_size=262_144, vision=None)) == TEXT_PARAMETERS_4B
    assert count_parameters(cfg.replace(vision=None)) == TEXT_PARAMETERS_4B + 64 * 2560  # the padding rows


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_official_config_read_as_transformers_reads_it(name):
    """transformers' own parsing of the same file (its defaults fill the omitted fields) agrees with ours."""
    import transformers

    d = json.loads((OFFICIAL / f"{name}.json").read_text())
    cfg = config_from_hf(d)
    hf = transformers.Gemma3TextConfig(**d) if d["model_type"] == "gemma3_text" else transformers.Gemma3Config(**d).text_config
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window",
                  "max_position_embeddings", "rms_norm_eps"):
        assert getattr(cfg, field) == getattr(hf, field), field
    assert cfg.layer_types == hf.layer_types
    full, local = hf.rope_parameters["full_attention"], hf.rope_parameters["sliding_attention"]
    assert (cfg.rope_theta, cfg.rope_local_base_freq) == (full["rope_theta"], local["rope_theta"])
    assert cfg.rope_scaling_factor == full.get("factor", 1.0)
    if cfg.vision is not None:
        v = transformers.Gemma3Config(**d).vision_config
        assert (cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.num_attention_heads,
                cfg.vision.intermediate_size, cfg.vision.image_size, cfg.vision.patch_size) == (
            v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.image_size, v.patch_size)


# --- Bad input ------------------------------------------------------------------------------------


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_folder_without_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json does not exist"):
        load_hf_model(broken, progress=False)


def test_not_a_folder_nor_a_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset .* nor a checkpoint folder"):
        load_model(str(tmp_path / "nowhere"))


def test_model_type_not_gemma3(broken):
    edit_config(broken, model_type="llama")
    with pytest.raises(ValueError, match=r"config\.json: model_type 'llama' is not Gemma 3"):
        load_hf_model(broken, progress=False)


def test_missing_shard_is_named_with_a_tensor(broken):
    index = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    tensor, shard = next(iter(sorted(index.items())))
    (broken / shard).unlink()
    with pytest.raises(FileNotFoundError, match=rf"shard .*{shard} is missing; .* holds {tensor}"):
        load_hf_model(broken, progress=False)


def test_truncated_shard_names_the_cut_tensor(broken):
    index = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(index.values()))[-1]
    data = (broken / shard).read_bytes()
    (broken / shard).write_bytes(data[:-10])
    with pytest.raises(ValueError, match=rf"shard .*{shard} is truncated: tensor \S+ ends at byte"):
        load_hf_model(broken, progress=False)


def test_index_pointing_to_the_wrong_shard(broken):
    path = broken / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["model.norm.weight"] = next(s for s in shards if s != index["weight_map"]["model.norm.weight"])
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"tensor model\.norm\.weight is not in shard .*, although .* puts it there"):
        load_hf_model(broken, progress=False)


def test_tensor_with_wrong_shape(broken):
    edit_config(broken, intermediate_size=96)
    with pytest.raises(ValueError, match=r"tensor model\.layers\.0\.mlp\.down_proj\.weight in .* has shape \(64, 128\), "
                                         r"but .* needs \(64, 96\)"):
        load_hf_model(broken, progress=False)


def test_missing_and_unexpected_tensors_are_named(broken):
    edit_config(broken, num_hidden_layers=9, layer_types=TINY.replace(num_hidden_layers=9).layer_types)  # no layer 8
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.8\.input_layernorm\.weight'"):
        load_hf_model(broken, progress=False)
    edit_config(broken, num_hidden_layers=7, layer_types=TINY.layer_types[:7])  # layer 7 unexpected
    with pytest.raises(ValueError, match=r"13 tensors unexpected \['model\.layers\.7\."):
        load_hf_model(broken, progress=False)


@pytest.mark.parametrize("change, message", [
    (dict(final_logit_softcapping=30.0), "final_logit_softcapping = 30.0"),
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping = 50.0"),
    (dict(layer_types=["full_attention"] + TINY.layer_types[1:]), "layer_types .* supports only that pattern"),
    (dict(rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                           "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6}}), "RoPE types"),
    (dict(sliding_window=None), "sliding_window is null"),
])
def test_configs_gemma3_cannot_have(broken, change, message):
    edit_config(broken, **change)
    with pytest.raises(ValueError, match=message):
        load_hf_model(broken, progress=False)


def test_layer_types_with_another_period_are_followed(broken):
    """layer_types decides the pattern: every 4th layer global here, as a config may say."""
    types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(8)]
    edit_config(broken, layer_types=types)
    assert load_hf_model(broken, progress=False).config.layer_types == types


# --- Multimodal checkpoints -----------------------------------------------------------------------


def rename_checkpoint(folder: Path, layout: str) -> None:
    """Rewrite the tensor names of transformers 5's save (`language_model.model.*`, `vision_tower.*`)
    into another layout that official checkpoints use."""
    from safetensors.torch import load_file, save_file

    renames = {
        # the original conversion, as google/gemma-3-4b-it holds it
        "official": [("vision_tower.", "vision_tower.vision_model.")],
        # transformers 4.52 to 4.57, which also stored the tied head
        "transformers-4.52": [("language_model.model.", "model.language_model."),
                              ("vision_tower.", "model.vision_tower.vision_model."),
                              ("multi_modal_projector.", "model.multi_modal_projector.")],
    }[layout]
    path = folder / "model.safetensors"
    state = load_file(path)
    renamed = {}
    for name, tensor in state.items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        renamed[name] = tensor
    if layout == "transformers-4.52":
        renamed["lm_head.weight"] = renamed["model.language_model.embed_tokens.weight"].clone()
    save_file(renamed, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("layout", ["transformers-5", "official", "transformers-4.52"])
def test_multimodal_checkpoint_logits_equal_transformers(tmp_path, layout):
    """Tiny text (window 8) + tiny SigLIP (16 tokens per image); two images, text around them."""
    from transformers import Gemma3ForConditionalGeneration as HFGemma3ForConditionalGeneration

    from test_multimodal import CFG, pixels, prompt_ids, random_pair as random_multimodal_pair

    _, saved = random_multimodal_pair(seed=7)
    saved.save_pretrained(tmp_path)
    if layout != "transformers-5":
        rename_checkpoint(tmp_path, layout)
    ours = load_hf_model(tmp_path, progress=False)
    theirs = HFGemma3ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    assert isinstance(ours, Gemma3ForConditionalGeneration)
    assert ours.config == CFG.replace(name=tmp_path.name)
    assert ours.lm_head.weight is ours.model.language_model.embed_tokens.weight
    ids = torch.tensor([prompt_ids([5, "img", 7, "img", 6], seed=8)])  # [1, 51]
    pv = pixels(2, seed=9)
    with torch.no_grad():
        mine = ours(ids, pixel_values=pv)
        ref = theirs(input_ids=ids, pixel_values=pv, token_type_ids=(ids == CFG.image_token_id).long()).logits
    torch.testing.assert_close(mine, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, message", [
    (dict(boi_token_index=7), "boi_token_index = 7"),
    (dict(vision_config={"hidden_size": 32, "vision_use_head": True}), r"\(vision_config\): vision_use_head = True"),
    (dict(text_config={"final_logit_softcapping": 30.0}), r"\(text_config\): final_logit_softcapping = 30.0"),
])
def test_multimodal_configs_gemma3_cannot_have(change, message):
    d = json.loads((OFFICIAL / "gemma-3-4b-it.json").read_text())
    with pytest.raises(ValueError, match=message):
        config_from_hf({**d, **change})
