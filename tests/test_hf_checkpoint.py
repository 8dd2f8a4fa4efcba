"""Hugging Face checkpoint folders: tiny models saved by transformers load into ours with equal logits;
the official configs of every size map to our presets; bad folders fail with errors naming file and tensor."""

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma3_minimal import Gemma3ForCausalLM, Gemma3ForConditionalGeneration, get_config, load_pretrained
from gemma3_minimal.config import TINY_VISION
from gemma3_minimal.hf_checkpoint import build_on_meta, checkpoint_tensors, config_from_hf, load_hf_model, loading_plan
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


def test_layer_count_differing_from_the_checkpoint_fails_fast(broken):
    edit_config(broken, num_hidden_layers=9, layer_types=TINY.replace(num_hidden_layers=9).layer_types)  # no layer 8
    with pytest.raises(ValueError, match=r"says num_hidden_layers = 9, but the checkpoint has 8 layers numbered 0\.\.7"):
        load_hf_model(broken, progress=False)
    edit_config(broken, num_hidden_layers=7, layer_types=TINY.layer_types[:7])  # layer 7 unexpected
    with pytest.raises(ValueError, match=r"says num_hidden_layers = 7, but the checkpoint has 8 layers numbered 0\.\.7"):
        load_hf_model(broken, progress=False)


def test_missing_and_unexpected_tensors_are_named(text_folders):
    tensors = checkpoint_tensors(text_folders / "single")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    tensors["model.extra.weight"] = (text_folders / "single" / "model.safetensors", [4])
    with pytest.raises(ValueError, match=r"1 parameters missing \['model\.layers\.3\.mlp\.up_proj\.weight'\], "
                                         r"1 tensors unexpected \['model\.extra\.weight'\]"):
        loading_plan(build_on_meta(TINY), tensors)


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


# --- Hostile folders: dtypes, headers, paths, config values, malformed JSON (issue 14) -------------


def shard_of(folder: Path, tensor: str) -> Path:
    return folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def rewrite_header(path: Path, edit) -> None:
    """Apply `edit` to a safetensors file's JSON header (a dict), keeping the data as it is."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def edit_index(folder: Path, edit) -> None:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float8_e4m3fn, torch.complex64, torch.float64])
def test_shard_dtypes_other_than_f32_f16_bf16_are_refused(broken, dtype):
    path = shard_of(broken, "model.norm.weight")
    state = load_file(path)
    state["model.norm.weight"] = state["model.norm.weight"].to(dtype)
    save_file(state, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"tensor model\.norm\.weight has dtype '\w+'; Gemma 3 weights are floating "
                                         r"point, one of F32, F16, BF16"):
        load_hf_model(broken, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_shards_load(broken, dtype):
    path = shard_of(broken, "model.norm.weight")
    state = load_file(path)
    stored = {k: v.to(dtype) for k, v in state.items()}
    save_file(stored, str(path), metadata={"format": "pt"})
    model = load_hf_model(broken, progress=False)
    assert torch.equal(model.model.norm.weight, stored["model.norm.weight"].float())


@pytest.mark.parametrize("edit, message", [
    (lambda info: info.update(dtype="I32"), r"has dtype 'I32'"),  # F32 bits relabelled as integers
    (lambda info: info.update(dtype="F16"), r"spans \d+ bytes, but F16 \[64\] takes 128"),  # same bytes, other size
    (lambda info: info.update(shape=[32]), r"spans 256 bytes, but F32 \[32\] takes 128"),
    (lambda info: info.pop("data_offsets"), r"header entry of tensor model\.norm\.weight needs dtype, shape and data_offsets"),
    (lambda info: info.update(data_offsets=None), r"has data_offsets None"),
    (lambda info: info.update(shape="64"), r"has shape '64'"),
])
def test_relabelled_or_malformed_header_entries_are_refused(broken, edit, message):
    path = shard_of(broken, "model.norm.weight")
    rewrite_header(path, lambda header: edit(header["model.norm.weight"]))
    with pytest.raises(ValueError, match=rf"shard .*{path.name}: .*{message}"):
        load_hf_model(broken, progress=False)


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_index_entries_outside_the_folder_are_refused(broken, entry):
    edit_index(broken, lambda index: index["weight_map"].update({"model.norm.weight": entry}))
    with pytest.raises(ValueError, match=rf"weight_map\['model\.norm\.weight'\]: shard file .* is outside the "
                                         r"checkpoint folder .*; refused"):
        load_hf_model(broken, progress=False)


def test_symlinked_shard_outside_the_folder_is_refused(broken, tmp_path):
    path = shard_of(broken, "model.norm.weight")
    outside = tmp_path / "elsewhere.safetensors"
    path.rename(outside)
    path.symlink_to(outside)
    with pytest.raises(ValueError, match=rf"shard file '{path.name}' resolves to .*elsewhere\.safetensors, outside the "
                                         r"checkpoint folder .*; refused"):
        load_hf_model(broken, progress=False)


def test_hugging_face_cache_layout_with_symlinks_to_blobs_loads(text_folders, tmp_path):
    """A hub download: snapshots/<revision>/<file> -> ../../blobs/<hash>; the one way out that is allowed."""
    repo = tmp_path / "models--google--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted((text_folders / "sharded").iterdir())):
        shutil.copy(file, repo / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    ours = load_hf_model(snapshot, progress=False)
    reference = load_hf_model(text_folders / "sharded", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values()))


def change_config(folder, change: dict) -> None:
    """Edit the folder's config.json, with the 4.x keys (rope_theta) in place of transformers 5's rope_parameters."""
    path = folder / "config.json"
    d = json.loads(path.read_text())
    d.pop("rope_parameters", None)
    d.update(change)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("change, message", [
    (dict(rms_norm_eps=-1e-6), "rms_norm_eps must be a finite number > 0, got -1e-06"),
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps must be a finite number > 0, got nan"),
    (dict(rms_norm_eps="1e-6"), "rms_norm_eps must be a finite number > 0, got '1e-6'"),
    (dict(rope_theta=0), r"rope_theta must be a finite number > 0, got 0"),
    (dict(rope_theta=-1e4), r"rope_theta must be a finite number > 0"),
    (dict(rope_local_base_freq=float("inf")), r"rope_local_base_freq must be a finite number > 0, got inf"),
    (dict(rope_scaling={"rope_type": "linear", "factor": float("nan")}), "rope_scaling_factor must be a finite number > 0, got nan"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 0.5}), "rope_scaling_factor must be >= 1, got 0.5"),
    (dict(query_pre_attn_scalar=0), "query_pre_attn_scalar must be a finite number > 0, got 0"),
    (dict(sliding_window=0), "sliding_window must be a positive int, got 0"),
    (dict(head_dim=15), "head_dim must be even"),
    (dict(hidden_size=True), "hidden_size must be a positive int, got True"),
    (dict(eos_token_id=-3), "eos_token_id must be an int token id >= 0 below vocab_size 512, got -3"),
    (dict(bos_token_id=512), "bos_token_id must be an int token id >= 0 below vocab_size 512, got 512"),
])
def test_config_values_are_checked_before_loading(broken, change, message):
    """rope_theta lives in rope_parameters in transformers 5's files; the 4.x keys are read when it is absent."""
    change_config(broken, change)
    with pytest.raises(ValueError, match=rf"config\.json: {message}"):
        load_hf_model(broken, progress=False)


@pytest.mark.parametrize("change, message", [
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps must be a finite number > 0"),
    (dict(rope_theta=0.0), "rope_theta must be a finite number > 0"),
    (dict(rope_local_base_freq=-1.0), "rope_local_base_freq must be a finite number > 0"),
    (dict(rope_scaling_factor=float("nan")), "rope_scaling_factor must be a finite number > 0"),
    (dict(query_pre_attn_scalar=0), "query_pre_attn_scalar must be a finite number > 0"),
    (dict(sliding_window=-4), "sliding_window must be a positive int"),
    (dict(stop_token_ids=[1]), "stop_token_ids must be a non-empty tuple"),
    (dict(pad_token_id=None), "pad_token_id must be an int token id"),
])
def test_hand_made_configs_get_the_same_checks(change, message):
    with pytest.raises(ValueError, match=message):
        TINY.replace(**change)


@pytest.mark.parametrize("change, message", [
    (dict(layer_norm_eps=0.0), "layer_norm_eps must be a finite number > 0"),
    (dict(patch_size=0), "patch_size must be a positive int, got 0"),
    (dict(hidden_size=float("nan")), "hidden_size must be a positive int"),
])
def test_vision_config_values_are_checked(change, message):
    with pytest.raises(ValueError, match=message):
        replace(TINY_VISION, **change)


def test_a_huge_layer_count_fails_before_the_model_is_built(broken):
    edit_config(broken, num_hidden_layers=1_000_000, layer_types=None)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"config\.json says num_hidden_layers = 1000000, but the checkpoint has 8 layers "
                                         r"numbered 0\.\.7 \(model\.layers\.N\.\*\)"):
        load_hf_model(broken, progress=False)
    assert time.perf_counter() - start < 5  # building 10^6 layers on meta would take minutes


@pytest.mark.parametrize("edit, message", [
    (lambda index: index["weight_map"].update({"model.norm.weight": 3}), r"weight_map\['model\.norm\.weight'\]: the shard file must be a file name, got 3"),
    (lambda index: index["weight_map"].update({"model.norm.weight": None}), r"weight_map\['model\.norm\.weight'\]: the shard file must be a file name, got None"),
    (lambda index: index.update(weight_map=[]), r"has no weight_map"),
])
def test_malformed_index_entries(broken, edit, message):
    edit_index(broken, edit)
    with pytest.raises(ValueError, match=rf"model\.safetensors\.index\.json.*{message}"):
        load_hf_model(broken, progress=False)


def test_index_or_config_that_is_not_an_object(broken):
    (broken / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json holds a JSON list, not an object"):
        load_hf_model(broken, progress=False)
    (broken / "config.json").write_text('["gemma3_text"]')
    with pytest.raises(ValueError, match=r"config\.json holds a JSON list, not an object"):
        load_hf_model(broken, progress=False)


@pytest.mark.parametrize("change, message", [
    (dict(rope_scaling={"rope_type": "linear"}), r" rope_scaling has rope_type 'linear' but no factor"),
    (dict(rope_scaling={"rope_type": "linear", "factor": "8"}), r"rope_scaling: factor must be a number, got '8'"),
    (dict(rope_scaling=[8.0]), r"rope_scaling must be an object, got \[8\.0\]"),
    (dict(rope_theta=None), r": rope_theta must be a number, got None"),
    (dict(eos_token_id=[]), r"eos_token_id is an empty list"),
    (dict(eos_token_id=["<eos>"]), r"eos_token_id must be an int token id >= 0 below vocab_size 512, got '<eos>'"),
    (dict(layer_types="full_attention"), r"layer_types must be a list of 'sliding_attention' and 'full_attention'"),
    (dict(layer_types=[None] * 8), r"layer_types must be a list"),
    (dict(num_hidden_layers=None), r"num_hidden_layers must be a positive int, got None"),
])
def test_malformed_config_values_name_the_file_and_key(broken, change, message):
    change_config(broken, change)
    with pytest.raises(ValueError, match=rf"config\.json.*{message}"):
        load_hf_model(broken, progress=False)


@pytest.mark.parametrize("change, message", [
    (dict(text_config=[1]), r"text_config must be an object"),
    (dict(vision_config="siglip"), r"vision_config must be an object"),
    (dict(rope_parameters={"full_attention": 1, "sliding_attention": {}}), None),
])
def test_malformed_multimodal_sections(change, message):
    d = json.loads((OFFICIAL / "gemma-3-4b-it.json").read_text())
    if "rope_parameters" in change:
        d["text_config"] = {**d["text_config"], **change}
        change, message = {}, r"rope_parameters: full_attention must be an object, got 1"
    with pytest.raises(ValueError, match=rf"config\.json.*{message}"):
        config_from_hf({**d, **change})


def test_overlapping_tensors_in_a_shard_are_refused(broken):
    """Each entry is self-consistent, but two tensors share bytes: safetensors' own check, reported as ours."""
    path = shard_of(broken, "model.norm.weight")

    def overlap(header):
        others = [info for name, info in header.items() if name != "model.norm.weight" and name != "__metadata__"
                  and info["data_offsets"][1] - info["data_offsets"][0] >= 256]
        start = others[0]["data_offsets"][0]
        header["model.norm.weight"]["data_offsets"] = [start, start + 256]

    rewrite_header(path, overlap)
    with pytest.raises(ValueError, match=rf"shard .*{path.name} could not be read \(.*\); download it again"):
        load_hf_model(broken, progress=False)
