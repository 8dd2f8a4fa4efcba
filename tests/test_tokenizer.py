"""Gemma3Tokenizer against transformers' tokenizer loaded from the same GGUF, plus train_tokenizer."""

import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import Gemma3Processor as HFGemma3Processor
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from gemma3_minimal import get_config
from gemma3_minimal.chat import encode_prompt
from gemma3_minimal.course.reference import reference_tokenizer
from gemma3_minimal.multimodal import Gemma3ForConditionalGeneration
from gemma3_minimal.tokenizer import Gemma3Tokenizer, render_chat, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = json.loads((Path(__file__).with_name("tokenizer_corpus.json")).read_text(encoding="utf-8"))
CASES = [(f"{script}-{i}", s) for script, texts in CORPUS["scripts"].items() for i, s in enumerate(texts)]
CASES += [(f"{kind}-{i}", s) for kind, texts in CORPUS.items() if kind != "scripts" for i, s in enumerate(texts)]
CASE_IDS = [name for name, _ in CASES]
STRINGS = [s for _, s in CASES]

# Gemma 3's chat template as shipped in the instruction models' tokenizer_config.json
# (google/gemma-3-*-it). The GGUF carries no template, so transformers is handed this one.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
CONVERSATIONS = {
    "one-turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system-one-turn": [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [
        {"role": "user", "content": "  Hi there!\n"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Count to 3 in French, then say <end_of_turn> literally."},
        {"role": "assistant", "content": "un, deux, trois\n\n"},
        {"role": "user", "content": "Merci 🙏"},
    ],
    "system-multi-turn": [
        SYSTEM,
        {"role": "user", "content": "def f(x):\n\treturn x * 2\n\nWhat does f(21) return?"},
        {"role": "assistant", "content": "42"},
        {"role": "user", "content": "Und auf Deutsch?"},
    ],
    "content-items": [
        {"role": "system", "content": [{"type": "text", "text": "Describe images."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is this? "}]},
    ],
}


# The official tokenizer is the SentencePiece model plus these special tokens, as transformers'
# conversion script (models/gemma3/convert_gemma3_weights.py) builds it: `<image_soft_token>` is added
# as id 262,144, and the image markers, plain pieces in the GGUF, are special (skipped on decode).
OFFICIAL_EXTRA_TOKENS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                         "eoi_token": "<end_of_image>"}


@pytest.fixture(scope="module")
def ref():
    """transformers' Gemma tokenizer as it reads the same GGUF (its verified saved copy), with the official
    tokenizer's extra special tokens."""
    ref = reference_tokenizer(extra_special_tokens=OFFICIAL_EXTRA_TOKENS)
    # extra_special_tokens names them (ref.boi_token, ...); mark them special in the backend too
    ref.add_tokens([AddedToken(t, special=True, normalized=False) for t in OFFICIAL_EXTRA_TOKENS.values()],
                   special_tokens=True)
    assert ref.convert_tokens_to_ids(list(OFFICIAL_EXTRA_TOKENS.values())) == [262144, 255999, 256000]
    return ref


@pytest.fixture(scope="module")
def tok():
    return Gemma3Tokenizer.from_pretrained()


def test_corpus_is_broad():
    """At least 200 strings and 20 writing systems, counted from the characters themselves."""
    scripts = {
        unicodedata.name(c).split()[0] for s in STRINGS for c in s if c.isalpha() and unicodedata.name(c, "")
    }
    assert len(STRINGS) >= 200
    assert len(scripts) >= 20, sorted(scripts)
    for kind in ("code", "whitespace", "digits", "emoji", "combining", "control", "special"):
        assert len(CORPUS[kind]) >= 10, kind
    assert any("\u200d" in s for s in CORPUS["emoji"])  # joiner sequences


@pytest.mark.parametrize("text", STRINGS, ids=CASE_IDS)
def test_ids_match_transformers(tok, ref, text):
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", STRINGS, ids=CASE_IDS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_matches_transformers(tok, ref):
    """Random ids, with byte pieces and control pieces mixed in, decode to transformers' text."""
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 8))]
        ids += [rng.randrange(7, 7 + 256) for _ in range(rng.randint(0, 4))]  # the 256 byte pieces
        ids += [rng.choice([0, 1, 2, 3, 4, 105, 106, 255999, 256000, 262144])]
        rng.shuffle(ids)
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids


def test_space_marker_is_a_space(tok, ref):
    """`▁` (U+2581) is how SentencePiece writes a space, so the character itself reads as a space."""
    text = "a\u2581b \u2581"
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False) == tok.encode("a b  ")
    assert tok.decode(tok.encode(text)) == "a b  "


def test_special_tokens_and_properties(tok):
    assert (tok.vocab_size, len(tok)) == (262144, 262144)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    expected = {"<mask>": 4, "<start_of_turn>": 105, "<end_of_turn>": 106, "<start_of_image>": 255999,
                "<end_of_image>": 256000}
    for piece, token_id in expected.items():
        assert tok.piece_to_id(piece) == token_id
        assert tok.id_to_piece(token_id) == piece
    assert tok.id_to_piece(236743) == "\u2581"
    assert tok.encode("<bos>Hi", add_bos=True) == [2, 2, 10979]
    assert tok.decode([2, 105, 2364, 107, 10979, 106], skip_special_tokens=True) == "user\nHi"
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.piece_to_id("no such piece")


@pytest.mark.parametrize("bad", [b"hello", None, 42, 3.5, ["a"]], ids=lambda b: type(b).__name__)
def test_encode_rejects_non_strings(tok, bad):
    with pytest.raises(TypeError, match=f"got {type(bad).__name__}"):
        tok.encode(bad)


@pytest.mark.parametrize("bad", [-1, 262145, 10**9])
def test_decode_rejects_ids_outside_vocabulary(tok, bad):
    with pytest.raises(ValueError, match=f"token id {bad} "):
        tok.decode([2, bad])
    with pytest.raises(ValueError, match=f"token id {bad} "):
        tok.id_to_piece(bad)


def test_image_soft_token_decodes_as_the_official_tokenizer(tok, ref):
    """Processor output decodes: the soft token (262,144) is `<image_soft_token>`, and skipping special
    tokens drops it and the image markers, which the GGUF's own tokenizer keeps (REFERENCE.md)."""
    ids = [2, 105, 2364, 107] + tok.encode("Look\n\n") + [255999] + [262144] * 3 + [256000] + tok.encode("\n\nnow")
    assert tok.id_to_piece(262144) == "<image_soft_token>" and tok.piece_to_id("<image_soft_token>") == 262144
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert tok.decode(ids, skip_special_tokens=True) == "user\nLook\n\n\n\nnow"
    # a skipped token is dropped before decoding: the two bytes of "é" around it still join
    joined = [tok.piece_to_id("<0xC3>"), 255999, tok.piece_to_id("<0xA9>")]
    assert tok.decode(joined, skip_special_tokens=True) == ref.decode(joined, skip_special_tokens=True) == "é"


@pytest.mark.parametrize("bad", [1.7, 2.0, True, np.float32(3), torch.tensor(2.0), "2", None],
                         ids=lambda b: repr(b))
def test_decode_refuses_non_integer_ids(tok, bad):
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([2, bad])
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.id_to_piece(bad)


def test_decode_takes_any_integer_kind(tok):
    assert tok.decode([np.int64(2), torch.tensor(10979)]) == tok.decode(torch.tensor([2, 10979])) == "<bos>Hi"


@pytest.mark.parametrize("text, index", [("\ud800", 0), ("ok \udfff then", 3), ("\ud83d\ude00", 0)])
def test_encode_refuses_lone_surrogates(tok, text, index):
    """A surrogate code point is not a character (no UTF-8): a clear ValueError, not a pybind11 cast error."""
    with pytest.raises(ValueError, match=f"lone surrogate .* at index {index}"):
        tok.encode(text)


USER = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize("messages, error, words", [
    ([{"content": "Hi"}], ValueError, "message 0 has no 'role' key"),
    ([USER, {"role": "assistant"}], ValueError, "message 1 has no 'content' key"),
    ([{"role": "user", "content": None}], TypeError, "message 0 'content' is None"),
    ([SYSTEM, {"role": "user", "content": 42}], TypeError, "message 1 'content' is 42"),
    ([{"role": "user", "content": [{"text": "Hi"}]}], ValueError, "message 0, item 0 must be a dict with a 'type' key"),
    ([{"role": "user", "content": ["Hi"]}], ValueError, "message 0, item 0 must be a dict with a 'type' key"),
    ([SYSTEM, {"role": "user", "content": [{"type": "image"}, {"type": "text"}]}], ValueError,
     "message 1, item 1: a text item needs a string under 'text'"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}], ValueError, "message 0, item 0: a text item"),
    ([{"role": "user", "content": [{"type": "audio"}]}], ValueError, "message 0, item 0 has type 'audio'"),
    ([{"role": "system", "content": [{"type": "image"}]}, USER], ValueError, "message 0 (system)"),
    ([SYSTEM, USER, USER], ValueError, "message 2 has role 'user' where 'assistant' was expected"),
    ([{"role": None, "content": "Hi"}], ValueError, "message 0 has role None where 'user' was expected"),
    ([USER, "Hello"], TypeError, "message 1 must be a dict"),
    ("Hi", TypeError, "messages must be a list"),
])
def test_bad_chat_messages(tok, messages, error, words):
    """Each bad message gets an error naming the message, the item and the key (not a bare KeyError)."""
    for render in (render_chat, tok.apply_chat_template):
        with pytest.raises(error) as info:
            render(messages)
        assert words in str(info.value)


@pytest.mark.parametrize("pan_and_scan", [False, True])
def test_chat_with_images_matches_transformers_processor(tok, ref, pan_and_scan):
    """Image items become the image sequence where they stand (Pan&Scan crops after the original), with
    the same ids and pixels as transformers' Gemma3Processor given the official chat template."""
    wide, square = Image.new("RGB", (1200, 400), "red"), Image.new("RGB", (300, 300), "blue")
    messages = [
        SYSTEM,
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image", "image": wide},
                                     {"type": "text", "text": " with"}, {"type": "image", "image": square},
                                     {"type": "text", "text": "please. "}]},
        {"role": "assistant", "content": "Red, then blue."},
        {"role": "user", "content": [{"type": "image", "image": square}]},
    ]
    with torch.device("meta"):  # only its config is read
        model = Gemma3ForConditionalGeneration(get_config("4b"))
    ids, inputs = encode_prompt(model, tok, messages, pan_and_scan)
    theirs = HFGemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 896, "width": 896}),
                               tokenizer=ref, chat_template=GEMMA3_CHAT_TEMPLATE)
    out = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                     return_tensors="pt", processor_kwargs={"do_pan_and_scan": pan_and_scan})
    assert ids == out["input_ids"][0].tolist()
    assert inputs["pixel_values"].shape[0] == (3 + 3 if pan_and_scan else 3)  # the wide one has 3 crops
    torch.testing.assert_close(inputs["pixel_values"], out["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_matches_transformers(tok, ref, name, generation_prompt):
    messages = CONVERSATIONS[name]
    kwargs = dict(chat_template=GEMMA3_CHAT_TEMPLATE, add_generation_prompt=generation_prompt)
    assert tok.apply_chat_template(messages, generation_prompt, tokenize=False) == ref.apply_chat_template(
        messages, tokenize=False, **kwargs
    )
    assert tok.apply_chat_template(messages, generation_prompt) == ref.apply_chat_template(messages, **kwargs)[
        "input_ids"
    ]


def test_chat_template_format():
    """The format written out by hand: system folded into the first user turn, assistant -> model."""
    messages = [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render_chat(messages, add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nYou are a terse assistant. Answer in one line.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
    )
    with pytest.raises(ValueError, match="alternate"):
        render_chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.fixture(scope="module")
def small():
    return train_tokenizer(sorted((ROOT / "data" / "multilingual").glob("*.txt")), vocab_size=1000)


def test_train_tokenizer_uses_gemma_settings(small):
    assert small.vocab_size == 1000
    assert [small.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert small.encode("<start_of_turn>")[0] == small.piece_to_id("<start_of_turn>")
    # split digits: every digit is its own piece
    assert [small.id_to_piece(i) for i in small.encode("2025")] == ["2", "0", "2", "5"]
    # byte fallback: a character never seen in training becomes its UTF-8 bytes, never <unk>
    assert [small.id_to_piece(i) for i in small.encode("🫩")] == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA9>"]
    # whitespace kept as written, no dummy prefix
    for text in ["  two leading", "tab\tand\n\nnewlines   ", "🫩 x 42"]:
        assert small.decode(small.encode(text)) == text
    assert not small.id_to_piece(small.encode("the")[0]).startswith("\u2581")


def test_token_html_and_explorer(tok):
    """The notebook's picture: one box per token with its id, text escaped; the widget redraws it."""
    from gemma3_minimal.course.viz import token_html
    from gemma3_minimal.course.widgets import token_explorer

    text = "<b>1 2</b><start_of_turn>"
    page = token_html(tok, text)
    assert page.count("<span") == len(tok.encode(text)) == 6
    assert "&lt;b&gt;" in page and ">105</sub>" in page
    box, count, out = token_explorer(tok, "a").children
    box.value = text
    assert out.value == page and count.value == "6 tokens"


def test_control_pieces_must_look_like_tags():
    """encode finds control pieces in text by their `<name>` shape; other spellings are refused."""
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        train_tokenizer([ROOT / "data" / "multilingual" / "en.txt"], vocab_size=320, control_symbols=["[CLS]"])
