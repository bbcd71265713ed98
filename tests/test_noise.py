"""The perturbations are N(0, σ²) elementwise, mirrored pairs are exact negatives,
groups are independent, and the noise is a pure function of (seed, generation, group, slot).

Statistical tests use fixed seeds; the false-alarm rate of each is stated (for a correct sampler).
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import member_deltas

import flipes
from flipes.noise import rademacher, sample_dense, sample_slot, sign_table, stream_seed

SIGMA = 0.05


def ks_normal(x: torch.Tensor) -> float:
    """Kolmogorov–Smirnov distance between the sample and N(0, 1)."""
    x = x.flatten().double().sort().values
    n = len(x)
    cdf = torch.special.ndtr(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())


def ks_critical(n: int, alpha: float) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)  # asymptotic one-sample KS bound


def sample(groups: int = 4, mirrored: bool = True, generation: int = 0, popsize: int = 16, **kw):
    layer = flipes.nn.FlipoutLinear(64, 128)
    es = flipes.FlipES(layer, popsize=popsize, sigma=SIGMA, seed=kw.get("seed", 0), groups=groups, mirrored=mirrored)
    es.generation = generation
    with es.population():
        noise = layer.noise[0]
    return noise, member_deltas(noise, (128, 64)) / SIGMA


def test_each_member_perturbation_is_standard_normal() -> None:
    """Each of 16 members' weight perturbations u_n = δ_n/σ (8192 entries) passes a KS test against N(0, 1) at α =
    1e-4, with its mean within 4.5 standard errors of 0 and variance within 4.5·√(2/n) of 1; one member per mirrored
    pair's bias noise passes the KS test too (family-wise false alarm < 2e-3)."""
    noise, u = sample(groups=4, mirrored=True)
    alpha = 1e-4  # per member; 16 members + 1 bias test -> family-wise false alarm < 2e-3
    for n in range(16):
        d = ks_normal(u[n])
        assert d < ks_critical(u[n].numel(), alpha), f"member {n}: KS distance {d:.4f}"
        assert abs(u[n].mean().item()) < 4.5 / math.sqrt(u[n].numel())  # 4.5 s.d.: p < 1e-5
        assert abs(u[n].var().item() - 1) < 4.5 * math.sqrt(2 / u[n].numel())
    b = noise.bias[0::2] / SIGMA  # one of each mirrored pair: independent across members
    assert ks_normal(b) < ks_critical(b.numel(), alpha)


@pytest.mark.filterwarnings("ignore:generation 0. all .* same fitness")  # equal on purpose
def test_one_weight_entry_across_generations_is_standard_normal() -> None:
    """Entry (5, 7) of member 3's weight perturbation over 2,000 generations passes a KS test against N(0, 1) at
    α = 1e-4: ε is redrawn every generation (the marginal only; serial dependence is not tested)."""
    layer = flipes.nn.FlipoutLinear(8, 8)
    es = flipes.FlipES(layer, popsize=4, sigma=SIGMA, seed=0, mirrored=False)
    values = []
    for _ in range(2000):
        with es.population():
            values.append(member_deltas(layer.noise[0], (8, 8))[3, 5, 7] / SIGMA)
        es.tell(torch.zeros(4))  # on to the next generation's noise
    values = torch.stack(values)
    assert ks_normal(values) < ks_critical(len(values), 1e-4)  # false alarm 1e-4


def test_mirrored_pairs_are_exact_negatives() -> None:
    """Flipout weights, their biases and dense per-member parameters (a LayerNorm's) alike."""
    noise, u = sample(groups=4, mirrored=True)
    assert torch.equal(u[1::2], -u[0::2])
    assert torch.equal(noise.bias[1::2], -noise.bias[0::2])
    assert not torch.equal(u[0], u[2])  # distinct pairs differ
    norm = flipes.flipout(torch.nn.LayerNorm(6))
    es = flipes.FlipES(norm, popsize=16, sigma=SIGMA, groups=4)
    with es.population():
        deltas = [norm.member_noise[name] for name in ("weight", "bias")]
    for delta in deltas:
        assert delta.shape == (16, 6) and torch.equal(delta[1::2], -delta[0::2]) and not torch.equal(delta[0], delta[2])


def test_signs_are_fair_and_distinct_per_member() -> None:
    """``rademacher`` gives only ±1; over 1,000,003 bits the sum and the lag-1 products' sum are within 5√n (false
    alarm 6e-7 each); every other member's 64 input signs differ from member 0's somewhere, and the mean agreement is
    within 5 standard errors of 1/2."""
    bits = rademacher(1_000_003, torch.Generator().manual_seed(1), sign_table(torch.float32, torch.device("cpu")))
    assert set(bits.unique().tolist()) == {-1.0, 1.0}
    # sum of n fair ±1 has s.d. sqrt(n); 5 s.d. bound: false alarm 6e-7
    assert abs(bits.sum().item()) < 5 * math.sqrt(len(bits))
    # neighbouring bits are uncorrelated (a packed-bit unpacking error would show up here)
    assert abs((bits[1:] * bits[:-1]).sum().item()) < 5 * math.sqrt(len(bits))
    noise, _ = sample(groups=1, mirrored=False)
    agree = (noise.s[0] == noise.s[1:]).double().mean(1)  # 64 signs of member 0 vs each other member
    assert (agree < 1).all() and abs(agree.mean().item() - 0.5) < 5 * 0.5 / math.sqrt(64 * 15)


def test_groups_and_generations_draw_unrelated_noise() -> None:
    """The 8 noise streams of 4 groups × generations 0 and 1 (64 members, mirrored) are pairwise unrelated: the
    correlation of two streams' Gaussian draws (ε and the distinct members' bias noise, n = 9216) is below 5/√n, and
    their distinct members' signs (s and r, m = 1536) agree in a fraction within Hoeffding's bound of 1/2. Family-wise
    false alarm < 5e-5 over the 28 pairs: uncorrelated, and no two streams alike (a key mixing the group into the
    generation would make group 1 of generation 0 group 0 of generation 1)."""
    streams = []
    for generation in (0, 1):
        noise, _ = sample(groups=4, mirrored=True, generation=generation, popsize=64)
        for g in range(4):
            distinct = slice(16 * g, 16 * (g + 1), 2)  # one of each mirrored pair of group g's 16 members
            gauss = torch.cat([noise.eps[g].flatten(), noise.bias[distinct].flatten()]) / SIGMA
            signs = torch.cat([noise.s[distinct].flatten(), noise.r[distinct].flatten()])
            streams.append((gauss.double(), signs.double()))
    n, m = len(streams[0][0]), len(streams[0][1])
    alpha = 1e-6  # per pair and check; 28 pairs × 2 checks
    # √n·ρ of independent normals is ~N(0, 1) (√(n-2)·ρ/√(1-ρ²) is Student's t, 9214 d.o.f.): P(|ρ| > 5/√n) < 6e-7
    rho_bound = 5 / math.sqrt(n)
    agree_bound = math.sqrt(math.log(2 / alpha) / (2 * m))  # Hoeffding: m independent fair coin flips
    for a in range(len(streams)):
        for b in range(a + 1, len(streams)):
            rho = torch.corrcoef(torch.stack([streams[a][0], streams[b][0]]))[0, 1].item()
            agree = (streams[a][1] == streams[b][1]).double().mean().item()
            assert abs(rho) < rho_bound and abs(agree - 0.5) < agree_bound, (divmod(a, 4), divmod(b, 4), rho, agree)


def test_dense_noise_of_each_group_is_its_own() -> None:
    """Dense per-member noise (a norm's scale) is keyed by group like Flipout noise: the 4 groups' rows (3,200 draws
    each) are pairwise uncorrelated, |ρ| < 4.5/√n (false alarm < 1e-5 per pair, 6e-5 over the 6 pairs; fixed seed),
    and a group's rows are exactly those it gets when sampled without the other groups."""
    kw = dict(seed=3, generation=7, slot=2, group_size=64, param=torch.empty(50), sigma=1.0, mirrored=False)
    full = sample_dense(groups=range(4), **kw).delta  # (256, 50)
    assert torch.equal(sample_dense(groups=range(2, 3), **kw).delta, full[128:192])
    groups = full.view(4, -1)
    n = groups.shape[1]
    for g in range(4):
        for h in range(g + 1, 4):
            rho = torch.corrcoef(groups[[g, h]])[0, 1].item()
            assert abs(rho) < 4.5 / math.sqrt(n), (g, h, rho)  # per pair false alarm < 1e-5


def test_noise_is_a_pure_function_of_seed_generation_group_and_slot() -> None:
    """``sample_slot`` for group 2 alone returns exactly group 2's ε and members 8-11's signs and bias noise from
    sampling all four groups; sampling again gives identical tensors; another seed, generation or slot gives another ε
    and other signs."""
    w = torch.empty(5, 3)
    kw = dict(seed=3, generation=7, slot=1, group_size=4, weight=w, in_channels=3, out_channels=5, has_bias=True, sigma=0.1)
    full = sample_slot(groups=range(0, 4), mirrored=True, **kw)
    part = sample_slot(groups=range(2, 3), mirrored=True, **kw)  # what a process owning group 2 samples
    assert torch.equal(part.eps[0], full.eps[2])
    for name in ("s", "r", "bias"):
        assert torch.equal(getattr(part, name), getattr(full, name)[8:12]), name
    again = sample_slot(groups=range(0, 4), mirrored=True, **kw)
    assert all(torch.equal(getattr(full, k), getattr(again, k)) for k in ("eps", "s", "r", "bias"))
    for change in (dict(seed=4), dict(generation=8), dict(slot=2)):
        other = sample_slot(groups=range(0, 4), mirrored=True, **{**kw, **change})
        assert not torch.equal(other.eps, full.eps) and not torch.equal(other.s, full.s), change


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_groups_noise_is_its_keyed_streams_draws_in_order_signs_unpacked_bit_by_bit(mirrored: bool) -> None:
    """What keys a run's noise, written out: group g's generator is seeded with the first 8 bytes of blake2b of
    ``flipes/v1/seed/generation/group/slot`` (little-endian, >> 1) and draws σε, then per distinct member the bytes
    of s (``ceil(in / 8)``) and of r, 64 bits a draw, then the bias noise; byte bit b (least significant first) set
    is +1. Mirrored twins repeat s and negate r and the bias noise. In and out of 5 and 11 leave bits unused."""
    import hashlib

    seed, generation, slot, size, inp, out = 123456789012, 41, 3, 4, 5, 11
    w = torch.empty(out, inp, dtype=torch.float64)
    got = sample_slot(seed=seed, generation=generation, slot=slot, groups=range(1, 3), group_size=size, weight=w,
                      in_channels=inp, out_channels=out, has_bias=True, sigma=0.1, mirrored=mirrored)  # fmt: skip
    distinct = size // 2 if mirrored else size
    for i, group in enumerate((1, 2)):
        key = f"flipes/v1/{seed}/{generation}/{group}/{slot}".encode()
        gen = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        eps = torch.empty(out, inp, dtype=torch.float64).normal_(0.0, 0.1, generator=gen)
        words = torch.empty((distinct * 3 + 7) // 8, dtype=torch.int64).random_(-(2**63), None, generator=gen)
        bias = torch.empty(distinct, out, dtype=torch.float64).normal_(0.0, 0.1, generator=gen)
        data = words.view(torch.uint8)[: distinct * 3].view(distinct, 3).tolist()  # 1 byte of s, 2 of r a member
        bits = [[(byte >> b) & 1 for byte in row for b in range(8)] for row in data]
        s = torch.tensor([[2.0 * v - 1 for v in row[:inp]] for row in bits], dtype=torch.float64)
        r = torch.tensor([[2.0 * v - 1 for v in row[8 : 8 + out]] for row in bits], dtype=torch.float64)
        if mirrored:
            s, r, bias = s.repeat_interleave(2, 0), torch.stack((r, -r), 1).flatten(0, 1), bias.repeat_interleave(2, 0)
        rows = slice(i * size, (i + 1) * size)
        assert torch.equal(got.eps[i], eps) and torch.equal(got.s[rows], s) and torch.equal(got.r[rows], r)
        assert torch.equal(got.bias[rows], bias * (1 - 2 * (torch.arange(size) % 2)[:, None] * mirrored))
        assert got.s.is_contiguous() and got.r.is_contiguous()


@pytest.mark.parametrize("shape", [(64, 16), (5, 3)])
def test_every_groups_transposed_eps_listed_at_once_is_the_one_asked_for_by_group(shape: tuple[int, int]) -> None:
    """``eps_ts()`` lists each group's ``σε_gᵀ`` as ``eps_t(g)`` gives it, from a 64-byte boundary (a BLAS rounds by
    where an operand starts): the very views where every group's ε starts on one (64 × 16 floats), copies that do
    where not (5 × 3: 60 bytes a group); and the same list at every ask of the generation."""
    w = torch.empty(*shape)
    noise = sample_slot(seed=0, generation=0, slot=0, groups=range(4), group_size=2, weight=w, in_channels=shape[1],
                        out_channels=shape[0], has_bias=False, sigma=0.1, mirrored=True)  # fmt: skip
    with torch.no_grad():  # as in a population (under autograd, views are made afresh at each ask)
        listed, again, ones = noise.eps_ts(), noise.eps_ts(), [noise.eps_t(g) for g in range(4)]
    assert len(listed) == 4 and again is listed
    for g, (view, one) in enumerate(zip(listed, ones, strict=True)):
        assert torch.equal(view, noise.eps[g].T) and view.data_ptr() % 64 == 0
        assert (view.data_ptr(), view.stride()) == (one.data_ptr(), one.stride())
    assert (listed[1].data_ptr() == noise.eps[1].data_ptr()) == (shape == (64, 16))


def test_keys_whose_digits_run_together_are_distinct_streams() -> None:
    """Each field of the key ``(seed, generation, group, slot)`` is its own: seed 1 at generation 12 is
    not seed 11 at generation 2, and group 1's slot 23 is not group 12's slot 3 (two layers sharing ε)."""
    pairs = [((1, 12, 0, 0), (11, 2, 0, 0)), ((0, 0, 1, 23), (0, 0, 12, 3)), ((0, 3, 4, 0), (0, 34, 0, 0))]
    for a, b in pairs:
        assert stream_seed(*a) != stream_seed(*b), (a, b)
    assert all(0 <= stream_seed(*a) < 2**63 for a, _ in pairs)  # a valid generator seed


def test_output_signs_are_drawn_apart_from_input_signs() -> None:
    """Within a member the output signs r_n are independent of the input signs s_n: over 64 members (one group, not
    mirrored) of a 64 → 128 layer, s_n[i] agrees with r_n[i] and with r_n[64 + i] (i < 64) in fractions within
    Hoeffding's bound of 1/2 (m = 4096 each, false alarm 1e-6 each); and the sign r_n[o] s_n[i] of every weight entry,
    averaged over the 64 members, is within Hoeffding's bound of 0 (family-wise false alarm 1e-6 over the 8192
    entries): no entry is perturbed alike in every member of a group."""
    noise, _ = sample(groups=1, mirrored=False, popsize=64)
    s, r = noise.s.double(), noise.r.double()
    m = s.numel()
    agree_bound = math.sqrt(math.log(2 / 1e-6) / (2 * m))
    for half in (r[:, :64], r[:, 64:]):
        agree = (s == half).double().mean().item()
        assert abs(agree - 0.5) < agree_bound, agree
    entry_mean = (r[:, :, None] * s[:, None, :]).mean(0)  # (128, 64): each entry's sign over the members
    # a mean of 64 fair ±1: P(|mean| >= t) <= 2 exp(-64 t² / 2); t for 1e-6 / 8192 per entry
    t = math.sqrt(2 * math.log(2 * 8192 / 1e-6) / 64)
    assert entry_mean.abs().max().item() < t
