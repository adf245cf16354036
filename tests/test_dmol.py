"Discretized logistic mixture: normalization, a high-precision reference, edge cases, gradients, sampling and input errors."
import math

import mpmath as mp
import pytest
import torch
from torch import nn

from lvmkit.distributions import (ConditionalDMoL, DiscretizedLogisticMixture, check_pixels, dmol_params_size, float_to_pixels,
                         log_discretized_logistic, pixels_to_float)


def random_params(B, K, C, H, W, seed, extreme=True, dtype=torch.float32):
    "Random (logit_probs, means, log_scales, coeffs); with `extreme`, a quarter of the log scales each at -7, -9 (clamped) and 5."
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, W, generator=g) * 2
    means = torch.rand(B, K, C, H, W, generator=g) * 3 - 1.5
    log_scales = torch.rand(B, K, C, H, W, generator=g) * 6 - 5
    if extreme:
        pick = torch.randint(0, 4, log_scales.shape, generator=g)
        log_scales = torch.where(pick == 0, -7.0, torch.where(pick == 1, -9.0, torch.where(pick == 2, 5.0, log_scales)))
    coeffs = torch.tanh(torch.randn(B, K, C, H, W, generator=g) * 2) if C == 3 else None
    return tuple(None if t is None else t.to(dtype) for t in (logits, means, log_scales, coeffs))


def random_pixels(B, C, H, W, seed):
    "Random pixel values with the edge values 0, 255 and their neighbours 1, 254 forced in."
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (B, C, H, W), generator=g)
    flat = x.view(-1)
    flat[0::6], flat[1::6], flat[2::6], flat[3::6] = 0, 255, 1, 254
    return x


def chi_square(counts, expected):
    "Pearson's statistic and degrees of freedom, cells with expected count < 5 pooled into one."
    keep = expected >= 5
    obs, exp = counts[keep], expected[keep]
    if (~keep).any(): obs, exp = torch.cat([obs, counts[~keep].sum().view(1)]), torch.cat([exp, expected[~keep].sum().view(1)])
    return ((obs - exp) ** 2 / exp).sum().item(), len(obs) - 1


def ref_log_prob(x, logits, means, log_scales, coeffs, min_log_scale=-7.0):
    "Slow reference: logistic CDF differences in 50-digit arithmetic, plain loops (the tail side avoids cancellation)."
    mp.mp.dps = 50
    B, K, C, H, W = means.shape
    f = lambda t: mp.mpf(float(t))
    out = []
    for b in range(B):
        total = mp.mpf(0)
        for i in range(H):
            for j in range(W):
                v = [int(x[b, c, i, j]) for c in range(C)]
                y = [mp.mpf(2 * vc) / 255 - 1 for vc in v]
                log_norm = mp.log(mp.fsum(mp.exp(f(logits[b, k, i, j])) for k in range(K)))
                comps = []
                for k in range(K):
                    lp = f(logits[b, k, i, j]) - log_norm
                    for c in range(C):
                        mu = f(means[b, k, c, i, j])
                        if c == 1: mu += f(coeffs[b, k, 0, i, j]) * y[0]
                        if c == 2: mu += f(coeffs[b, k, 1, i, j]) * y[0] + f(coeffs[b, k, 2, i, j]) * y[1]
                        s = mp.exp(max(f(log_scales[b, k, c, i, j]), mp.mpf(min_log_scale)))
                        cdf = lambda t: 1 / (1 + mp.exp(-(t - mu) / s))
                        sf = lambda t: 1 / (1 + mp.exp((t - mu) / s))
                        lo, hi = y[c] - mp.mpf(1) / 255, y[c] + mp.mpf(1) / 255
                        if v[c] == 0: p = cdf(hi)
                        elif v[c] == 255: p = sf(lo)
                        elif y[c] > mu: p = sf(lo) - sf(hi)
                        else: p = cdf(hi) - cdf(lo)
                        lp += mp.log(p)
                    comps.append(lp)
                total += mp.log(mp.fsum(mp.exp(t) for t in comps))
        out.append(float(total))
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------- agreement with the reference

@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("extreme", [False, True])
def test_log_prob_matches_high_precision_reference(C, extreme):
    B, K, H, W = 4, 3, 3, 3
    params = random_params(B, K, C, H, W, seed=10 + C + extreme, extreme=extreme)
    x = random_pixels(B, C, H, W, seed=C)
    ref = ref_log_prob(x, *params)
    assert torch.isfinite(ref).all()
    ours64 = DiscretizedLogisticMixture(*[None if p is None else p.double() for p in params]).log_prob(x)
    torch.testing.assert_close(ours64, ref, rtol=1e-10, atol=1e-8)
    ours32 = DiscretizedLogisticMixture(*params).log_prob(x.to(torch.uint8))
    assert ours32.dtype == torch.float32
    torch.testing.assert_close(ours32.double(), ref, rtol=2e-5, atol=5e-3)


def test_single_logistic_matches_plain_sigmoid_differences():
    "K = 1 reduces to one discretized logistic: compare with sigma(u) - sigma(l) in float64 (moderate parameters)."
    k = torch.arange(256)
    for loc, log_scale in [(0.0, -3.0), (0.7, -1.0), (-0.95, -4.5), (0.2, 2.0)]:
        y = pixels_to_float(k, torch.float64)
        u, l = (y + 1 / 255 - loc) / math.exp(log_scale), (y - 1 / 255 - loc) / math.exp(log_scale)
        p = torch.where(k == 0, torch.sigmoid(u), torch.where(k == 255, torch.sigmoid(-l), torch.sigmoid(u) - torch.sigmoid(l)))
        ok = p > 1e-10                                                     # where the plain float64 difference is accurate
        assert ok.sum() > 20
        d = DiscretizedLogisticMixture(torch.randn(1, 1, 1), torch.full((1, 1, 1, 1), loc), torch.full((1, 1, 1, 1), log_scale))
        torch.testing.assert_close(d.log_prob(k.view(256, 1, 1, 1)).double()[ok], p.log()[ok], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(log_discretized_logistic(k, torch.tensor(loc), torch.tensor(log_scale)).double()[ok],
                                   p.log()[ok], rtol=1e-5, atol=1e-5)


def test_duplicate_components_reduce_to_one():
    logits, means, log_scales, coeffs = random_params(3, 1, 3, 2, 2, seed=4)
    x = random_pixels(3, 3, 2, 2, seed=5)
    one = DiscretizedLogisticMixture(logits, means, log_scales, coeffs).log_prob(x)
    two = DiscretizedLogisticMixture(torch.randn(3, 2, 2, 2), means.repeat(1, 2, 1, 1, 1), log_scales.repeat(1, 2, 1, 1, 1),
                                     coeffs.repeat(1, 2, 1, 1, 1)).log_prob(x)
    torch.testing.assert_close(one, two, rtol=1e-6, atol=1e-4)


# ---------------------------------------------------------------- normalization

@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_grey_pixel_probabilities_sum_to_one(dtype, atol):
    logits, means, log_scales, _ = random_params(40, 4, 1, 1, 1, seed=6, dtype=dtype)
    d = DiscretizedLogisticMixture(logits, means, log_scales)            # batch 40 of one-pixel grey images
    lp = d.log_prob(torch.arange(256).view(256, 1, 1, 1, 1))             # (256, 40)
    assert lp.shape == (256, 40) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp.logsumexp(0), torch.zeros(40, dtype=dtype), rtol=0, atol=atol)


def test_float32_normalization_at_the_scale_floor():
    "Narrowest logistics centred on bin edges: float32 rounding of the edges must not leak mass (sum within 2e-6)."
    locs = (2 * torch.arange(0, 256, 3) - 254) / 255 + torch.tensor([0.0, 1e-4, -3e-4]).repeat(30)[:86]
    n = len(locs)
    d = DiscretizedLogisticMixture(torch.zeros(n, 1, 1, 1), locs.view(n, 1, 1, 1, 1), torch.full((n, 1, 1, 1, 1), -7.0))
    lp = d.log_prob(torch.arange(256).view(256, 1, 1, 1, 1))               # (256, n)
    assert lp.logsumexp(0).abs().max() < 2e-6


def test_colour_channel_conditionals_sum_to_one_and_are_autoregressive():
    B, K = 16, 3
    logits, means, log_scales, coeffs = random_params(B, K, 3, 1, 1, seed=7)
    d = DiscretizedLogisticMixture(logits, means, log_scales, coeffs)
    context = random_pixels(B, 3, 1, 1, seed=8)
    for c in range(3):
        xs = context.repeat(256, 1, 1, 1, 1)                               # (256, B, 3, 1, 1)
        xs[:, :, c] = torch.arange(256).view(256, 1, 1, 1)
        lp = d.component_log_probs(xs)                                     # (256, B, K, 3, 1, 1)
        torch.testing.assert_close(lp[:, :, :, c].logsumexp(0), torch.zeros(B, K, 1, 1), rtol=0, atol=2e-5)
        # channels before c do not depend on x_c (the autoregressive order R, G, B)
        assert (lp[:, :, :, :c] == lp[:1, :, :, :c]).all()
    # and log_prob is the mixture of the per-component products
    lp = d.component_log_probs(context).sum(-3) + torch.log_softmax(logits, -3)
    torch.testing.assert_close(d.log_prob(context), lp.logsumexp(-3).sum((-2, -1)))


@pytest.mark.parametrize("extreme", [False, True])
def test_colour_pixel_joint_marginalizes_to_the_red_mixture(extreme):
    """Brute force over all 256^2 (G, B) values: sum_{G,B} P(R, G, B) = P(R) of the grey mixture with the red parameters.

    With the grey test (sum_R P(R) = 1) this shows that the joint over all 256^3 colours sums to one."""
    logits, means, log_scales, coeffs = random_params(1, 3, 3, 1, 1, seed=9, extreme=extreme)
    colour = DiscretizedLogisticMixture(logits[0], means[0], log_scales[0], coeffs[0])          # batch shape ()
    red = DiscretizedLogisticMixture(logits[0], means[0, :, :1], log_scales[0, :, :1])
    gb = torch.cartesian_prod(torch.arange(256), torch.arange(256))        # (65536, 2)
    for r in (0, 1, 77, 128, 254, 255):
        x = torch.cat([torch.full((len(gb), 1), r), gb], 1).view(-1, 3, 1, 1)
        marginal = colour.log_prob(x).double().logsumexp(0)
        expected = red.log_prob(torch.full((1, 1, 1), r)).item()
        assert abs(marginal.item() - expected) < 1e-5 + 2e-6 * abs(expected), (r, marginal.item(), expected)


# ---------------------------------------------------------------- numerics at the edges

def test_extreme_parameters_give_finite_log_probs_and_gradients():
    log_scales = torch.tensor([-1e4, -50.0, -7.0, -3.0, 0.0, 5.0, 30.0, 100.0, 1e4])
    locs = torch.tensor([-50.0, -1.0, 0.0, 1.0, 50.0])
    xs = torch.tensor([0, 1, 127, 254, 255])
    ls, mu, x = torch.cartesian_prod(log_scales, locs, xs.float()).unbind(-1)
    n = len(ls)
    means = torch.stack([mu, torch.zeros(n)], 1).view(n, 2, 1, 1, 1).requires_grad_(True)
    log_s = torch.stack([ls, torch.full((n,), -7.0)], 1).view(n, 2, 1, 1, 1).requires_grad_(True)
    logits = torch.tensor([50.0, -50.0]).repeat(n, 1).view(n, 2, 1, 1).requires_grad_(True)
    lp = DiscretizedLogisticMixture(logits, means, log_s).log_prob(x.long().view(n, 1, 1, 1))
    assert torch.isfinite(lp).all() and (lp <= 1e-6).all()
    lp.sum().backward()
    for p in (logits, means, log_s):
        assert torch.isfinite(p.grad).all()
    # colour, with the channel coefficients at their extremes
    logits, means, log_scales, _ = random_params(6, 3, 3, 2, 2, seed=11)
    coeffs = torch.tensor([-1.0, 1.0, -1.0]).view(1, 1, 3, 1, 1).expand_as(means).clone().requires_grad_(True)
    means.requires_grad_(True); log_scales.requires_grad_(True)
    for x in (torch.zeros(6, 3, 2, 2, dtype=torch.long), torch.full((6, 3, 2, 2), 255), random_pixels(6, 3, 2, 2, seed=12)):
        lp = DiscretizedLogisticMixture(logits, means, log_scales, coeffs).log_prob(x)
        assert torch.isfinite(lp).all()
        lp.sum().backward()
        for p in (means, log_scales, coeffs):
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_log_scale_floor_is_applied():
    "Below log s = -7 nothing changes: location 0 (pixel 127.5) splits its mass between 127 and 128, and 129 keeps a tail."
    base = DiscretizedLogisticMixture(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -7.0))
    lower = DiscretizedLogisticMixture(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -30.0))
    x = torch.tensor([127, 128, 129, 0]).view(4, 1, 1, 1)
    torch.testing.assert_close(base.log_prob(x), lower.log_prob(x))
    p = base.log_prob(x).exp()
    assert abs(p[0] - 0.5) < 1e-3 and abs(p[1] - 0.5) < 1e-3 and 1e-5 < p[2] < 1e-3 and torch.isfinite(base.log_prob(x)).all()


# ---------------------------------------------------------------- shapes and sampling

def test_shapes_with_a_leading_sample_dimension():
    S, B, K, C, H, W = 2, 3, 4, 3, 5, 6
    logits, means, log_scales, coeffs = random_params(S * B, K, C, H, W, seed=13)
    d = DiscretizedLogisticMixture(logits.view(S, B, K, H, W), means.view(S, B, K, C, H, W),
                                   log_scales.view(S, B, K, C, H, W), coeffs.view(S, B, K, C, H, W))
    assert d.batch_shape == (S, B) and d.event_shape == (C, H, W)
    x = random_pixels(B, C, H, W, seed=14)
    lp = d.log_prob(x)                                                     # x broadcasts over the S latent samples
    assert lp.shape == (S, B)
    flat = DiscretizedLogisticMixture(logits, means, log_scales, coeffs).log_prob(x.repeat(S, 1, 1, 1))
    torch.testing.assert_close(lp.flatten(), flat)
    xs = d.sample((7,))
    assert xs.shape == (7, S, B, C, H, W) and xs.dtype == torch.long
    assert xs.min() >= 0 and xs.max() <= 255 and d.sample().shape == (S, B, C, H, W)
    assert d.sample_mean().shape == (S, B, C, H, W) and not d.has_rsample


def test_grey_samples_match_the_probabilities():
    torch.manual_seed(0)
    d = DiscretizedLogisticMixture(torch.tensor([0.0, 1.0, -1.0]).view(3, 1, 1), torch.tensor([-0.7, 0.2, 0.95]).view(3, 1, 1, 1),
                                   torch.tensor([-3.0, -2.0, -2.5]).view(3, 1, 1, 1))
    n = 200_000
    counts = torch.bincount(d.sample((n,)).flatten(), minlength=256).double()
    expected = d.log_prob(torch.arange(256).view(256, 1, 1, 1)).double().exp() * n
    chi2, dof = chi_square(counts, expected)
    assert counts[255] > 0.01 * n                                          # the edge bin collects the upper tail
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)


def test_colour_samples_match_the_joint_probabilities():
    "Joint (R, G, B) histogram of one pixel against log_prob; G and B are sharp given R, so the channel dependence matters."
    torch.manual_seed(1)
    means = torch.tensor([[-0.3, 0.1, -0.2], [0.4, -0.2, 0.3]]).view(2, 3, 1, 1)
    log_scales = torch.tensor([[-4.0, -6.0, -6.5], [-4.5, -5.5, -6.0]]).view(2, 3, 1, 1)
    coeffs = torch.tensor([[0.9, -0.7, 0.8], [-0.5, 0.6, 0.95]]).view(2, 3, 1, 1)
    d = DiscretizedLogisticMixture(torch.tensor([0.3, -0.3]).view(2, 1, 1), means, log_scales, coeffs)
    n = 100_000
    xs = d.sample((n,)).view(n, 3)
    lo, hi = xs.min(0).values, xs.max(0).values
    box = torch.cartesian_prod(*[torch.arange(a, b + 1) for a, b in zip(lo.tolist(), hi.tolist())])  # every colour in the box
    expected = d.log_prob(box.view(-1, 3, 1, 1)).double().exp() * n
    assert expected.sum() > 0.999 * n                                      # the box holds (almost) all the mass
    dims = (hi - lo + 1)
    index = ((xs - lo) * torch.stack([dims[1] * dims[2], dims[2], torch.tensor(1)])).sum(1)
    counts = torch.bincount(index, minlength=len(box)).double()
    chi2, dof = chi_square(counts, expected)
    assert dof > 50 and chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)


def test_sample_mean_is_within_half_a_value_of_the_exact_mean():
    logits, means, log_scales, _ = random_params(30, 3, 1, 1, 1, seed=15, extreme=False)
    d = DiscretizedLogisticMixture(logits, means * 0.5, log_scales.clamp(-6, -4))   # components well inside the range
    p = d.log_prob(torch.arange(256).view(256, 1, 1, 1, 1)).exp()                   # (256, 30)
    exact = (p * torch.arange(256).view(256, 1)).sum(0)
    assert (d.sample_mean().flatten() - exact).abs().max() < 0.5 + 1e-3


# ---------------------------------------------------------------- the decoder head

@pytest.mark.parametrize("C", [1, 3])
def test_conditional_dmol_head(C):
    K = 4
    head = ConditionalDMoL(nn.Conv2d(5, dmol_params_size(C, K), 1), channels=C, n_mix=K)
    px = head(torch.randn(2, 5, 6, 7))
    assert isinstance(px, DiscretizedLogisticMixture)
    assert px.batch_shape == (2,) and px.event_shape == (C, 6, 7) and px.means.shape == (2, K, C, 6, 7)
    x = torch.randint(0, 256, (2, C, 6, 7), dtype=torch.uint8)
    lp = px.log_prob(x)
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    lp.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    if C == 3: assert px.coeffs.abs().max() < 1
    else: assert px.coeffs is None
    assert dmol_params_size(C, K) == K * (1 + (3 if C == 3 else 2) * C)


def test_params_size():
    assert dmol_params_size(3, 10) == 100 and dmol_params_size(1, 10) == 30 and dmol_params_size(3, 1) == 10
    for bad in [(2, 10), (3, 0), (3, 2.5)]:
        with pytest.raises(ValueError): dmol_params_size(*bad)


# ---------------------------------------------------------------- input errors

@pytest.fixture
def colour():
    logits, means, log_scales, coeffs = random_params(2, 3, 3, 4, 4, seed=16)
    return DiscretizedLogisticMixture(logits, means, log_scales, coeffs)


def test_bad_values_are_refused(colour):
    x = torch.randint(0, 256, (2, 3, 4, 4))
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 255, 0
    with pytest.raises(TypeError, match="integer pixel values"): colour.log_prob(pixels_to_float(x))
    with pytest.raises(TypeError, match="integer pixel values"): colour.log_prob(x.float())
    with pytest.raises(TypeError, match="integer pixel values"): colour.log_prob(x > 100)
    with pytest.raises(ValueError, match="0..255"): colour.log_prob(x + 1)     # 256 appears
    with pytest.raises(ValueError, match="0..255"): colour.log_prob(x - 1)     # -1 appears
    with pytest.raises(ValueError, match="1 channels, the distribution 3"): colour.log_prob(x[:, :1])
    with pytest.raises(ValueError, match=r"shape \(3, 4, 4\)"): colour.log_prob(x[..., :3])
    with pytest.raises(ValueError, match="broadcast"): colour.log_prob(torch.randint(0, 256, (5, 3, 4, 4)))
    with pytest.raises(ValueError, match="channels"): check_pixels(x[:, :1], (3, 4, 4))


def test_bad_parameters_are_refused():
    logits, means, log_scales, coeffs = random_params(2, 3, 3, 4, 4, seed=17)
    with pytest.raises(ValueError, match="coeffs"): DiscretizedLogisticMixture(logits, means, log_scales)
    with pytest.raises(ValueError, match="coeffs"):
        DiscretizedLogisticMixture(logits, means[:, :, :1], log_scales[:, :, :1], coeffs[:, :, :1])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        DiscretizedLogisticMixture(logits, means[:, :, :2], log_scales[:, :, :2])
    with pytest.raises(ValueError, match="log_scales"): DiscretizedLogisticMixture(logits, means, log_scales[:1], coeffs)
    with pytest.raises(ValueError, match="logit_probs"): DiscretizedLogisticMixture(logits[:, :2], means, log_scales, coeffs)
    with pytest.raises(ValueError): DiscretizedLogisticMixture(logits, means * float("nan"), log_scales, coeffs)
    head = ConditionalDMoL(nn.Conv2d(5, 7, 1), channels=3, n_mix=2)
    with pytest.raises(ValueError, match="dmol_params_size"): head(torch.randn(1, 5, 4, 4))


def test_pixel_conversions():
    k = torch.arange(256)
    y = pixels_to_float(k)
    assert y[0] == -1 and y[-1] == 1 and torch.equal(float_to_pixels(y), k)
    # every point of a bin maps back to its value
    assert torch.equal(float_to_pixels(y + 0.99 / 255), k) and torch.equal(float_to_pixels(y - 0.99 / 255), k)
