"Chapter-3 parts: masks, causality, receptive field, PixelCNN likelihood and sampling, and the two VAEs in the shared protocol."

import itertools

import pytest
import torch
import torch.nn.functional as F

from lvmkit.core import build_model
from lvmkit.objectives import iw_log_likelihood
from lvmkit.testing import check_model
from lvmkit.models.vlae import (MaskedConv2d, PixelCNNBernoulli, ConditionalPixelCNN, receptive_field, check_causal,
                       Batched, conv_vae, binary_pixelcnn_vae)




@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def tiny_decoder(H=6, W=6, kernel=3, layers=2, z=3, channels=6):
    return ConditionalPixelCNN(z, (1, H, W), channels=channels, kernel=kernel, layers=layers, cond_channels=2)


def binary(*shape, p=0.4, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


# ---------------------------------------------------------------- masked convolution

def test_mask_values():
    A = MaskedConv2d(2, 3, 3, "A").mask[0, 0]
    B = MaskedConv2d(2, 3, 3, "B").mask[0, 0]
    assert torch.equal(A, torch.tensor([[1., 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(B, torch.tensor([[1., 1, 1], [1, 1, 0], [0, 0, 0]]))
    A5 = MaskedConv2d(1, 1, 5, "A").mask[0, 0]
    assert A5[:2].eq(1).all() and A5[2].tolist() == [1, 1, 0, 0, 0] and A5[3:].eq(0).all()
    assert MaskedConv2d(1, 1, 1, "B").mask.eq(1).all() and MaskedConv2d(1, 1, 1, "A").mask.eq(0).all()


def test_masked_conv_forward_and_grad():
    conv = MaskedConv2d(2, 4, 3, "A")
    w0 = conv.weight.detach().clone()
    x = torch.randn(2, 2, 5, 7)
    y = conv(x)
    assert y.shape == (2, 4, 5, 7)
    assert torch.allclose(y, F.conv2d(x, w0 * conv.mask, conv.bias, padding=1))
    y.square().sum().backward()
    assert torch.equal(conv.weight, w0), "forward must not change the weights"
    assert (conv.weight.grad * (1 - conv.mask)).eq(0).all(), "masked weights must get exactly zero gradient"
    assert (conv.weight.grad * conv.mask).ne(0).any()
    assert "mask" in dict(conv.named_buffers())


@pytest.mark.parametrize("kwargs,match", [(dict(kernel_size=4), "odd"), (dict(kernel_size=3, mask_type="C"), "mask_type"),
                                          (dict(kernel_size=0), "odd")])
def test_masked_conv_errors(kwargs, match):
    with pytest.raises(ValueError, match=match): MaskedConv2d(1, 1, **kwargs)


# ---------------------------------------------------------------- causality and receptive field

@pytest.mark.parametrize("seed", range(4))
def test_causal_by_gradients_random_sizes(seed):
    g = torch.Generator().manual_seed(seed)
    H, W = (int(v) for v in torch.randint(2, 7, (2,), generator=g))
    kernel, layers = int(torch.randint(1, 3, (1,), generator=g)) * 2 + 1, int(torch.randint(0, 4, (1,), generator=g))
    d = tiny_decoder(H, W, kernel, layers)
    cond = d(torch.randn(1, 3)).cond                                               # (1, Cc, H, W)
    f = lambda xf: d.logits(xf.view(1, 1, H, W), cond).flatten()                  # (H*W,) -> (H*W,)
    J = torch.autograd.functional.jacobian(f, torch.randn(H * W))                 # [t, s] = d logit_t / d x_s
    future = torch.ones(H * W, H * W).triu().bool()                               # s >= t
    assert J[future].eq(0).all(), f"logits depend on pixels at or after them ({H}x{W}, kernel {kernel}, layers {layers})"
    assert J[~future].ne(0).any()
    check_causal(d)


def test_check_causal_catches_a_leak():
    d = tiny_decoder(5, 5)
    d.input.mask[..., 1, 1] = 1                                                    # turn the first layer into type B
    with pytest.raises(AssertionError, match="autoregressive property violated"): check_causal(d)


def expected_field(H, W, i, j, kernel, layers):
    "Offsets reachable through one type-A kxk layer and `layers` type-B 3x3 layers (Minkowski sum), clipped to the image."
    a = kernel // 2
    step_a = {(dr, dc) for dr in range(-a, 0) for dc in range(-a, a + 1)} | {(0, dc) for dc in range(-a, 0)}
    step_b = {(dr, dc) for dr in (-1, 0) for dc in (-1, 0, 1) if (dr, dc) < (0, 1)}  # row above, left, centre
    offsets = step_a
    for _ in range(layers): offsets = {(r + s, c + t) for (r, c) in offsets for (s, t) in step_b}
    m = torch.zeros(H, W, dtype=torch.bool)
    for r, c in offsets:
        if 0 <= i + r < H and 0 <= j + c < W: m[i + r, j + c] = True
    return m


def closed_form_field(H, W, i, j, layers):
    "Kernel 3: row i - r (1 <= r <= L+1) columns j-(L+1)..j+r; row i columns j-(L+1)..j-1 (L = layers); the blind spot is the rest."
    m = torch.zeros(H, W, dtype=torch.bool)
    L = layers + 1
    for r in range(1, L + 1):
        if i - r >= 0: m[i - r, max(0, j - L):min(W, j + r + 1)] = True
    m[i, max(0, j - L):j] = True
    return m


def perturbation_field(d, n=3):
    "Brute force: dep[i, j] is the (H, W) set of pixels whose change (to another random value) changes logit (i, j)."
    H, W = d.x_shape[1:]
    cond = d(torch.randn(n, d.z_features)).cond
    x = torch.randn(n, 1, H, W)
    with torch.no_grad():
        base = d.logits(x, cond)
        dep = torch.zeros(H, W, H, W, dtype=torch.bool)
        for s, t in itertools.product(range(H), range(W)):
            x2 = x.clone(); x2[:, 0, s, t] += 1 + torch.rand(n)
            dep[:, :, s, t] = (d.logits(x2, cond) != base).any(0)[0]
    return dep


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
def test_receptive_field_kernel3(layers):
    H = W = 6
    d = tiny_decoder(H, W, 3, layers)
    dep = perturbation_field(d)
    for i, j in itertools.product(range(H), range(W)):
        rf = receptive_field(d, i, j)
        want = closed_form_field(H, W, i, j, layers)
        assert torch.equal(want, expected_field(H, W, i, j, 3, layers))
        assert torch.equal(rf, want), f"pixel ({i}, {j}), {layers} layers:\n{rf.int()}\nexpected\n{want.int()}"
        assert torch.equal(dep[i, j], want), f"perturbation disagrees at ({i}, {j})"


def test_receptive_field_kernel5_and_growth():
    d = tiny_decoder(7, 7, kernel=5, layers=1)
    dep = perturbation_field(d)
    for i, j in itertools.product(range(7), range(7)):
        assert torch.equal(receptive_field(d, i, j), expected_field(7, 7, i, j, 5, 1))
        assert torch.equal(dep[i, j], expected_field(7, 7, i, j, 5, 1))
    sizes = [int(receptive_field(tiny_decoder(9, 9, 3, n), 8, 4).sum()) for n in range(4)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4, sizes
    with pytest.raises(ValueError, match="outside"): receptive_field(d, 7, 0)


# ---------------------------------------------------------------- the distribution

def test_log_prob_matches_pixel_by_pixel_reference():
    H, W, B = 4, 5, 3
    d = tiny_decoder(H, W, 3, 2)
    z, x = torch.randn(B, 3), binary(B, 1, H, W)
    px = d(z)
    lp = px.log_prob(x)
    assert lp.shape == (B,)
    ref = torch.zeros(B)
    with torch.no_grad():
        for t in range(H * W):
            i, j = divmod(t, W)
            xr = x.clone().view(B, -1)
            xr[:, t:] = torch.randn(B, H * W - t) * 3                              # pixel t and later: anything
            logit = d.logits(xr.view(B, 1, H, W), px.cond)[:, 0, i, j]
            ref += torch.where(x[:, 0, i, j] == 1, F.logsigmoid(logit), F.logsigmoid(-logit))
    assert torch.allclose(lp, ref, atol=1e-5), (lp, ref)


def test_sample_matches_log_prob_on_a_2x2_image():
    "Ancestral sampling and log_prob describe the same distribution: 16 outcomes, probabilities sum to 1, frequencies match."
    d = tiny_decoder(2, 2, 3, 1)
    px = d(torch.randn(3) * 2)                                                     # batch shape ()
    outcomes = torch.tensor(list(itertools.product([0., 1.], repeat=4))).view(16, 1, 2, 2)
    p = px.log_prob(outcomes).exp().detach()                                       # (16,) via broadcasting
    assert abs(p.sum().item() - 1) < 1e-5
    n = 6000
    s = px.sample((n,))
    assert s.shape == (n, 1, 2, 2)
    idx = (s.view(n, 4) * torch.tensor([8., 4, 2, 1])).sum(1).long()
    freq = torch.bincount(idx, minlength=16) / n
    tol = 4.5 * (p * (1 - p) / n).sqrt() + 1e-3
    assert ((freq - p).abs() <= tol).all(), (freq, p)


def test_sample_shapes_and_values():
    d = tiny_decoder(5, 4)
    px = d(torch.randn(2, 3, 3))                                                   # batch shape (2, 3)
    assert px.batch_shape == (2, 3) and px.event_shape == (1, 5, 4)
    for shape in [(), (4,), (2, 1)]:
        s = px.sample(shape)
        assert s.shape == (*shape, 2, 3, 1, 5, 4) and s.dtype == torch.float32
        assert ((s == 0) | (s == 1)).all()
    assert torch.isfinite(px.log_prob(px.sample((2,)))).all()


def raster_net(fn):
    "A net whose logit at raster position t is fn(x_{t-1}) (x_{-1} = 0): autoregressive by construction."
    def net(x, cond):
        flat = x.flatten(1)
        prev = torch.cat([torch.zeros_like(flat[:, :1]), flat[:, :-1]], 1)
        return fn(prev).view_as(x)
    return net


def test_sampling_with_forced_logits():
    cond = torch.zeros(5, 2, 3, 5)                                                 # odd width: rows start 1, 0, 1
    assert PixelCNNBernoulli(lambda x, c: torch.full_like(x, 40.), cond).sample().eq(1).all()
    assert PixelCNNBernoulli(lambda x, c: torch.full_like(x, -40.), cond).sample().eq(0).all()
    # each pixel copies the complement of the previous one: 1, 0, 1, 0, ... in raster order, only if sampling is sequential
    px = PixelCNNBernoulli(raster_net(lambda prev: 40 * (1 - 2 * prev)), cond)
    s = px.sample((2,))
    want = (torch.arange(15) % 2 == 0).float().view(1, 3, 5)
    assert (s == want).all()
    assert px.log_prob(want).abs().max() < 1e-10
    assert torch.allclose(px.log_prob(1 - want), torch.tensor(-40.), atol=1e-4)  # only pixel 0 breaks the rule in 0, 1, 0, 1, ...
    # the conditioning reaches each pixel: sign of cond channel 0 decides
    sign = torch.randint(0, 2, (5, 1, 3, 4)).float()
    s = PixelCNNBernoulli(lambda x, c: 40 * (2 * c[:, :1] - 1), torch.cat([sign, sign], 1)).sample()
    assert torch.equal(s, sign)
    # logit 0: fair coins
    m = PixelCNNBernoulli(lambda x, c: torch.zeros_like(x), torch.zeros(200, 1, 4, 4)).sample().mean()
    assert abs(m - 0.5) < 0.05


def test_log_prob_broadcasting():
    S, B, H, W = 3, 4, 4, 4
    d = tiny_decoder(H, W)
    z, x = torch.randn(S, B, 3), binary(B, 1, H, W)
    px = d(z)
    lp = px.log_prob(x)                                                            # x (B, ...) against batch (S, B)
    assert lp.shape == (S, B)
    for s in range(S):
        assert torch.allclose(lp[s], d(z[s]).log_prob(x), atol=1e-5)
    assert torch.allclose(px.log_prob(x.expand(S, B, 1, H, W)), lp)
    with pytest.raises(ValueError, match="broadcast"): px.log_prob(binary(5, 1, H, W))


def test_bad_inputs():
    d = tiny_decoder(4, 4)
    px = d(torch.randn(2, 3))
    with pytest.raises(ValueError, match="binary"): px.log_prob(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="NaN"): px.log_prob(torch.full((2, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\)"): px.log_prob(binary(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\)"): px.log_prob(binary(2, 4, 4))
    with pytest.raises(ValueError, match=r"z of shape \(\*batch, 3\)"): d(torch.randn(2, 4))
    with pytest.raises(NotImplementedError, match="sample"): px.mean
    with pytest.raises(ValueError, match="x_shape"): ConditionalPixelCNN(3, (3, 8, 8))
    with pytest.raises(ValueError, match="kernel"): ConditionalPixelCNN(3, (1, 8, 8), kernel=4)
    with pytest.raises(ValueError, match="layers"): ConditionalPixelCNN(3, (1, 8, 8), layers=-1)
    m = build_model("pixelcnn_vae", x_shape=(1, 8, 8), z_dim=4, hidden=(16,), channels=4)
    with pytest.raises(ValueError, match="binary data"): m.log_prob(torch.rand(3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"): m.log_prob(binary(3, 1, 28, 28))
    with pytest.raises(NotImplementedError, match="no closed-form mean"): m.sample(2, noise=False)
    with pytest.raises(ValueError, match="activation"): build_model("pixelcnn_vae", activation="swish")
    c = build_model("conv_vae", z_dim=4)
    with pytest.raises(TypeError, match="integer pixel values"): c.log_prob(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(B, 3, 32, 32\)"): c.log_prob(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiples of 8"): conv_vae(x_shape=(3, 30, 30))
    with pytest.raises(ValueError, match="prior"): conv_vae(prior="vampprior")


def test_batched():
    net = torch.nn.Linear(3, 5)
    f = Batched(net, event_dims=1)
    x = torch.randn(2, 4, 3)
    assert torch.allclose(f(x), net(x)) and f(torch.randn(3)).shape == (5,)


# ---------------------------------------------------------------- the models in the shared protocol

def test_pixelcnn_vae_contract_and_iw():
    m = build_model("pixelcnn_vae", x_shape=(1, 8, 8), z_dim=4, hidden=(32,), channels=8, layers=1)
    assert m.spec["name"] == "pixelcnn_vae" and m.binary
    x = binary(4, 1, 8, 8)
    check_model(m, x, k=16, n_mc=64)
    m.log_prob(x).sum().backward()
    dead = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
    assert not dead, f"parameters with an exactly zero gradient: {dead}"
    s = m.sample(3)
    assert ((s == 0) | (s == 1)).all()
    ll, elbo = iw_log_likelihood(m, x, k=8, chunk_size=3)
    assert ll.shape == elbo.shape == (4,) and torch.isfinite(ll).all()
    assert (ll >= elbo - 1e-4).all()                    # log mean exp >= mean log over the same weights
    ll1, elbo1 = iw_log_likelihood(m, x, k=1)
    assert torch.allclose(ll1, elbo1)


@pytest.mark.parametrize("prior", ["gaussian", "flow"])
def test_conv_vae_contract_and_iw(prior):
    m = build_model("conv_vae", z_dim=4, prior=prior, flow_hidden=(16, 16), n_mix=2)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    m.check_input(x)
    check_model(m, x, k=8, n_mc=16)
    s = m.sample(2)
    assert s.shape == (2, 3, 32, 32) and s.dtype == torch.long and s.min() >= 0 and s.max() <= 255
    assert m.decoder(torch.randn(3, 2, 4)).batch_shape == (3, 2)          # z (S, B, D)
    ll, elbo = iw_log_likelihood(m, x, k=4, chunk_size=2)
    assert ll.shape == (2,) and torch.isfinite(ll).all() and (ll >= elbo - 1e-3).all()
    torch.manual_seed(1); a = m.log_prob(x)
    torch.manual_seed(1); b = m.log_prob(x.long())                       # long pixels: the same numbers
    assert torch.allclose(a, b)


def test_conv_vae_grey_and_sizes():
    m = conv_vae(x_shape=(1, 16, 16), z_dim=3, n_mix=2)
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    check_model(m, x, k=4, n_mc=8)
    assert type(m.prior).__name__ == "StandardNormal"
    assert type(conv_vae(z_dim=3, prior="flow", flow_hidden=(8,)).prior).__name__ == "FlowPrior"


# ---------------------------------------------------------------- the VLAE (AF prior) and the chapter's experiments

from lvmkit.distributions import StandardNormal
from lvmkit.flows import FlowDistribution, InverseFlowDistribution
from lvmkit.models.vlae import mlp_vlae
from lvmkit.recipes import VLAE_MLP, VLAE_CIFAR10, LOSSY


def test_mlp_vlae_contract_and_prior():
    m = mlp_vlae(x_shape=(1, 6, 6), z_dim=5, hidden=(16,), flow_hidden=(16, 16), flow_steps=2)
    assert isinstance(m.prior(), FlowDistribution)
    check_model(m, binary(8, 1, 6, 6))
    with pytest.raises(NotImplementedError, match="closed form"): m.elbo_terms(binary(8, 1, 6, 6), analytic_kl=True)
    with pytest.raises(ValueError): m.prior().log_prob(torch.randn(3, 6))


def test_af_prior_equals_iaf_posterior_seen_from_the_other_side():
    "Per sample: log q(z) - log p_AF(z) == log q_f(eps) - log N(eps) with eps = f(z) (the chapter's identity)."
    m = mlp_vlae(x_shape=(1, 6, 6), z_dim=4, hidden=(16,), flow_hidden=(16, 16), flow_steps=2)
    with torch.no_grad():
        for p in m.prior.parameters(): p.normal_(0, 0.3)
    qz = m.encoder(binary(3, 1, 6, 6))
    z = qz.sample((5,))
    eps, ldj = m.prior.transform(z)
    lhs = qz.log_prob(z) - m.prior().log_prob(z)
    rhs = (qz.log_prob(z) - ldj) - StandardNormal(4)().log_prob(eps)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    q_f = InverseFlowDistribution(qz, m.prior.transform)       # the IAF view evaluates the same density at eps
    assert torch.allclose(q_f.log_prob(eps), qz.log_prob(z) - ldj, atol=1e-3)
    assert not torch.allclose(m.prior().log_prob(z), StandardNormal(4)().log_prob(z)), "the prior should not be N(0, I) here"


def test_chapter3_experiments_build():
    for exp in (VLAE_MLP, VLAE_CIFAR10, *LOSSY):
        m = build_model(exp.model, **exp.model_kwargs)
        assert m.spec["name"] == exp.model
    assert VLAE_CIFAR10.data.dataset == "cifar10" and VLAE_CIFAR10.data.valid_split is None and VLAE_CIFAR10.data.test_n is None
    assert [e.evaluation.sample_noise for e in LOSSY] == [False, True, True]
    rf = [int(receptive_field(build_model(e.model, **e.model_kwargs).decoder, 14, 14).sum()) for e in LOSSY[1:]]
    assert rf == [4, 54], "the experiment names state the receptive fields"


def test_decoder_mean_for_dmol_and_samples_png(tmp_path):
    from lvmkit.experiments import save_samples
    m = conv_vae(z_dim=4).eval()
    s = m.sample(2, noise=False)                                # the mixture's sample_mean, in pixel units
    assert s.shape == (2, 3, 32, 32) and s.is_floating_point() and 0 <= s.min() and s.max() <= 255
    assert m.reconstruct(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 3, 32, 32)
    path = save_samples(m, tmp_path / "s.png", n=4, noise=True)      # integer pixels are scaled to [0, 1]
    from PIL import Image
    assert Image.open(path).size[0] > 32


def test_value_checks_survive_torch_compile_switching_off_validation():
    "torch.compile (dynamo) calls Distribution.set_default_validate_args(False); our likelihoods keep checking their values."
    from torch.distributions import Distribution
    from lvmkit.distributions import DiscretizedLogisticMixture
    old = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        px = tiny_decoder(4, 4)(torch.randn(2, 3))
        with pytest.raises(ValueError, match="binary"): px.log_prob(torch.rand(2, 1, 4, 4))
        d = DiscretizedLogisticMixture(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, 1, 1, 4, 4))
        with pytest.raises(ValueError): d.log_prob(torch.full((1, 4, 4), 300, dtype=torch.long))
    finally:
        Distribution.set_default_validate_args(old)
