"""Gemma 3's tokenizer: a SentencePiece BPE model with 262,144 pieces, rebuilt from the GGUF file.

The GGUF stores every piece with its score and type. We write them into a SentencePiece
`ModelProto` with Gemma's settings (BPE, byte fallback, digits split one by one, whitespace kept
as it is, no dummy prefix), cache the `.model` file and let `sentencepiece` encode. Three details
make the ids equal to transformers' tokenizer loaded from the same file:

- the GGUF writes the whitespace-run pieces with plain spaces; SentencePiece expects `▁` (U+2581),
  and they merge like ordinary pieces;
- merges follow the order of the pieces in the file, not the scores stored there;
- SentencePiece never reads a control piece (`<start_of_turn>`, `<bos>`, ...) out of text, so
  `encode` splits them out first and maps each to its single id.
"""

from __future__ import annotations

import hashlib
import operator
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from .assets import cache_dir, expected_sha256, gguf_path, sha256_file, write_atomically

# GGUF token types (llama.cpp) -> SentencePiece piece types; both number them the same way.
_NORMAL, _UNKNOWN, _USER_DEFINED = 1, 2, 4
# Every control piece looks like `<name>`: one cheap regex finds candidates, a dict confirms them.
_CONTROL_CANDIDATE = re.compile(r"<[^<>]+>")
_SPACE = "\u2581"  # SentencePiece's visible space
# The official tokenizer (transformers' Gemma 3 conversion) adds `<image_soft_token>` after the
# SentencePiece pieces (id 262,144: Gemma3Processor's placeholder in input_ids) and counts it and
# the image markers as special tokens; the GGUF has the markers as plain user-defined pieces.
_IMAGE_TOKEN, _IMAGE_MARKERS = "<image_soft_token>", ("<start_of_image>", "<end_of_image>")
_BUILD_VERSION = 1  # part of the cached file's name: bump it whenever build_model_proto changes


def build_model_proto(gguf_file: str | Path) -> bytes:
    """Serialize a SentencePiece `ModelProto` holding the GGUF's vocabulary.

    Example: `spm.SentencePieceProcessor(model_proto=build_model_proto(gguf_path()))`.
    """
    fields = gguf.GGUFReader(gguf_file).fields
    pieces = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    unk_id = int(fields["tokenizer.ggml.unknown_token_id"].contents())

    proto = sp_pb2.ModelProto()
    for i, (p, t) in enumerate(zip(pieces.data, types.data)):
        piece = proto.pieces.add()
        text = bytes(pieces.parts[p]).decode("utf-8")
        kind = int(types.parts[t][0])
        if kind == _USER_DEFINED and set(text) == {" "}:
            # A run of spaces: SentencePiece spells it with `▁` and must merge it like any piece
            # (as a user-defined piece it would be matched whole, greedily, and ids would differ).
            text, kind = text.replace(" ", _SPACE), _NORMAL
        piece.piece = text
        # BPE merges the adjacent pair whose result scores highest. Gemma's merge order is the
        # order of the file, not its stored scores (transformers' converter found the same).
        piece.score = -i
        # SentencePiece needs exactly one UNKNOWN piece; the GGUF marks `<unk>` as control.
        piece.type = _UNKNOWN if i == unk_id else kind

    trainer = proto.trainer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(proto.pieces)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.pad_id = int(fields["tokenizer.ggml.padding_token_id"].contents())
    trainer.eos_id = int(fields["tokenizer.ggml.eos_token_id"].contents())
    trainer.bos_id = int(fields["tokenizer.ggml.bos_token_id"].contents())
    trainer.unk_id = unk_id
    for name in ("pad", "eos", "bos", "unk"):
        setattr(trainer, f"{name}_piece", proto.pieces[getattr(trainer, f"{name}_id")].piece)
    # Gemma keeps text as written: no normalization, no leading space, whitespace not folded.
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    return proto.SerializeToString()


def model_file() -> Path:
    """The cached `.model` file, built once from the verified GGUF (its name carries the GGUF's sha256).

    A sidecar `<name>.sha256` records the sha256 of the file written; a file that no longer matches
    it (truncated, edited) is rebuilt from the GGUF with a warning that names it.
    """
    target = cache_dir() / f"gemma3_tokenizer_{expected_sha256()[:16]}_v{_BUILD_VERSION}.model"
    checksum = target.with_name(target.name + ".sha256")
    if target.exists():
        recorded = checksum.read_text().strip() if checksum.is_file() else None
        if recorded is not None and sha256_file(target) == recorded:
            return target
        problem = "has no recorded sha256" if recorded is None else "does not match the sha256 recorded when it was written"
        warnings.warn(f"tokenizer cache {target} {problem}; rebuilding it from the verified GGUF", stacklevel=2)
    data = build_model_proto(gguf_path())
    # Each file is written beside its target, then renamed: a racing process never reads half a file.
    write_atomically(checksum, lambda partial: partial.write_text(hashlib.sha256(data).hexdigest() + "\n"))
    write_atomically(target, lambda partial: partial.write_bytes(data))
    return target


class Gemma3Tokenizer:
    """Text <-> token ids with Gemma 3's vocabulary; control pieces written in text become one id.

    Example: `Gemma3Tokenizer.from_pretrained().encode("Hello world")` -> `[9259, 1902]`.
    """

    def __init__(self, model: str | Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model))
        n = self.sp.get_piece_size()
        self.special_ids = {i: self.sp.id_to_piece(i) for i in range(n) if self.sp.is_control(i)}
        self.special_ids[self.sp.unk_id()] = self.sp.id_to_piece(self.sp.unk_id())
        self._special_by_piece = {p: i for i, p in self.special_ids.items()}
        odd = [p for p in self._special_by_piece if not _CONTROL_CANDIDATE.fullmatch(p)]
        if odd:
            raise ValueError(f"control pieces must be written <name> so encode can find them in text: {odd}")
        markers = [self.sp.piece_to_id(p) for p in _IMAGE_MARKERS]
        has_images = all(self.sp.id_to_piece(i) == p for i, p in zip(markers, _IMAGE_MARKERS))
        self.added_ids = {n: _IMAGE_TOKEN} if has_images else {}  # after the pieces, as in the official tokenizer
        self._added_by_piece = {p: i for i, p in self.added_ids.items()}
        self._written = {**self.special_ids, **self.added_ids}  # decode writes these out one by one
        self._skipped = {*self._written, *(markers if has_images else [])}  # skip_special_tokens drops these

    @classmethod
    def from_pretrained(cls) -> Gemma3Tokenizer:
        """The real Gemma 3 tokenizer, from the 270M GGUF; no network.

        Example: `tok = Gemma3Tokenizer.from_pretrained()`.
        """
        return cls(model_file())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, `▁` for a space. Example: `id_to_piece(9259)` -> `'Hello'`."""
        token_id = self._check_id(token_id)
        return self.added_ids.get(token_id) or self.sp.id_to_piece(token_id)

    def piece_to_id(self, piece: str) -> int:
        """The id of a vocabulary entry. Example: `piece_to_id('<start_of_turn>')` -> `105`."""
        if piece in self._added_by_piece:
            return self._added_by_piece[piece]
        token_id = self.sp.piece_to_id(piece)
        if token_id == self.unk_id and piece != self.sp.id_to_piece(self.unk_id):
            raise KeyError(f"{piece!r} is not in the vocabulary")
        return token_id

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`. Example: `encode("<bos>Hi")` -> `[2, 10979]`."""
        if not isinstance(text, str):
            hint = "; decode bytes to str first" if isinstance(text, (bytes, bytearray)) else ""
            raise TypeError(f"encode expects a str, got {type(text).__name__}: {text!r:.80}{hint}")
        _check_utf8(text)
        ids = [self.bos_id] if add_bos else []
        start = 0
        if "<" in text:
            for m in _CONTROL_CANDIDATE.finditer(text):
                special = self._special_by_piece.get(m.group())
                if special is not None:
                    ids += self.sp.encode(text[start : m.start()]) if m.start() > start else []
                    ids.append(special)
                    start = m.end()
        if start < len(text):
            ids += self.sp.encode(text[start:])
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids; control pieces are written out unless skipped.

        Example: `decode([2, 10979])` -> `'<bos>Hi'`; with `skip_special_tokens=True` -> `'Hi'`.
        As the official tokenizer does, the image soft token (262,144, which only Gemma3Processor
        writes) decodes to `<image_soft_token>`, and skipping drops it and the image markers too.
        """
        parts: list[str] = []
        run: list[int] = []
        for token_id in ids:
            token_id = self._check_id(token_id)
            if skip_special_tokens and token_id in self._skipped:
                continue  # dropped before decoding: byte pieces on either side join, as in transformers
            if token_id in self._written:
                parts.append(self.sp.decode(run))
                run = []
                parts.append(self._written[token_id])
            else:
                run.append(token_id)
        parts.append(self.sp.decode(run))
        return "".join(parts)

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, tokenize: bool = True
    ) -> list[int] | str:
        """Gemma 3's chat format as ids (or text with `tokenize=False`).

        `<bos><start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>\\n<start_of_turn>model\\n...`:
        a system message is folded into the first user turn, `assistant` is written `model`, and
        each turn's text is stripped, exactly as the template shipped with Gemma 3's instruction
        models. Example: `apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)`.
        """
        text = render_chat(messages, add_generation_prompt)
        return self.encode(text) if tokenize else text

    def __len__(self) -> int:
        return self.vocab_size

    def _check_id(self, token_id: int) -> int:
        """An int id of a piece (or of the image soft token); floats and bools are refused, not truncated."""
        try:
            index = None if isinstance(token_id, bool) else operator.index(token_id)  # ints, numpy ints, int tensors
        except TypeError:
            index = None
        if index is None:
            raise TypeError(f"token ids must be integers, got {token_id!r} ({type(token_id).__name__})")
        token_id = index
        if not 0 <= token_id < self.vocab_size and token_id not in self.added_ids:
            extra = f" or the image soft token {next(iter(self.added_ids))}" if self.added_ids else ""
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size}){extra}")
        return token_id


def _check_utf8(text: str) -> None:
    """Refuse lone surrogates (e.g. '\\ud800' from a broken decode): they are not characters and have no UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text holds a lone surrogate {text[e.start]!r} at index {e.start}, which is not a character and "
            "cannot be encoded as UTF-8; fix the source text (e.g. decode its bytes with errors='replace')"
        ) from None


def check_messages(messages: Sequence[dict]) -> None:
    """Raise a clear error, naming the message, item and key, for chat messages the template cannot read.

    A message is `{"role": ..., "content": str | [items]}`, an item `{"type": "text", "text": str}` or
    `{"type": "image", ...}`; an optional system message comes first (a string or one text item), then
    roles alternate user/assistant/user/...
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                        f"got {type(messages).__name__}")
    system = bool(messages) and isinstance(messages[0], Mapping) and messages[0].get("role") == "system"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"message {i} has no {key!r} key; write {{'role': 'user', 'content': 'Hi'}}")
        expected = "user" if (i - system) % 2 == 0 else "assistant"
        if message["role"] != expected and not (i == 0 and system):
            raise ValueError(f"message {i} has role {message['role']!r} where {expected!r} was expected; after an "
                             "optional system message, roles must alternate user/assistant/user/...")
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise TypeError(f"message {i} 'content' is {content!r:.40}; give a string or a list of "
                            "{'type': 'text', 'text': ...} / {'type': 'image', ...} items")
        for j, item in enumerate(content):
            if not isinstance(item, Mapping) or "type" not in item:
                raise ValueError(f"message {i}, item {j} must be a dict with a 'type' key ('text' or 'image'), "
                                 f"got {item!r:.60}")
            if item["type"] == "text" and not isinstance(item.get("text"), str):
                raise ValueError(f"message {i}, item {j}: a text item needs a string under 'text', got {item!r:.60}")
            if item["type"] not in ("text", "image"):
                raise ValueError(f"message {i}, item {j} has type {item['type']!r}; "
                                 "Gemma 3 reads 'text' and 'image' items")
        if i == 0 and system and (len(content) != 1 or content[0]["type"] != "text"):
            raise ValueError("message 0 (system): Gemma 3's template keeps only the text of its first item; give a "
                             "string or one text item (images go in a user message)")


def _content_text(content: str | Sequence[dict]) -> str:
    """A turn's text: a string, or a list of `{"type": "text"|"image", ...}` items."""
    if isinstance(content, str):
        return content.strip()
    parts = []
    for item in content:
        if item["type"] == "image":
            parts.append("<start_of_image>")
        elif item["type"] == "text":
            parts.append(item["text"].strip())
    return "".join(parts)


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """Gemma 3's chat template as plain Python. Example: `render_chat([{"role": "user", "content": "Hi"}])`
    -> `'<bos><start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\n'`.
    """
    check_messages(messages)  # clear errors for missing keys, wrong types and roles out of turn
    prefix = ""
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"]
        prefix = (system if isinstance(system, str) else system[0]["text"]) + "\n\n"
        messages = messages[1:]
    out = ["<bos>"]
    for i, message in enumerate(messages):
        role = "model" if message["role"] == "assistant" else "user"
        out.append(f"<start_of_turn>{role}\n{prefix if i == 0 else ''}")
        out.append(f"{_content_text(message['content'])}<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


def train_tokenizer(
    files: Sequence[str | Path],
    vocab_size: int,
    model_prefix: str | Path | None = None,
    control_symbols: Sequence[str] = ("<mask>", "<start_of_turn>", "<end_of_turn>"),
    **options,
) -> Gemma3Tokenizer:
    """Train a small SentencePiece BPE tokenizer with Gemma's trainer settings.

    Gemma's choices: BPE, digits split one by one, byte fallback (no `<unk>` ever), whitespace kept
    (no dummy prefix, runs not folded, whitespace-only pieces allowed), identity normalization,
    ids pad 0 / eos 1 / bos 2 / unk 3, then `control_symbols`. `model_prefix` keeps the `.model` and
    `.vocab` files (default: a temporary folder); `options` override any `SentencePieceTrainer` setting.
    Example: `train_tokenizer(["data/corpus.txt"], vocab_size=1000).encode("hello")`.
    """
    settings = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        split_digits=True,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        character_coverage=1.0,  # small corpora: every character seen gets a piece
        max_sentence_length=1 << 16,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        control_symbols=list(control_symbols),
        num_threads=1,  # the same merges on every run
        minloglevel=2,
    )
    settings.update(options)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(model_prefix) if model_prefix is not None else Path(tmp) / "tokenizer"
        spm.SentencePieceTrainer.train(input=[str(f) for f in files], model_prefix=str(prefix), **settings)
        return Gemma3Tokenizer(f"{prefix}.model")
