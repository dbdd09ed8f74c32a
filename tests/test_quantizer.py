"""The VQ-KD quantizer: EMA arithmetic, k-means init, restart, DDP sync."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from beit_plugin.models.tokenizers import quantizer as quantizer_module
from beit_plugin.models.tokenizers.quantizer import (NormEMAVectorQuantizer,
                                                     kmeans_cosine)


def make(num_embed: int = 2, dims: int = 2,
         **kwargs) -> NormEMAVectorQuantizer:
    kwargs.setdefault('kmeans_init', False)
    return NormEMAVectorQuantizer(num_embed, dims, **kwargs).train()


def set_state(q: NormEMAVectorQuantizer, weight, cluster_size):
    q.embedding.weight.copy_(torch.tensor(weight))
    q.embedding.cluster_size.copy_(torch.tensor(cluster_size))


def test_official_norm_ema_update_hand_computed():
    """The official ``norm_ema_inplace``: a used code moves by ``1 - decay``
    toward the direction of its batch mean, then is renormalised; an unused
    code keeps its value."""
    q = make(num_embed=3, decay=0.9)
    set_state(q, [[1., 0.], [0., 1.], [-1., 0.]], [5., 5., 5.])
    # (0.6, 0.8) and (0, 2) go to code 1; (3, -4) (unit (0.6, -0.8)) to 0
    z = torch.tensor([[0.6, 0.8], [0., 2.], [3., -4.]])
    _, _, ids = q(z)
    assert ids.tolist() == [1, 1, 0]
    mean1 = torch.tensor([0.3, 0.9]) / math.sqrt(0.09 + 0.81)
    code1 = 0.9 * torch.tensor([0., 1.]) + 0.1 * mean1
    code0 = 0.9 * torch.tensor([1., 0.]) + 0.1 * torch.tensor([0.6, -0.8])
    expected = torch.stack([code0 / code0.norm(), code1 / code1.norm(),
                            torch.tensor([-1., 0.])])
    assert torch.allclose(q.embedding.weight, expected, atol=1e-6)
    assert q.embedding.weight[2].tolist() == [-1., 0.]
    assert torch.allclose(q.embedding.cluster_size,
                          torch.tensor([4.6, 4.7, 4.5]))


def test_norm_ema_steps_equal_mmpretrains_quantizer():
    """Five training steps of ours and of MMPretrain's port of the official
    quantizer from the same codebook leave the same codebook."""
    from mmpretrain.models.utils.vector_quantizer import \
        NormEMAVectorQuantizer as Peer
    torch.manual_seed(0)
    peer = Peer(8, 4, beta=1., decay=0.9, kmeans_init=False).train()
    ours = make(num_embed=8, dims=4, decay=0.9)
    ours.embedding.weight.copy_(peer.embedding.weight)
    for _ in range(5):
        z = torch.randn(2, 4, 3, 3)  # (B, D, H, W), as the peer takes it
        peer(z)
        ours(z.permute(0, 2, 3, 1))
        assert torch.allclose(ours.embedding.weight, peer.embedding.weight,
                              atol=1e-6)
    assert torch.allclose(ours.embedding.cluster_size, peer.cluster_size)


def test_codes_without_vectors_keep_their_value():
    q = make(num_embed=4, dims=3, decay=0.9)
    book = q.embedding
    book.cluster_size.fill_(1.)
    before = book.weight.clone()
    z = book.weight[0] + 0.01 * torch.randn(6, 3)
    _, _, ids = q(z)
    assert (ids == 0).all()
    assert torch.equal(book.weight[1:], before[1:])
    assert not torch.equal(book.weight[0], before[0])
    assert torch.allclose(book.cluster_size,
                          torch.tensor([0.9 + 0.1 * 6, 0.9, 0.9, 0.9]))
    assert torch.allclose(book.weight.norm(dim=1), torch.ones(4))


def test_eval_forward_and_get_indices_change_nothing():
    q = make(num_embed=8, dims=4, restart_dead_codes=True)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(5, 4)
    ids = q.get_indices(z)
    q.eval()
    _, _, eval_ids = q(z)
    assert torch.equal(ids, eval_ids)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())


def test_kmeans_init_runs_once_and_survives_save_and_load(monkeypatch):
    calls = []

    def counting_kmeans(*args, **kwargs):
        calls.append(1)
        return kmeans_cosine(*args, **kwargs)

    monkeypatch.setattr(quantizer_module, 'kmeans_cosine', counting_kmeans)
    q = make(num_embed=8, dims=4, kmeans_init=True)
    assert q.embedding.initted.item() == 0
    assert torch.count_nonzero(q.embedding.weight) == 0
    for _ in range(3):
        q(torch.randn(64, 4))
    assert len(calls) == 1 and q.embedding.initted.item() == 1
    assert torch.allclose(q.embedding.weight.norm(dim=1), torch.ones(8))

    state = q.state_dict()
    assert 'embedding.initted' in state
    resumed = make(num_embed=8, dims=4, kmeans_init=True)
    resumed.load_state_dict(state)
    codebook = resumed.embedding.weight.clone()
    z = torch.randn(64, 4)
    expected_ids = F.normalize(z, dim=1).matmul(codebook.t()).argmax(1)
    _, _, ids = resumed(z)
    assert len(calls) == 1  # no second k-means after loading
    assert torch.equal(ids, expected_ids)


def test_training_steps_after_the_first_read_nothing_from_the_device(
        monkeypatch):
    """``initted`` is read (a host-device sync on a GPU) until the
    codebook is known to hold codes, and again after loading a state
    dict, which may hold an uninitialised codebook."""
    reads = []
    item = torch.Tensor.item

    def counting_item(tensor):
        reads.append(tensor.shape)
        return item(tensor)

    q = make(num_embed=8, dims=4, kmeans_init=True)
    uninitialised = {k: v.clone() for k, v in q.state_dict().items()}
    monkeypatch.setattr(torch.Tensor, 'item', counting_item)
    q(torch.randn(64, 4))
    assert len(reads) == 1  # the first step: k-means still to run?
    q(torch.randn(64, 4))
    q(torch.randn(64, 4))
    assert len(reads) == 1  # later steps: no read
    monkeypatch.setattr(torch.Tensor, 'item', item)
    q.load_state_dict(uninitialised)
    q(torch.randn(64, 4))
    assert q.embedding.initted.item() == 1  # k-means ran again
    assert torch.count_nonzero(q.embedding.weight) > 0


def test_kmeans_init_sets_the_usage_of_the_batch():
    q = make(num_embed=4, dims=2, kmeans_init=True)
    centres = F.normalize(torch.randn(4, 2), dim=1)
    z = (centres.repeat_interleave(16, 0) + 0.01 * torch.randn(64, 2))
    q(z)  # k-means, then one EMA step
    assert torch.allclose(q.embedding.cluster_size.sum(), torch.tensor(64.))


def test_kmeans_cosine_converges_to_normalised_cluster_means():
    generator = torch.Generator().manual_seed(0)
    samples = F.normalize(
        torch.eye(4).repeat_interleave(20, 0) + 0.05 * torch.randn(80, 4),
        dim=1)
    means, counts = kmeans_cosine(samples, 4, 10, generator=generator)
    assert torch.allclose(means.norm(dim=1), torch.ones(4))
    # a fixed point: the counts are the assignment to these centres, and
    # each used centre is the normalised mean of its samples
    assign = (samples @ means.t()).argmax(1)
    assert torch.equal(counts, torch.bincount(assign, minlength=4).float())
    for k in range(4):
        if counts[k] > 0:
            expected = F.normalize(samples[assign == k].sum(0), dim=0)
            assert torch.allclose(means[k], expected, atol=1e-6)


def test_straight_through_gradient_and_commitment_loss():
    q = make(num_embed=16, dims=8, beta=0.25)
    z = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(10, 8)
    quantized, loss, _ = q(z)
    # the gradient is that of normalise(z): the quantization is skipped
    (grad, ) = torch.autograd.grad((quantized * weight).sum(), z,
                                   retain_graph=True)
    z_ref = z.detach().clone().requires_grad_(True)
    (expected, ) = torch.autograd.grad(
        (F.normalize(z_ref, dim=1) * weight).sum(), z_ref)
    assert torch.allclose(grad, expected)
    codes = quantized.detach()  # the (pre-update) codes
    normalised = F.normalize(z.detach(), dim=1)
    assert torch.allclose(loss, 0.25 * F.mse_loss(codes, normalised))


def test_straight_through_forward_value_is_the_code():
    q = make(num_embed=16, dims=8).eval()
    z = torch.randn(10, 8)
    quantized, _, ids = q(z)
    assert torch.allclose(quantized, q.embedding.weight[ids], atol=1e-6)


def test_dead_code_restart_reseeds_only_dead_codes():
    q = make(num_embed=8, dims=4, decay=0.99, restart_dead_codes=True,
             dead_code_threshold=0.1)
    book = q.embedding
    book.cluster_size.copy_(torch.tensor([10.] * 5 + [0.] * 3))
    before = book.weight.clone()
    # inputs near live codes 0..4 only
    z = book.weight[:5].repeat(4, 1) + 1e-3 * torch.randn(20, 4)
    q(z)
    normalised = F.normalize(z, dim=1)
    for k in range(5, 8):
        assert not torch.equal(book.weight[k], before[k])
        # re-seeded with one of this batch's normalised vectors
        assert (normalised - book.weight[k]).norm(dim=1).min() < 1e-6
    assert (book.cluster_size[5:] > 0.1 * book.cluster_size.mean()).all()

    off = make(num_embed=8, dims=4, decay=0.99)
    off.embedding.weight.copy_(before)
    off.embedding.cluster_size.copy_(torch.tensor([10.] * 5 + [0.] * 3))
    off(z)
    assert torch.equal(off.embedding.weight[5:], before[5:])


def test_dead_codes_restart_where_the_codebook_fits_worst():
    """Seeds are drawn by quantization error: with 20 vectors exactly on
    live codes and 3 far from every code, the 3 dead codes get the 3 far
    ones (each drawn with odds of about 1e6 to 1)."""
    q = make(num_embed=8, dims=8, restart_dead_codes=True)
    basis = torch.eye(8)
    q.embedding.weight.copy_(torch.cat([basis[:5], -basis[:3]]))
    q.embedding.cluster_size.copy_(torch.tensor([10.] * 5 + [0.] * 3))
    outliers = basis[5:]
    q(torch.cat([basis[:5].repeat(4, 1), outliers]))
    seeds = q.embedding.weight[5:]
    assert torch.equal(seeds[seeds.argmax(1).argsort()], outliers)


# --------------------------------------------------------------------------
# torch.distributed: two gloo processes on the CPU
# --------------------------------------------------------------------------


def _batches(rank: int, steps: int = 2):
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(32, 4, generator=generator) for _ in range(steps)]


def _run_rank(rank: int, world_size: int, init_file: str, out_dir: str,
              settings: dict) -> None:
    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank,
        world_size=world_size)
    try:
        for name, options in settings.items():
            torch.manual_seed(0)  # same initial codebook on every rank
            q = NormEMAVectorQuantizer(16, 4, **options).train()
            torch.manual_seed(rank)  # different restart picks on each rank
            for z in _batches(rank):
                q(z)
            torch.save(q.state_dict(),
                       os.path.join(out_dir, f'{name}_{rank}.pth'))
    finally:
        dist.destroy_process_group()


def _single_process(options: dict, batches):
    torch.manual_seed(0)
    q = NormEMAVectorQuantizer(16, 4, **options).train()
    for z in batches:
        q(z)
    return q.state_dict()


@pytest.mark.slow
def test_distributed_ranks_share_one_codebook(tmp_path):
    """Two ranks with different batches end with identical codebooks and
    EMA statistics: without k-means, equal to one process on both ranks'
    data; with k-means init and dead-code restart, still identical."""
    settings = {
        'plain': dict(kmeans_init=False),
        'kmeans_restart': dict(kmeans_init=True, restart_dead_codes=True,
                               dead_code_threshold=0.5),
    }
    mp.spawn(
        _run_rank,
        args=(2, str(tmp_path / 'init'), str(tmp_path), settings),
        nprocs=2,
        join=True)
    for name, options in settings.items():
        states = [torch.load(tmp_path / f'{name}_{r}.pth', weights_only=True)
                  for r in range(2)]
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), (name, key)
        if name == 'plain':
            both = [torch.cat(pair) for pair in zip(_batches(0), _batches(1))]
            joint = _single_process(options, both)
            only_rank0 = _single_process(options, _batches(0))
            for key in ('embedding.weight', 'embedding.cluster_size'):
                assert torch.allclose(states[0][key], joint[key], atol=1e-5)
            assert not torch.allclose(states[0]['embedding.cluster_size'],
                                      only_rank0['embedding.cluster_size'])
