"""Gemma3Tokenizer against transformers' tokenizer loaded from the same GGUF, plus train_tokenizer."""

import json
import random
import unicodedata
from pathlib import Path

import pytest

from gemma3_minimal.tokenizer import Gemma3Tokenizer, render_chat, train_tokenizer
from gemma3_minimal.assets import gguf_path

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


@pytest.fixture(scope="module")
def ref():
    """transformers' Gemma tokenizer read from the same GGUF: loaded once, it takes ~15 s."""
    from transformers import AutoTokenizer

    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


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
        ids += [rng.choice([0, 1, 2, 3, 4, 105, 106, 255999, 256000])]
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


@pytest.mark.parametrize("bad", [-1, 262144, 10**9])
def test_decode_rejects_ids_outside_vocabulary(tok, bad):
    with pytest.raises(ValueError, match=f"token id {bad} "):
        tok.decode([2, bad])
    with pytest.raises(ValueError, match=f"token id {bad} "):
        tok.id_to_piece(bad)


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
