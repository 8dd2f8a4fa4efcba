"""The teacher store: exact round trips of both targets, its size, and every damaged or edited file refused."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gemma3_minimal.distill import TARGETS, distill, sample_teacher_targets, sparse_cross_entropy, tokens_sha256
from gemma3_minimal.teacher_store import (
    StoreError,
    TeacherStore,
    cache_teacher_logits,
    full_distribution_bytes,
    store_sha256,
)
from stub_models import Bigram


def saved_store(tmp_path, target="renormalized"):
    data = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "teacher.safetensors"
    TeacherStore.build(Bigram(32), data, 8, torch.Generator().manual_seed(0), target=target).save(path)
    with safe_open(path, framework="pt") as f:
        header = f.metadata()
    return path, load_file(path), header


def resave(path, tensors, header):
    """Write a store whose sha256 matches its (edited) header and tensors: only the consistency checks remain."""
    header = {k: v for k, v in header.items() if k != "content_sha256"}
    save_file(tensors, path, metadata={**header, "content_sha256": store_sha256(header, tensors)})


@pytest.mark.parametrize("target", TARGETS)
def test_store_round_trips_exactly_and_records_its_target(tmp_path, target):
    data = torch.randint(0, 64, (6, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    teacher = Bigram(64, 2.0)
    store = TeacherStore.build(teacher, data, 256, torch.Generator().manual_seed(1), batch_size=4, target=target)
    store.save(tmp_path / "teacher.safetensors")
    loaded = TeacherStore.load(tmp_path / "teacher.safetensors")
    assert torch.equal(loaded.ids, store.ids) and torch.equal(loaded.weights, store.weights)
    assert torch.equal(loaded.counts, store.counts)
    assert (loaded.vocab_size, loaded.num_samples, loaded.data_sha256) == (64, 256, tokens_sha256(data))
    assert loaded.target == store.target == target
    # float32 weights: the stored target is the sampled one, exactly (cut to the widest token)
    with torch.no_grad():
        ids, weights = sample_teacher_targets(teacher(data), 256, torch.Generator().manual_seed(1), target)
    width = loaded.ids.shape[-1]
    assert width == int(store.counts.max()) < 256 and not bool(weights[..., width:].any())
    assert torch.equal(loaded.ids.long(), ids[..., :width]) and torch.equal(loaded.weights, weights[..., :width])


def test_store_is_500x_smaller_than_full_float16_distributions(tmp_path):
    """A Zipf-shaped teacher over the real vocabulary, p_r ~ r^-1.2 (entropy 5.75 nats, broader than a
    trained LM's typical next-token distribution): its 256 draws hit about 123 distinct ids."""
    V, k, tokens = 262_144, 256, 64
    logits = (-1.2 * torch.arange(1, V + 1).double().log()).float().expand(1, tokens, V)
    ids, weights = sample_teacher_targets(logits, k, torch.Generator().manual_seed(0))
    store = TeacherStore(ids.int(), weights, V, k, "zipf")
    distinct = int(store.counts.sum())
    assert store.payload_bytes == tokens * 4 + distinct * 8
    store.save(tmp_path / "zipf.safetensors")
    file_bytes = (tmp_path / "zipf.safetensors").stat().st_size
    assert store.payload_bytes < file_bytes < store.payload_bytes + 1024  # the header is small
    assert full_distribution_bytes(V) == 524_288
    assert full_distribution_bytes(V) * store.num_tokens / file_bytes >= 500


def test_corrupt_store_files_raise_store_error(tmp_path):
    path, _, _ = saved_store(tmp_path)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-3] ^= 1
    cases = {
        "truncated": (good[:-10], "not a readable"),
        "header only": (good[:40], "not a readable"),
        "empty": (b"", "not a readable"),
        "flipped byte": (bytes(flipped), "corrupt"),
        "foreign": (good.replace(b"teacher_store", b"teacher_stork"), "not a gemma3"),
    }
    for name, (content, message) in cases.items():
        path.write_bytes(content)
        with pytest.raises(StoreError, match=message):
            TeacherStore.load(path)
    with pytest.raises(StoreError, match="not a readable"):
        TeacherStore.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("key, value", [
    ("shape", "[5, 2]"), ("num_samples", "9"), ("data_sha256", "0" * 64), ("target", "counts"),
    ("vocab_size", "33"), ("num_samples", str(10**11)),
])
def test_an_edited_header_field_fails_the_content_check(tmp_path, key, value):
    """Every header field is under the sha256: an edit that still fits the tensors is caught too."""
    path, tensors, header = saved_store(tmp_path)
    save_file(tensors, path, metadata={**header, key: value})
    with pytest.raises(StoreError, match="corrupt: its header or content does not match"):
        TeacherStore.load(path)


def test_headers_that_do_not_fit_the_content_raise_store_error(tmp_path):
    """With a matching sha256 (a deliberate edit), each header value must still agree with the tensors."""
    path, tensors, header = saved_store(tmp_path)
    cases = {
        "shape": ("[3, 5]", "do not fit"),
        "num_samples": ("0", "malformed"),
        "vocab_size": ("ten", "malformed"),
        "target": ("count", "malformed"),
    }
    for key, (value, message) in cases.items():
        resave(path, tensors, {**header, key: value})
        with pytest.raises(StoreError, match=message):
            TeacherStore.load(path)
    del header["target"]
    resave(path, tensors, header)
    with pytest.raises(StoreError, match="malformed header: 'target'"):
        TeacherStore.load(path)


def test_header_sizes_are_bounded_by_the_file(tmp_path):
    """A huge num_samples or shape allocates nothing: sizes come from the tensors in the file."""
    path, tensors, header = saved_store(tmp_path)
    resave(path, tensors, {**header, "shape": json.dumps([10**6, 10**6])})
    with pytest.raises(StoreError, match="do not fit"):
        TeacherStore.load(path)
    resave(path, tensors, {**header, "num_samples": str(10**11)})  # once 800 GB of zeros before any check
    loaded = TeacherStore.load(path)
    assert loaded.num_samples == 10**11 and loaded.ids.shape[-1] == int(loaded.counts.max()) <= 8


def test_other_store_versions_are_refused_clearly(tmp_path):
    path, tensors, header = saved_store(tmp_path)
    save_file(tensors, path, metadata={**header, "version": "1"})
    with pytest.raises(StoreError, match="version 1 teacher store.*rebuild it with TeacherStore.build"):
        TeacherStore.load(path)
    resave(path, tensors, {**header, "version": "3"})
    with pytest.raises(StoreError, match="version '3'"):
        TeacherStore.load(path)


def test_store_tensors_must_be_consistent(tmp_path):
    path, tensors, header = saved_store(tmp_path)
    ids = tensors["ids"].clone()
    ids[0] = 40  # outside the 32-entry vocabulary, with a matching sha256
    resave(path, {**tensors, "ids": ids}, header)
    with pytest.raises(StoreError, match=r"\[0, 32\)"):
        TeacherStore.load(path)
    weights = tensors["weights"].clone()
    weights[0] *= 2  # the first token's target no longer sums to 1
    resave(path, {**tensors, "weights": weights}, header)
    with pytest.raises(StoreError, match="sum to 1"):
        TeacherStore.load(path)
    resave(path, {**tensors, "weights": tensors["weights"].half()}, header)
    with pytest.raises(StoreError, match="do not fit"):
        TeacherStore.load(path)


def test_store_must_fit_data_and_student():
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (4, 5), generator=g)
    store = TeacherStore.build(Bigram(32), data, 8, g)
    with pytest.raises(ValueError, match="other data"):
        distill(Bigram(32), store, data.flip(0), 1, progress=False)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        distill(Bigram(40), store, data, 1, progress=False)
    with pytest.raises(ValueError, match="holds the 'renormalized' target, not 'counts'"):
        distill(Bigram(32), store, data, 1, target="counts", progress=False)
    with pytest.raises(StoreError, match="padding last"):
        TeacherStore(store.ids, store.weights.flip(-1), 32, 8, store.data_sha256)
    with pytest.raises(ValueError, match="target must be"):
        TeacherStore.build(Bigram(32), data, 8, target="count")


@pytest.mark.parametrize("target", TARGETS)
def test_distill_first_step_uses_the_stored_targets(target):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 32, (6, 5), generator=g)
    store = TeacherStore.build(Bigram(32, 2.0), data, 16, g, target=target)
    torch.manual_seed(0)
    student = Bigram(32)
    before = copy.deepcopy(student)
    history = distill(student, store, data, 2, batch_size=4, progress=False)
    assert history.loss[0] == sparse_cross_entropy(before(data[:4]), *store.targets(torch.arange(4))).item()
    torch.manual_seed(0)
    assert distill(Bigram(32), store, data, 2, batch_size=4, target=target, progress=False).loss == history.loss


def test_cached_teacher_logits_give_the_same_training_and_store():
    data = torch.randint(0, 32, (5, 6), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    teacher = Bigram(32, 2.0)
    cached = cache_teacher_logits(teacher, data, batch_size=2, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(cached, teacher(data))
    runs = []
    for target in (teacher, cached):
        torch.manual_seed(1)
        runs.append(distill(Bigram(32), target, data, 4, batch_size=2, num_samples=None, progress=False).loss)
    assert runs[0] == runs[1]
    stores = [TeacherStore.build(t, data, 16, torch.Generator().manual_seed(2), batch_size=2) for t in (teacher, cached)]
    assert torch.equal(stores[0].ids, stores[1].ids) and torch.equal(stores[0].weights, stores[1].weights)
    with pytest.raises(ValueError, match="do not cover"):
        distill(Bigram(32), cached[:4], data, 1, progress=False)
    with pytest.raises(ValueError, match="do not cover"):
        TeacherStore.build(cached[:, :5], data)
