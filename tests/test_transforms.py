"Transforms of every SurVAE kind: flags, event shapes, what check_transform demands of each kind (with broken layers), and the Flow model."
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from lvmkit.distributions import StandardNormal
from lvmkit.flows import (ActNorm, AffineAutoregressive, Compose, Flow, FlowDistribution, InverseFlowDistribution, Permute, Reshape,
                          Reverse, Transform, check_transform)
from lvmkit.testing import check_model

N01 = Normal(0.0, 1.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def std_normal_log_prob(z):
    return N01.log_prob(z).flatten(1).sum(-1)


# ---------------------------------------------------------------- small layers of each kind, and broken variants

class Slice(Transform):
    "Inference surjection: keep x[:, :d]; the inverse draws the rest from N(0, I); ldj = log N(x[:, d:]) (exact)."
    stochastic_inverse = True
    def __init__(self, d, D, ldj_offset=0.0):
        super().__init__(); self.d, self.D, self.offset = d, D, ldj_offset
    def forward(self, x, context=None):
        return x[:, :self.d], N01.log_prob(x[:, self.d:]).sum(-1) + self.offset
    def inverse(self, z, context=None):
        return torch.cat([z, torch.randn(z.shape[0], self.D - self.d)], -1)


class Dequantize(Transform):
    "Generative surjection: z = x + u, u ~ U[0, 1); inverse floor; ldj = -log q(u|x) = 0 (+ a deliberate offset)."
    stochastic_forward = True
    def __init__(self, ldj_offset=0.0):
        super().__init__(); self.offset = ldj_offset
    def forward(self, x, context=None):
        return x + torch.rand_like(x), torch.full(x.shape[:1], self.offset)
    def inverse(self, z, context=None):
        return z.floor()


def dequantized_log_prob(x):
    "log P(x) for integer x when z = x + u has a standard normal density: prod_i Phi(x_i + 1) - Phi(x_i)."
    return (N01.cdf(x + 1) - N01.cdf(x)).log().sum(-1)


class GaussianLayer(Transform):
    """Stochastic (a VAE layer): q(z|x) = N(a x, s^2), p(x|z) = N(z, 1); ldj = log p(x|z) - log q(z|x).
    With p(z) = N(0, 1) the model is p(x) = N(0, 2) per coordinate."""
    stochastic_forward = stochastic_inverse = True
    def __init__(self, a=0.4, s=0.6, drop_q=False):
        super().__init__(); self.a, self.s, self.drop_q = a, s, drop_q
    def forward(self, x, context=None):
        q = Normal(self.a * x, self.s)
        z = q.sample()
        ldj = Normal(z, 1.0).log_prob(x).sum(-1) - (0 if self.drop_q else q.log_prob(z).sum(-1))
        return z, ldj
    def inverse(self, z, context=None):
        return z + torch.randn_like(z)


def exact_gaussian_layer_log_prob(x):
    return Normal(0.0, math.sqrt(2.0)).log_prob(x).sum(-1)


class NoisyIdentity(Transform):
    "Claims to be a bijection but adds noise in forward: the determinism check must catch it."
    def forward(self, x, context=None): return x + 1e-2 * torch.randn_like(x), x.new_zeros(x.shape[0])
    def inverse(self, z, context=None): return z


class ImageScale(Transform):
    "z = 2 x on any event shape, with ldj counting (correct) or not counting (broken) the pixels."
    def __init__(self, count_pixels=True):
        super().__init__(); self.count = count_pixels
    def forward(self, x, context=None):
        n = x[0].numel() if self.count else x.shape[1]
        return 2 * x, torch.full(x.shape[:1], n * math.log(2))
    def inverse(self, z, context=None): return z / 2


# ---------------------------------------------------------------- flags

def test_flags_name_the_four_kinds_and_compose_aggregates_them():
    layers = {"bijection": Reverse(), "inference surjection": Slice(1, 3), "generative surjection": Dequantize(),
              "stochastic": GaussianLayer()}
    for kind, t in layers.items():
        assert t.kind == kind and t.bijective == (kind == "bijection")
    assert Compose(Reverse(), Permute([1, 0])).bijective
    c = Compose(Dequantize(), Reverse(), Slice(1, 2))
    assert c.stochastic_forward and c.stochastic_inverse and c.kind == "stochastic" and not c.bijective
    assert Compose(Reverse(), Slice(1, 2)).kind == "inference surjection"
    assert Compose(Dequantize(), Reverse()).kind == "generative surjection"
    assert AffineAutoregressive(3, (8,)).bijective and ActNorm(3).bijective and Reshape((2, 2), (4,)).bijective


def test_bijective_cannot_be_set_by_hand():
    with pytest.raises(TypeError, match="stochastic_forward"):
        class Bad(Transform): bijective = False


# ---------------------------------------------------------------- event shapes

def test_reverse_permute_reshape_on_images():
    x = randn(3, 2, 4, 5)                                                         # (B, C, H, W)
    cases = [(Reverse(2, dim=-3), x.flip(1)), (Reverse(dim=-1, event_dims=3), x.flip(-1)),
             (Permute([2, 0, 3, 1], dim=-2, event_dims=3), x[:, :, [2, 0, 3, 1]]), (Reshape((2, 4, 5), (40,)), x.reshape(3, 40))]
    for t, want in cases:
        z, ldj = t(x)
        assert torch.equal(z, want) and torch.equal(ldj, torch.zeros(3)) and torch.equal(t.inverse(z), x)
        check_transform(t, x)
    z, ldj = Reverse(dim=-1, event_dims=3)(randn(6, 3, 2, 4, 5))                  # leading sample dimension: ldj (6, 3)
    assert ldj.shape == (6, 3)


def test_event_shape_errors_are_named():
    with pytest.raises(ValueError, match="from the end"): Reverse(dim=1)
    with pytest.raises(ValueError, match="must lie in the event"): Permute([1, 0], dim=-3, event_dims=2)
    with pytest.raises(ValueError, match=r"size 2 along dim -3, got shape \(3, 4, 4, 4\)"): Reverse(2, dim=-3)(randn(3, 4, 4, 4))
    with pytest.raises(ValueError, match="event of 3 dimensions"): ActNorm(2, dim=-3)(randn(4, 2))
    with pytest.raises(ValueError, match=r"Reshape expects x of shape \(\*batch, 2, 4\)"): Reshape((2, 4), (8,))(randn(3, 4, 2))
    with pytest.raises(ValueError, match=r"Reshape expects z"): Reshape((2, 4), (8,)).inverse(randn(3, 7))
    with pytest.raises(ValueError, match="same number of elements"): Reshape((2, 4), (7,))


def test_actnorm_data_init_and_ldj_on_vectors_and_images():
    x = 3 + 2 * randn(256, 3, 2, 2)
    act = ActNorm(3, dim=-3)
    act.data_init(x)
    z, ldj = act(x)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5) and torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    assert torch.allclose(ldj, torch.full((256,), 4 * act.log_scale.sum().item()))   # 4 pixels share each channel's scale
    check_transform(act, x[:5])
    vec = ActNorm(4)
    with torch.no_grad(): vec.log_scale.copy_(randn(4)); vec.shift.copy_(randn(4, seed=1))
    check_transform(vec, randn(6, 4))
    z, ldj = vec(randn(5, 6, 4))
    assert ldj.shape == (5, 6)
    with pytest.raises(ValueError, match="at least 2 values"): ActNorm(3).data_init(randn(1, 3))


def test_compose_data_init_passes_what_reaches_each_layer():
    x = 5 + 3 * randn(512, 2)
    t = Compose(ActNorm(2), Reverse(2), ActNorm(2))
    t.data_init(x)
    assert torch.allclose(t.transforms[2].log_scale, torch.zeros(2), atol=1e-4)      # the second ActNorm sees standardised data


# ---------------------------------------------------------------- check_transform, one branch at a time

def test_bijection_branch_on_images():
    x = randn(4, 2, 3, 3)
    check_transform(ImageScale(), x)
    with pytest.raises(AssertionError, match="log\\|det"): check_transform(ImageScale(count_pixels=False), x)
    check_transform(ImageScale(), x, latent_log_prob=std_normal_log_prob,
                    exact_log_prob=lambda x_: std_normal_log_prob(2 * x_) + 18 * math.log(2))
    with pytest.raises(AssertionError, match="exact log p"):
        check_transform(ImageScale(), x, latent_log_prob=std_normal_log_prob, exact_log_prob=std_normal_log_prob)


def test_a_forward_flagged_deterministic_must_be():
    with pytest.raises(AssertionError, match="two calls differ"): check_transform(NoisyIdentity(), randn(4, 3))


def test_inference_surjection_branch():
    x = randn(8, 5)
    check_transform(Slice(2, 5), x, latent_log_prob=std_normal_log_prob, exact_log_prob=std_normal_log_prob)

    class NotARightInverse(Slice):
        def inverse(self, z, context=None): return torch.randn(z.shape[0], self.D)
    with pytest.raises(AssertionError, match=r"forward\(inverse\(z\)\)"): check_transform(NotARightInverse(2, 5), x)

    class WrongShape(Slice):
        def inverse(self, z, context=None): return z
    with pytest.raises(AssertionError, match="data shape"): check_transform(WrongShape(2, 5), x)
    with pytest.raises(AssertionError, match="exact log p"):                          # an inference surjection is exact
        check_transform(Slice(2, 5, ldj_offset=-0.5), x, latent_log_prob=std_normal_log_prob, exact_log_prob=std_normal_log_prob)


def test_generative_surjection_branch():
    x = torch.randint(-2, 2, (6, 2)).float()
    check_transform(Dequantize(), x, latent_log_prob=std_normal_log_prob, exact_log_prob=dequantized_log_prob)
    check_transform(Dequantize(ldj_offset=1.0), x)                                   # without a known likelihood only the round trip
    with pytest.raises(AssertionError, match="above the exact"):
        check_transform(Dequantize(ldj_offset=1.0), x, latent_log_prob=std_normal_log_prob, exact_log_prob=dequantized_log_prob)
    with pytest.raises(AssertionError, match="does not approach"):                  # a valid but loose bound of the wrong thing
        check_transform(Dequantize(ldj_offset=-0.5), x, latent_log_prob=std_normal_log_prob, exact_log_prob=dequantized_log_prob)

    class RoundsInstead(Dequantize):
        def inverse(self, z, context=None): return z.round()
    with pytest.raises(AssertionError, match=r"inverse\(forward\(x\)\)"): check_transform(RoundsInstead(), x)


def test_stochastic_branch():
    x = randn(5, 3)
    check_transform(GaussianLayer(), x, latent_log_prob=std_normal_log_prob, exact_log_prob=exact_gaussian_layer_log_prob,
                    n_samples=4000)
    with pytest.raises(AssertionError, match="does not approach"):
        check_transform(GaussianLayer(drop_q=True), x, latent_log_prob=std_normal_log_prob,
                        exact_log_prob=exact_gaussian_layer_log_prob, n_samples=4000)


def test_check_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="both"): check_transform(Reverse(), randn(3, 2), latent_log_prob=std_normal_log_prob)
    with pytest.raises(ValueError, match=r"batch \(B, \*event\)"): check_transform(Reverse(), randn(3))
    with pytest.raises(TypeError, match="Transform"): check_transform(nn.Identity(), randn(3, 2))

    class BatchlessLdj(ImageScale):
        def forward(self, x, context=None): return 2 * x, torch.zeros(())
    with pytest.raises(AssertionError, match="ldj must have shape"): check_transform(BatchlessLdj(), randn(3, 2))


# ---------------------------------------------------------------- the Flow model

def two_d_flow():
    flow = Flow(StandardNormal(2), [AffineAutoregressive(2, (16, 16), activation=nn.Tanh), Reverse(2),
                                    AffineAutoregressive(2, (16, 16), activation=nn.Tanh, seed=1)])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in flow.named_parameters(): p.add_((0.3 if ".out." in name else 0.05) * torch.randn(p.shape, generator=g))
    return flow


def test_exact_flow_integrates_to_one_and_passes_the_model_contract():
    flow = two_d_flow()
    assert flow.log_prob_exact
    grid = torch.linspace(-12, 12, 481)
    xx = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad(): mass = flow.log_prob(xx).exp().sum().item() * (grid[1] - grid[0]).item() ** 2
    assert abs(mass - 1) < 1e-2, mass
    x = randn(7, 2)
    check_model(flow, x)
    w = flow.log_weights(x, 4)
    assert w.shape == (4, 7) and torch.allclose(w, flow.log_prob(x).expand(4, 7))
    assert flow.sample(5).shape == (5, 2)
    # sampling runs the inverse: the transforms map a sample back to the base draw
    torch.manual_seed(1); s = flow.sample(3)
    torch.manual_seed(1); z = flow.base_dist().sample((3,))
    assert torch.allclose(flow.transform(s)[0], z, atol=1e-5)


def test_flow_equals_flow_distribution_with_the_same_transform():
    t = Compose(AffineAutoregressive(3, (8,)), Reverse(3))
    x = randn(4, 3)
    assert torch.allclose(Flow(StandardNormal(3), t).log_prob(x), FlowDistribution(StandardNormal(3)(), t).log_prob(x))
    assert torch.allclose(Flow(StandardNormal(3)(), [t]).log_prob(x), Flow(StandardNormal(3), t).log_prob(x))   # a Distribution base


def test_image_flow_with_data_init():
    x = 2 + 3 * randn(32, 1, 2, 3)
    flow = Flow(StandardNormal(6), [ActNorm(1, dim=-3), Reshape((1, 2, 3), (6,)), AffineAutoregressive(6, (24,))])
    flow.data_init(x)
    assert torch.allclose(flow.transform.transforms[0](x)[0].std(), torch.tensor(1.0), atol=1e-4)
    check_model(flow, x)
    assert flow.sample(4).shape == (4, 1, 2, 3) and flow.log_weights(x, 3).shape == (3, 32)


def test_a_flow_with_a_stochastic_forward_layer_is_a_bound():
    x = torch.tensor([[-3.0, 1.0], [2.0, -2.0], [1.0, 1.0], [-2.0, 2.0], [-3.0, -3.0]])     # away from 0: a clear gap
    flow = Flow(StandardNormal(2), [Dequantize()])
    assert not flow.log_prob_exact and Flow(StandardNormal(2), [Reverse(), Slice(2, 2)]).log_prob_exact
    w = flow.log_weights(x, 10000)                                                    # (k, B), independent draws
    assert w.shape == (10000, 5) and (w.std(0) > 0).all()
    exact = dequantized_log_prob(x)
    assert (w.mean(0) < exact).all()                                                  # the average is a bound ...
    assert torch.allclose(w.logsumexp(0) - math.log(10000), exact, atol=0.03)          # ... that importance weighting tightens
    lp1, lp2 = flow.log_prob(x), flow.log_prob(x)
    assert lp1.shape == (5,) and not torch.equal(lp1, lp2)                            # a fresh sample at each call


def test_flow_bad_inputs_are_named():
    with pytest.raises(TypeError, match="Distribution or an nn.Module"): Flow("normal", [Reverse()])
    with pytest.raises(TypeError, match="sequence"): Flow(StandardNormal(2), Reverse)
    with pytest.raises(TypeError, match="Transform"): Flow(StandardNormal(2), [nn.Identity()])
    with pytest.raises(ValueError, match="batch_shape"): Flow(Normal(torch.zeros(2), torch.ones(2)), [Reverse()])
    class NotADistribution(nn.Module):
        def forward(self): return torch.zeros(2)
    with pytest.raises(TypeError, match="must return a Distribution"): Flow(NotADistribution(), [Reverse()])
    flow = Flow(StandardNormal(2), [Reverse()])
    with pytest.raises(ValueError, match=r"base has event shape \(2,\)"): flow.log_prob(randn(4, 3))
    with pytest.raises(ValueError, match=r"batch x of shape \(B, \*x_shape\)"): flow.log_prob(randn(2))
    with pytest.raises(ValueError, match="k must be >= 1"): flow.log_weights(randn(4, 2), 0)
    with pytest.raises(TypeError, match="Tensor"): flow.log_prob([[0.0, 1.0]])


def test_flow_distributions_need_bijections():
    for cls in (FlowDistribution, InverseFlowDistribution):
        with pytest.raises(ValueError, match="needs a bijection, got a generative surjection"): cls(StandardNormal(2)(), Dequantize())
    with pytest.raises(ValueError, match="Flow model"): FlowDistribution(Independent(Normal(torch.zeros(2, 2), 1.0), 2), Reverse())


def test_flow_speaks_the_model_protocol_and_the_iw_estimator_uses_it():
    from lvmkit.objectives import iw_log_likelihood
    from lvmkit.protocol import GenerativeModel, HasDataInit, HasInputCheck
    flow = two_d_flow()
    assert isinstance(flow, GenerativeModel) and isinstance(flow, HasDataInit) and isinstance(flow, HasInputCheck)
    x = randn(6, 2)
    ll, _ = iw_log_likelihood(flow, x, k=50, chunk_size=7)
    assert torch.allclose(ll, flow.log_prob(x), atol=1e-5)                            # exact: every weight is log p(x)
    xq = torch.tensor([[-3.0, 1.0], [2.0, -2.0], [1.0, 1.0]])
    deq = Flow(StandardNormal(2), [Dequantize()])
    ll, elbo = iw_log_likelihood(deq, xq, k=20000, chunk_size=5000)
    exact = dequantized_log_prob(xq)
    assert torch.allclose(ll, exact, atol=0.03) and (elbo < exact - 0.05).all()      # the bound tightens with k
