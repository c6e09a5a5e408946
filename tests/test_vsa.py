"""VSA algebra: exact on tiny vectors, recall at 1024 dimensions, and the item memory."""

from __future__ import annotations

import pytest
import torch

from dsvsa.vsa import (
    ItemMemory,
    bind,
    bundle,
    cleanup,
    cosine_similarity,
    max_abs_cosine,
    random_hypervectors,
    unbind,
)


def test_bind_is_elementwise_product():
    a = torch.tensor([1.0, -1.0, 1.0, -1.0])
    b = torch.tensor([0.5, 2.0, -3.0, 0.0])
    assert bind(a, b).tolist() == [0.5, -2.0, -3.0, -0.0]
    assert torch.equal(bind(a, b), bind(b, a))


def test_unbind_bipolar_is_exact_and_equals_bind():
    g = torch.Generator().manual_seed(1)
    r = random_hypervectors(1, 16, g)[0]
    x = torch.randn(16, generator=g)
    assert torch.equal(unbind(bind(x, r), r), x)
    assert torch.equal(unbind(bind(x, r), r, mode="self"), x)
    assert torch.equal(unbind(x, r), bind(x, r))


def test_unbind_gaussian_inverse_and_self():
    key = torch.tensor([2.0, -0.5, 4.0, 0.0])
    x = torch.tensor([1.0, 3.0, -2.0, 5.0])
    # the inverse undoes binding wherever the key is non-zero and gives 0 where it is zero
    assert unbind(bind(x, key), key).tolist() == [1.0, 3.0, -2.0, 0.0]
    assert unbind(bind(x, key), key, mode="self").tolist() == [4.0, 0.75, -32.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        unbind(x, key, mode="transpose")


def test_bundle_sums_along_dim():
    xs = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.0, 1.0])]
    assert bundle(xs).tolist() == [4.0, 2.0]
    stacked = torch.stack(xs, dim=1)  # (2, 3)
    assert bundle(stacked, dim=1).tolist() == [4.0, 2.0]
    with pytest.raises(ValueError):
        bundle([])


def test_cosine_similarity_and_cleanup():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([1.0, 1.0])
    assert torch.allclose(cosine_similarity(a, b), torch.tensor([0.5**0.5, 0.5**0.5]))
    book = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    idx, sim = cleanup(torch.tensor([0.0, 0.2, -3.0]), book)
    assert idx.shape == () and int(idx) == 2 and sim > 0.99
    idx, sim = cleanup(torch.tensor([[5.0, 0.1, 0.0], [0.0, 0.0, -0.1]]), book)
    assert idx.tolist() == [0, 2] and sim.shape == (2,)
    with pytest.raises(ValueError, match="codebook"):
        cleanup(torch.zeros(4), book)


@pytest.mark.parametrize("kind", ["bipolar", "gaussian"])
def test_recall_from_bundle_of_five_bound_pairs(kind):
    """Unbinding role k from sum_k role_k * item_(c_k) and cleaning up recovers c_k."""
    d, n_items, trials = 1024, 64, 200
    g = torch.Generator().manual_seed(7)
    roles = random_hypervectors(5, d, g, kind)
    items = random_hypervectors(n_items, d, g, "gaussian")
    choice = torch.randint(0, n_items, (trials, 5), generator=g)
    bundled = bundle(bind(roles[None], items[choice]), dim=1)  # (trials, d)
    mode = "inverse" if kind == "bipolar" else "self"
    hits = 0
    for k in range(5):
        idx, _ = cleanup(unbind(bundled, roles[k], mode=mode), items)
        hits += int((idx == choice[:, k]).sum())
    assert hits / (5 * trials) >= 0.99


def test_item_memory_vectors_are_distinct_bipolar_and_seeded():
    memory = ItemMemory(1024, seed=0)
    v = memory.vectors
    assert v.shape == (7, 1024) and v.dtype == torch.float32
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert max_abs_cosine(v) < 0.2
    assert torch.equal(memory.feature_roles, v[:5]) and torch.equal(memory.object_roles, v[5:])
    assert torch.equal(ItemMemory(1024, seed=0).vectors, v)
    assert not torch.equal(ItemMemory(1024, seed=1).vectors, v)
    # a buffer, saved in the state dict, never a trainable parameter
    assert list(memory.state_dict()) == ["vectors"] and list(memory.parameters()) == []


def test_item_memory_gaussian_and_small_dims():
    memory = ItemMemory(1024, seed=3, kind="gaussian")
    assert max_abs_cosine(memory.vectors) < 0.2
    assert abs(float(memory.vectors.square().mean()) - 1.0) < 0.05
    small = ItemMemory(8, seed=0)
    assert max_abs_cosine(small.vectors) < 1.0 - 1e-6  # no two equal or opposite rows
    with pytest.raises(ValueError, match="kind"):
        ItemMemory(64, kind="ternary")


def test_item_memory_loaded_buffer_wins():
    stored = ItemMemory(256, seed=5).state_dict()
    fresh = ItemMemory(256, seed=0)
    fresh.load_state_dict(stored)
    assert torch.equal(fresh.vectors, stored["vectors"])
