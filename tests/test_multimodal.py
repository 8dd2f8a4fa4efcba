"""Gemma3ForConditionalGeneration against transformers' (tiny text + tiny SigLIP, random weights)."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Gemma3Config as HFGemma3Config
from transformers import Gemma3ForConditionalGeneration as HFGemma3ForConditionalGeneration

from gemma3_minimal import Gemma3ForCausalLM, generate, generate_ids, generate_with_images, get_config
from gemma3_minimal.config import TINY_VISION
from gemma3_minimal.chat import encode_prompt
from gemma3_minimal.multimodal import Gemma3ForConditionalGeneration, Gemma3Processor, expand_prompt
from gemma3_minimal.pan_and_scan import preprocess
from gemma3_minimal.tokenizer import render_chat
from hf_reference import hf_text_config
from test_vision import hf_vision_config

CFG = get_config("tiny").replace(vision=TINY_VISION, name="tiny-vision")  # window 8 < 16 tokens per image
SOFT, PER_IMAGE = CFG.image_token_id, TINY_VISION.mm_tokens_per_image


def random_pair(seed: int, attn: str = "eager"):
    """Our multimodal model with random weights (norms included) and transformers' with the same weights."""
    torch.manual_seed(seed)
    ours = Gemma3ForConditionalGeneration(CFG).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.1 if p.dim() == 1 else 0.05)
    hf_cfg = HFGemma3Config(
        text_config=hf_text_config(CFG, attn).to_dict(), vision_config=hf_vision_config(TINY_VISION).to_dict(),
        mm_tokens_per_image=PER_IMAGE, image_token_index=SOFT,
    )
    hf_cfg._attn_implementation = attn
    theirs = HFGemma3ForConditionalGeneration(hf_cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def prompt_ids(layout: list, seed: int) -> list[int]:
    """Ids from a layout like [5, "img", 7, "img", 6]: n random text ids, or one image's soft tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = [CFG.bos_token_id]
    for part in layout:
        ids += [SOFT] * PER_IMAGE if part == "img" else torch.randint(5, CFG.vocab_size, (part,), generator=g).tolist()
    return ids


def pixels(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_setup_has_a_window_cutting_through_an_image() -> None:
    assert "sliding_attention" in CFG.layer_types and "full_attention" in CFG.layer_types
    assert CFG.sliding_window < PER_IMAGE


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_equal_transformers(attn: str) -> None:
    """Two rows, two images each, text between and after them (row 1 starts with an image)."""
    ours, theirs = random_pair(seed=0, attn=attn)
    rows = [prompt_ids([5, "img", 7, "img", 6], seed=1), prompt_ids(["img", 3, "img", 15], seed=2)]
    ids = torch.tensor(rows)  # [2, 51]
    pv = pixels(4, seed=3)
    with torch.no_grad():
        mine = ours(ids, pixel_values=pv)
        ref = theirs(input_ids=ids, pixel_values=pv, token_type_ids=(ids == SOFT).long()).logits
    torch.testing.assert_close(mine, ref, atol=1e-4, rtol=0)


def test_images_matter_and_attend_both_ways() -> None:
    """Changing the second image changes the logits at its first token (it sees the later tokens of its image)."""
    ours, _ = random_pair(seed=4)
    ids = torch.tensor([prompt_ids([5, "img", 7, "img", 6], seed=5)])
    pv = pixels(2, seed=6)
    other = pv.clone()
    other[1, :, 32:] = -other[1, :, 32:]  # only the bottom half of image 2: its later patches
    first = ids[0].tolist().index(SOFT, 1 + 5 + PER_IMAGE + 7)  # first soft token of image 2
    with torch.no_grad():
        a, b = ours(ids, pixel_values=pv), ours(ids, pixel_values=other)
    assert torch.equal(a[:, :first], b[:, :first])  # everything before image 2 is untouched
    assert not torch.allclose(a[:, first], b[:, first], atol=1e-4)


@pytest.mark.parametrize("chunk", [1, 5])
def test_cached_decoding_after_images_equals_full_forward(chunk: int) -> None:
    """Prefill the prompt with both images through the KV cache, then feed text in chunks."""
    ours, _ = random_pair(seed=7)
    ids = torch.tensor([prompt_ids([3, "img", 4, "img", 2, 20], seed=8)])
    pv = pixels(2, seed=9)
    prompt_len = ids.shape[1] - 20
    cache = ours.new_cache(max_len=ids.shape[1])
    with torch.no_grad():
        full = ours(ids, pixel_values=pv)
        steps = [ours(ids[:, :prompt_len], cache, pixel_values=pv)]
        steps += [ours(ids[:, i:i + chunk], cache) for i in range(prompt_len, ids.shape[1], chunk)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_greedy_generation_with_images_equals_transformers() -> None:
    ours, theirs = random_pair(seed=10)
    prompt = prompt_ids([4, "img", 3, "img", 5], seed=11)
    pv = pixels(2, seed=12)
    mine = list(generate_ids(ours, prompt, max_new_tokens=12, pixel_values=pv, stop_ids=()))
    ids = torch.tensor([prompt])
    ref = theirs.generate(input_ids=ids, pixel_values=pv, token_type_ids=(ids == SOFT).long(),
                          attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert mine == ref[0, len(prompt):].tolist()


@pytest.mark.parametrize("soft_tokens,images", [(PER_IMAGE, 2), (PER_IMAGE - 1, 1), (2 * PER_IMAGE, 0), (0, 1)])
def test_placeholder_count_must_match_images(soft_tokens: int, images: int) -> None:
    ours, _ = random_pair(seed=13)
    ids = torch.tensor([[CFG.bos_token_id, 7, 8] + [SOFT] * soft_tokens + [9]])
    pv = pixels(images, seed=14) if images else None
    with pytest.raises(ValueError, match=f"{soft_tokens} image soft tokens .* {images} images"):
        ours(ids, pixel_values=pv)


def test_text_only_config_is_refused() -> None:
    with pytest.raises(ValueError, match="no vision tower"):
        Gemma3ForConditionalGeneration(get_config("tiny"))


def test_4b_parameter_count_on_meta() -> None:
    # DESIGN: 4B = 4,299,915,632 parameters, text 3,880,099,328 + tower and projector 419,816,304.
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(get_config("4b"))
    assert sum(p.numel() for p in model.parameters()) == 4_299_915_632


BOI_ID, EOI_ID = 400, 401  # the stand-in tokenizer's ids for <start_of_image>, <end_of_image>


CONTROL = {"<bos>": 2, "<start_of_turn>": 105, "<end_of_turn>": 106}


class CharTokenizer:
    """A stand-in tokenizer within the tiny vocabulary: one id per character, and the chat template's control
    pieces as single ids (the real tokenizer is in tokenizer.py)."""

    def piece_to_id(self, piece: str) -> int:
        return {"<start_of_image>": BOI_ID, "<end_of_image>": EOI_ID}[piece]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        pieces = re.split(f"({'|'.join(CONTROL)})", text)
        return [2] * add_bos + [i for p in pieces for i in ([CONTROL[p]] if p in CONTROL else [ord(c) for c in p])]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True):
        text = render_chat(messages, add_generation_prompt)
        return self.encode(text) if tokenize else text


def test_prompt_expansion_puts_original_then_crops() -> None:
    seq = f"\n\n<start_of_image>{'<image_soft_token>' * 3}<end_of_image>\n\n"
    assert expand_prompt("A <start_of_image> B", [0], tokens_per_image=3) == f"A {seq} B"
    assert expand_prompt("<start_of_image>", [2], tokens_per_image=3) == (
        f"Here is the original image {seq} and here are some crops to help you see better {seq} {seq}"
    )


def test_processor_builds_ids_and_pixels_with_pan_and_scan() -> None:
    proc = Gemma3Processor(CharTokenizer(), CFG, do_pan_and_scan=True)
    wide = Image.new("RGB", (1200, 400), "red")  # 3 crops
    square = Image.new("L", (300, 300), 128)  # none
    ids, pv = proc("Compare <start_of_image> with <start_of_image>.", [wide, square])
    ids = ids[0].tolist()
    assert pv.shape == (1 + 3 + 1, 3, 64, 64)
    assert ids.count(SOFT) == 5 * PER_IMAGE and ids.count(BOI_ID) == 5 and ids.count(EOI_ID) == 5
    starts = [i for i, t in enumerate(ids) if t == BOI_ID]
    assert all(ids[s + 1:s + 1 + PER_IMAGE] == [SOFT] * PER_IMAGE and ids[s + 1 + PER_IMAGE] == EOI_ID for s in starts)
    assert ids[0] == CFG.bos_token_id and ids[-1] == ord(".")
    assert CharTokenizer().decode(ids[1:9]) == "Compare "


def test_processor_refuses_mismatched_placeholders() -> None:
    proc = Gemma3Processor(CharTokenizer(), CFG)
    with pytest.raises(ValueError, match="1 image placeholders .* 2 images"):
        proc("Only one <start_of_image> here", [Image.new("RGB", (64, 64))] * 2)
    with pytest.raises(TypeError, match="expected a PIL.Image.Image"):
        proc("<start_of_image>", ["not an image"])


def test_generate_with_images_runs_through_the_processor() -> None:
    ours, _ = random_pair(seed=15)
    proc = Gemma3Processor(CharTokenizer(), CFG)
    text = generate_with_images(ours, proc, "Look <start_of_image>", [Image.new("RGB", (80, 60), "blue")],
                                max_new_tokens=4)
    assert isinstance(text, str) and 0 < len(text) <= 4


def image_chat(image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "Look at "}, {"type": "image", "image": image},
                                         {"type": "text", "text": " now"}]}]


def test_chat_with_an_image_is_the_image_sequence_where_the_item_is() -> None:
    ours, _ = random_pair(seed=16)
    tok, photo = CharTokenizer(), Image.new("RGB", (90, 70), "orange")
    ids, inputs = encode_prompt(ours, tok, image_chat(photo))
    assert ids == (tok.encode("<bos><start_of_turn>user\nLook at\n\n") + [BOI_ID] + [SOFT] * PER_IMAGE + [EOI_ID]
                   + tok.encode("\n\nnow<end_of_turn>\n<start_of_turn>model\n"))
    assert torch.equal(inputs["pixel_values"], preprocess(photo, TINY_VISION.image_size)[None])


@pytest.mark.parametrize("pan_and_scan", [False, True])
def test_chat_with_an_image_generates_as_generate_with_images(tmp_path, pan_and_scan: bool) -> None:
    """`generate(model, tok, messages)` with an image item (a PIL image or a path) equals
    `generate_with_images` on the template's text; Pan&Scan adds the wide photo's 3 crops."""
    ours, _ = random_pair(seed=17)
    tok = CharTokenizer()
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 900, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.png")
    processor = Gemma3Processor(tok, CFG, do_pan_and_scan=pan_and_scan)
    expected = generate_with_images(ours, processor, render_chat(image_chat(photo)), [photo], max_new_tokens=6)
    assert 0 < len(expected) <= 6
    for image in (photo, tmp_path / "photo.png", str(tmp_path / "photo.png")):
        assert generate(ours, tok, image_chat(image), max_new_tokens=6, pan_and_scan=pan_and_scan) == expected
    assert encode_prompt(ours, tok, image_chat(photo), pan_and_scan)[1]["pixel_values"].shape[0] == 1 + 3 * pan_and_scan


def test_images_in_chat_need_a_vision_tower_and_an_image() -> None:
    text_only = Gemma3ForCausalLM(get_config("tiny"))
    for item in ({"type": "image", "image": Image.new("RGB", (8, 8))}, {"type": "image"}):
        messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, item]}]
        with pytest.raises(ValueError, match=r"1 image item\(s\) \(message 0, item 1\) but config 'tiny' is text-only"):
            generate(text_only, CharTokenizer(), messages)
    ours, _ = random_pair(seed=18)
    with pytest.raises(TypeError, match="message 0, item 1: an image item needs 'image': a PIL image or a file path"):
        generate(ours, CharTokenizer(), image_chat(None))
    with pytest.raises(FileNotFoundError):
        generate(ours, CharTokenizer(), image_chat("no/such/photo.png"))


def test_uint8_ids_are_refused_clearly() -> None:
    ours, _ = random_pair(seed=19)
    ids = torch.tensor([[CFG.bos_token_id, 7, 8]], dtype=torch.uint8)
    with pytest.raises(TypeError, match="integer token ids, got dtype torch.uint8; use torch.long"):
        ours(ids, pixel_values=pixels(1, seed=20))


def test_processor_with_the_real_tokenizer() -> None:
    """With Gemma 3's vocabulary: `\\n\\n` is id 108, the image markers 255999 and 256000, soft tokens 262144."""
    from gemma3_minimal import Gemma3Tokenizer

    tok = Gemma3Tokenizer.from_pretrained()
    proc = Gemma3Processor(tok, get_config("4b"))
    ids, pv = proc("Describe<start_of_image>", [Image.new("RGB", (100, 80), "green")])
    assert pv.shape == (1, 3, 896, 896)
    assert ids[0].tolist() == [2] + tok.encode("Describe\n\n") + [255999] + [262144] * 256 + [256000, 108]
