"Flows: transform round trips and Jacobians, MADE's autoregressive property, flow distributions, flows inside the VAE."
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from lvmkit.distributions import MLP, ConditionalBernoulli, StandardNormal
from lvmkit.flows import (MADE, AffineAutoregressive, Compose, ConditionalIAF, FlowDistribution, FlowPrior,
                          InverseFlowDistribution, MaskedLinear, Permute, Reverse, Transform, check_autoregressive,
                          check_transform)
from lvmkit.testing import check_model
from lvmkit.models.vae import VAE


@pytest.fixture(autouse=True)
def _seed():
    "torch seeds its global generator randomly in each process: seed every test so that layer initialisations repeat."
    torch.manual_seed(0)


def perturb(module, std=0.3, seed=0, hidden_std=0.05):
    "Move a flow away from its near-identity start: output layers by `std`, hidden layers a little (masks are buffers and stay)."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_out = name.startswith("out.") or ".out." in name
            p.add_((std if is_out else hidden_std) * torch.randn(p.shape, generator=g))
    return module


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- permutations

@pytest.mark.parametrize("D", [1, 3, 7])
def test_reverse_and_permute(D):
    x = randn(6, D)
    perm = torch.randperm(D, generator=torch.Generator().manual_seed(D))
    for t in (Reverse(), Reverse(D), Permute(perm), Compose(Permute(perm), Reverse(D))):
        check_transform(t, x)
        z, ldj = t(x)
        assert torch.equal(t.inverse(z), x) and torch.equal(ldj, torch.zeros(6))
    assert torch.equal(Permute(perm)(x)[0], x[:, perm])
    assert torch.equal(Reverse()(x)[0], x[:, list(range(D))[::-1]])


def test_permute_rejects_non_permutations():
    for bad in ([0, 0, 1], [1, 2, 3], [[0, 1]]):
        with pytest.raises(ValueError, match="permutation"): Permute(bad)


# ---------------------------------------------------------------- the checks have teeth

class Scale(Transform):
    "z = c x with a configurable (possibly wrong) ldj and inverse."
    def __init__(self, c=2.0, ldj_per_dim=None, inv=None):
        super().__init__(); self.c, self.l, self.inv = c, ldj_per_dim, inv
    def forward(self, x, context=None):
        l = math.log(abs(self.c)) if self.l is None else self.l
        return self.c * x, torch.full(x.shape[:-1], l * x.shape[-1])
    def inverse(self, z, context=None):
        return z / self.c if self.inv is None else self.inv * z


class Mixing(Transform):
    "z = x W: a correct but dense (non-triangular) linear map, to test the Jacobian check on a full matrix."
    def __init__(self, D):
        super().__init__(); self.W = nn.Parameter(torch.eye(D) + 0.3 * randn(D, D, seed=5))
    def forward(self, x, context=None):
        return x @ self.W, torch.linalg.slogdet(self.W).logabsdet.expand(x.shape[:-1])
    def inverse(self, z, context=None):
        return z @ torch.linalg.inv(self.W)


def test_check_transform_passes_correct_and_catches_wrong_layers():
    x = randn(5, 4)
    check_transform(Scale(2.0), x)
    check_transform(Mixing(4), x)
    with pytest.raises(AssertionError, match="log\\|det"): check_transform(Scale(2.0, ldj_per_dim=0.0), x)
    with pytest.raises(AssertionError, match="log\\|det"): check_transform(Scale(2.0, ldj_per_dim=-math.log(2)), x)
    with pytest.raises(AssertionError, match="inverse"): check_transform(Scale(2.0, inv=0.49), x)

    class BadShape(Scale):
        def forward(self, x, context=None): return self.c * x, torch.zeros(())
    with pytest.raises(AssertionError, match="shape"): check_transform(BadShape(), x)


@pytest.mark.parametrize("breakage", ["dense_output", "hidden_leak", "empty_output", "one_row"])
def test_check_autoregressive_catches_broken_masks(breakage):
    m = MADE(6, [24, 24], ordering="random", seed=4)
    check_autoregressive(m, 6, m.ordering, complete=True)
    last, first = m.ordering[-1], m.ordering[0]
    with torch.no_grad():
        if breakage == "dense_output": m.out.mask.fill_(1)
        elif breakage == "hidden_leak": m.layers[0].mask[:, last] = 1        # the last coordinate leaks into everything
        elif breakage == "empty_output": m.out.mask.zero_()                  # every output ignores its past
        elif breakage == "one_row": m.out.mask[2 * first] = 1                # the first coordinate's shift now sees the inputs
    with pytest.raises(AssertionError):
        check_autoregressive(m, 6, m.ordering)


def test_check_autoregressive_complete_catches_blind_spots():
    m = MADE(5, [16])
    with torch.no_grad(): m.layers[0].mask[:, 1] = 0                        # input 1 reaches nothing
    check_autoregressive(m, 5, m.ordering)                                   # still causal, and every output sees something ...
    with pytest.raises(AssertionError, match="blind"):
        check_autoregressive(m, 5, m.ordering, complete=True)                # ... but not everything it may see


# ---------------------------------------------------------------- MADE

@pytest.mark.parametrize("seed", range(8))
def test_made_autoregressive_random_configs(seed):
    g = torch.Generator().manual_seed(100 + seed)
    D = int(torch.randint(2, 14, (1,), generator=g))
    n_layers = seed % 4                                                       # 0..3 hidden layers
    hidden = [int(h) for h in torch.randint(6 * D, 8 * D, (n_layers,), generator=g)]
    C = None if seed % 2 else int(torch.randint(1, 6, (1,), generator=g))
    P = 1 + seed % 3
    degrees = "random" if seed % 3 == 0 else "equal"
    ordering = ["natural", "reversed", "random", torch.randperm(D, generator=g)][seed % 4]
    m = perturb(MADE(D, hidden, P, C, ordering, degrees, seed=seed), seed=seed)
    ctx = None if C is None else randn(32, C, seed=seed)
    out = m(randn(32, D), ctx)
    assert out.shape == (32, D, P)
    check_autoregressive(m, D, m.ordering, ctx)
    # with a smooth activation no unit is ever dead, so equal degrees must give no blind spot at all
    smooth = perturb(MADE(D, hidden, P, C, ordering, degrees, activation=nn.Tanh, seed=seed), seed=seed)
    check_autoregressive(smooth, D, smooth.ordering, ctx, complete=degrees == "equal")
    if ctx is not None:                                                       # the context reaches every output, the first too
        jac = torch.autograd.functional.jacobian(lambda c: m(randn(32, D), c).sum(0), ctx)  # (D, P, 32, C)
        assert (jac.abs().sum((1, 2, 3)) > 0).all()


def test_made_context_in_the_first_layer_only():
    "context_to_output=False (the altosaar seed's MADE): no context weight in the output layer, still autoregressive; the context reaches every output but the first."
    m = perturb(MADE(6, [24, 24], 2, context_features=3, context_to_output=False), seed=1)
    assert m.out.context is None and m.layers[0].context is not None and m.layers[1].context is None
    full = MADE(6, [24, 24], 2, context_features=3)
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in m.parameters()) == 3 * 12     # C x (D * P)
    ctx = randn(32, 3, seed=2)
    check_autoregressive(m, 6, m.ordering, ctx)
    jac = torch.autograd.functional.jacobian(lambda c: m(randn(32, 6), c).sum(0), ctx).abs().sum((1, 2, 3))   # (D,): in the natural ordering
    assert jac[0] == 0 and (jac[1:] > 0).all()                                  # no hidden unit reaches the first output: its parameters are constants
    with pytest.raises(ValueError, match="would ignore it"):
        MADE(6, [], 2, context_features=3, context_to_output=False)


def mask_paths(m):
    "Boolean (D, D) matrix: is there a path through the masks from input j to (any parameter of) output i?"
    paths = torch.eye(m.features)
    for layer in [*m.layers, m.out]: paths = (layer.mask @ paths > 0).float()
    return paths.reshape(m.features, m.params_per_dim, m.features).amax(1) > 0


@pytest.mark.parametrize("D,hidden,ordering", [(1, [4], "natural"), (2, [1], "random"), (5, [4], "natural"), (7, [6, 6], "random"),
                                               (10, [30, 9, 40], "reversed"), (6, [], "random")])
def test_made_masks_connect_exactly_the_earlier_inputs(D, hidden, ordering):
    m = MADE(D, hidden, 3, ordering=ordering, seed=D)
    rank = torch.empty(D, dtype=torch.long); rank[m.ordering] = torch.arange(D)
    assert torch.equal(mask_paths(m), rank[None, :] < rank[:, None])     # equal degrees, >= D-1 units: complete and causal


def test_made_orderings_and_degrees_are_reproducible():
    a, b = MADE(7, [20], ordering="random", hidden_degrees="random", seed=3), MADE(7, [20], ordering="random", hidden_degrees="random", seed=3)
    assert torch.equal(a.ordering, b.ordering) and torch.equal(a.layers[0].mask, b.layers[0].mask)
    assert torch.equal(MADE(4, [8], ordering="reversed").ordering, torch.tensor([3, 2, 1, 0]))
    assert torch.equal(MADE(4, [8], ordering=[2, 0, 3, 1]).ordering, torch.tensor([2, 0, 3, 1]))
    assert any(n.endswith("mask") for n, _ in a.named_buffers())              # masks are saved with the model


def test_masked_linear_uses_the_mask_without_touching_the_weight():
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    m = MaskedLinear(2, 2, mask)
    w = m.weight.detach().clone()
    x = randn(3, 2, seed=1).requires_grad_()
    m(x).sum().backward()
    assert torch.equal(m.weight, w) and m.weight.grad[0, 1] == 0 and m.weight.grad[1, 1] != 0
    with pytest.raises(ValueError, match="mask must have shape"): MaskedLinear(2, 3, mask)


# ---------------------------------------------------------------- affine autoregressive layers

CASES = [(D, gated, C, ordering) for D in (1, 2, 5, 9) for gated in (False, True) for C in (None, 3)
         for ordering in ("natural", "random")]

@pytest.mark.parametrize("D,gated,C,ordering", CASES)
def test_affine_autoregressive_contract(D, gated, C, ordering):
    seed = D * 7 + gated * 3 + (C or 0)
    t = perturb(AffineAutoregressive(D, (8 * D, 8 * D), C, ordering, gated, seed=seed), seed=seed)
    ctx = None if C is None else randn(16, C, seed=seed + 1)
    x = randn(16, D, seed=seed + 2)
    check_transform(t, x, ctx)
    if D > 1:
        check_autoregressive(t.made, D, t.ordering, ctx)
        check_autoregressive(t, D, t.ordering, ctx, strict=False)
        smooth = perturb(AffineAutoregressive(D, (D + 2,), C, ordering, gated, activation=nn.Tanh, seed=seed), seed=seed)
        check_transform(smooth, x, ctx)
        check_autoregressive(smooth, D, smooth.ordering, ctx, strict=False, complete=True)
    z, ldj = t(randn(3, 16, D), None if C is None else ctx.expand(3, 16, C))   # leading sample dimension
    assert z.shape == (3, 16, D) and ldj.shape == (3, 16)


@pytest.mark.parametrize("gated", [False, True])
def test_affine_autoregressive_starts_near_identity_and_bounds_the_scale(gated):
    t = AffineAutoregressive(6, (32, 32), gated=gated)
    x = randn(100, 6)
    z, ldj = t(x)
    if gated:   # sigma = sigmoid(2) at init, as in the IAF paper and the seed
        assert torch.allclose(ldj, torch.full((100,), 6 * math.log(torch.sigmoid(torch.tensor(2.0)).item())), atol=0.05)
    else:
        assert (z - x).abs().max() < 0.2 and ldj.abs().max() < 0.2
    with torch.no_grad(): t.made.out.bias.fill_(1e4)                         # an exploding pre-activation
    log_s, shift = t.log_scale_shift(x)
    assert torch.isfinite(log_s).all() and torch.isfinite(shift).all()
    if not gated: assert (log_s.abs() <= 3.0 + 1e-6).all()                  # the soft clamp bounds the scale


def test_the_gated_step_is_the_iaf_update():
    t = perturb(AffineAutoregressive(4, (16,), 2, "random", gated=True, seed=1), seed=1)
    x, ctx = randn(8, 4), randn(8, 2, seed=1)
    m, s = t.made(x, ctx).unbind(-1)
    sigma = torch.sigmoid(s)
    z, ldj = t(x, ctx)
    assert torch.allclose(z, sigma * x + (1 - sigma) * m, atol=1e-6)      # Kingma et al. 2016, eq. 14; altosaar's flow.py
    assert torch.allclose(ldj, sigma.log().sum(-1), atol=1e-5)


def test_the_plain_step_is_the_vlae_prior_update():
    t = perturb(AffineAutoregressive(4, (16,), seed=1), seed=1)
    x = randn(8, 4)
    mu, b = t.made(x).unbind(-1)
    log_sigma = 3 * torch.tanh(b / 3)
    z, ldj = t(x)
    assert torch.allclose(z, x * log_sigma.exp() + mu, atol=1e-6) and torch.allclose(ldj, log_sigma.sum(-1), atol=1e-5)


@pytest.mark.parametrize("gated,C", [(False, None), (True, 4)])
def test_gradients_reach_every_parameter_both_directions(gated, C):
    t = perturb(AffineAutoregressive(5, (16, 16), C, "random", gated, seed=2), seed=2)
    ctx = None if C is None else randn(8, C, seed=3)
    for direction in ("forward", "inverse"):
        t.zero_grad(set_to_none=True)
        if direction == "forward":
            z, ldj = t(randn(8, 5), ctx); loss = (z ** 2).sum() + ldj.sum()
        else:
            loss = (t.inverse(randn(8, 5), ctx) ** 2).sum()
        loss.backward()
        dead = [n for n, p in t.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        assert not dead, f"{direction}: no gradient for {dead}"


def test_inverse_is_differentiable_and_matches_finite_differences():
    t = perturb(AffineAutoregressive(3, (8,), seed=1), seed=1).double()
    z = randn(4, 3).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda z_: t.inverse(z_), (z,))


# ---------------------------------------------------------------- flow distributions

def test_flow_distribution_1d_matches_the_closed_form_gaussian():
    t = perturb(AffineAutoregressive(1, (8,)), std=1.0, seed=4)
    p = FlowDistribution(StandardNormal(1)(), t)
    log_s, m = (v.item() for v in t.log_scale_shift(torch.zeros(1, 1)))
    x = torch.linspace(-5, 5, 21)[:, None]
    exact = Normal(-m / math.exp(log_s), math.exp(-log_s)).log_prob(x[:, 0])
    assert torch.allclose(p.log_prob(x), exact, atol=1e-5)
    s = p.sample((20000,))
    assert abs(s.mean().item() + m / math.exp(log_s)) < 0.05 * (1 + math.exp(-log_s))


@pytest.mark.parametrize("gated", [False, True])
def test_flow_distribution_2d_integrates_to_one(gated):
    t = perturb(Compose(AffineAutoregressive(2, (16, 16), gated=gated, activation=nn.Tanh), Reverse(2),   # tanh: bounded shifts,
                        AffineAutoregressive(2, (16, 16), ordering="reversed", gated=gated, activation=nn.Tanh, seed=1)),
                std=0.3, seed=7)                                                                 # so the tails stay on the grid
    p = FlowDistribution(StandardNormal(2)(), t)
    grid = torch.linspace(-12, 12, 481)
    xx = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad(): mass = p.log_prob(xx).exp().sum().item() * (grid[1] - grid[0]).item() ** 2
    assert abs(mass - 1) < 1e-2, mass


def test_flow_distribution_shapes_context_and_rsample_gradients():
    B, D, C = 4, 3, 2
    t = perturb(AffineAutoregressive(D, (16,), C, "random", seed=3), seed=3)
    base = Independent(Normal(torch.zeros(B, D), torch.ones(B, D)), 1)
    ctx = randn(B, C)
    p = FlowDistribution(base, t, ctx)
    x = p.rsample((5,))
    assert x.shape == (5, B, D) and p.log_prob(x).shape == (5, B) and p.sample().shape == (B, D)
    # sampling inverts the density direction: transform(sample) recovers the base draw
    torch.manual_seed(0); x = p.rsample((2,))
    torch.manual_seed(0); eps = base.rsample((2,))
    assert torch.allclose(t(x, ctx.expand(2, B, C))[0], eps, atol=1e-5)
    x.sum().backward()
    assert all(q.grad is not None for q in t.parameters())


@pytest.mark.parametrize("S", [None, 3])
def test_inverse_flow_sample_and_its_log_prob_in_one_pass_equal_the_exact_one(S):
    B, D, C = 5, 4, 3
    base = Independent(Normal(randn(B, D, seed=1), torch.rand(B, D) + 0.5), 1)
    flow = perturb(Compose(AffineAutoregressive(D, (16, 16), C, gated=True), Reverse(D),
                           AffineAutoregressive(D, (16, 16), C, "random", gated=True, seed=1)), seed=2)
    q = InverseFlowDistribution(base, flow, randn(B, C, seed=3))
    shape = (B,) if S is None else (S, B)
    z, fast = q.rsample_and_log_prob(() if S is None else (S,))
    assert z.shape == (*shape, D) and fast.shape == shape
    slow = q.log_prob(z)
    assert torch.allclose(fast, slow, atol=1e-4), (fast - slow).abs().max()
    # and both equal log q0(eps) - ldj for the eps that produced z
    eps = flow.inverse(z.detach(), q.context.expand(*shape, C))
    assert torch.allclose(slow, base.log_prob(eps) - flow(eps, q.context.expand(*shape, C))[1], atol=1e-5)
    # the one-pass log q carries gradients to the flow and the base, like rsample
    fast.sum().backward()
    assert all(p.grad is not None for p in flow.parameters())


def test_inverse_flow_log_prob_always_inverts():
    "No identity cache: log_prob(z) of rsample's own tensor runs the inverse, like any other value."
    base = Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1)
    t = perturb(AffineAutoregressive(3, (8,), gated=True), seed=1)
    q = InverseFlowDistribution(base, t)
    calls = []
    inverse = t.inverse
    t.inverse = lambda z, context=None: calls.append(1) or inverse(z, context)
    z = q.rsample((4,))
    assert not calls
    lp = q.log_prob(z)
    assert calls == [1] and lp.shape == (4, 2) and not hasattr(q, "_cache")
    torch.manual_seed(5); z1, lq1 = q.rsample_and_log_prob()
    torch.manual_seed(5); z2 = q.rsample()
    assert torch.equal(z1, z2) and torch.allclose(lq1, q.log_prob(z2), atol=1e-5)


def test_inverse_flow_normalises_in_1d():
    base = Independent(Normal(torch.zeros(1), torch.ones(1)), 1)
    q = InverseFlowDistribution(base, perturb(AffineAutoregressive(1, (4,), gated=True), std=1.0))
    x = torch.linspace(-10, 10, 4001)[:, None]
    with torch.no_grad(): mass = q.log_prob(x).exp().sum().item() * (x[1] - x[0]).item()
    assert abs(mass - 1) < 1e-3


def test_kl_divergence_is_not_available_for_flows():
    base = StandardNormal(2)()
    t = AffineAutoregressive(2, (8,))
    for a, b in [(InverseFlowDistribution(base, t), base), (base, FlowDistribution(base, t)),
                 (InverseFlowDistribution(base, t), FlowDistribution(base, t))]:
        with pytest.raises(NotImplementedError, match="Monte-Carlo"): kl_divergence(a, b)


# ---------------------------------------------------------------- flows inside the VAE

X_SHAPE, Z = (1, 6, 6), 4

def binary(n=12, seed=0):
    return (torch.rand(n, *X_SHAPE, generator=torch.Generator().manual_seed(seed)) < 0.3).float()

def decoder():
    return ConditionalBernoulli(MLP([Z, 32, 36], nn.ReLU), X_SHAPE)


def test_vae_with_iaf_posterior_passes_check_model():
    torch.manual_seed(0)
    vae = VAE(ConditionalIAF(36, Z, hidden=(32,), steps=2, made_hidden=(16, 16)), decoder(), StandardNormal(Z), X_SHAPE, binary=True)
    check_model(vae, binary())
    with pytest.raises(NotImplementedError): vae.elbo_terms(binary(), analytic_kl=True)
    qz = vae.encoder(binary())
    assert isinstance(qz, InverseFlowDistribution) and qz.batch_shape == (12,) and qz.event_shape == (Z,)


def test_vae_with_flow_prior_passes_check_model():
    torch.manual_seed(0)
    vae = VAE(ConditionalIAF(36, Z, hidden=(32,), steps=1), decoder(), FlowPrior(Z, hidden=(32, 32), steps=2), X_SHAPE, binary=True)
    check_model(vae, binary())
    assert vae.sample(5).shape == (5, *X_SHAPE)
    assert vae.prior().log_prob(torch.randn(3, 7, Z)).shape == (3, 7)


# ---------------------------------------------------------------- bad input

def test_bad_inputs_are_named():
    t = AffineAutoregressive(4, (8,))
    tc = AffineAutoregressive(4, (8,), context_features=3)
    for call in (lambda: t(torch.randn(2, 5)), lambda: t.inverse(torch.randn(2, 3)), lambda: Permute([1, 0])(torch.randn(2, 3)),
                 lambda: Reverse(4).inverse(torch.randn(2, 5)), lambda: MADE(4, [8])(torch.randn(2, 6))):
        with pytest.raises(ValueError, match="event size"): call()
    with pytest.raises(ValueError, match=r"expects x with event size 4, shape \(\*batch, 4\), got shape \(2, 5\)"): t(torch.randn(2, 5))
    with pytest.raises(ValueError, match="needs a context"): tc(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"context of shape \(2, 3\).*got \(2, 2\)"): tc(torch.randn(2, 4), torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"context of shape \(2, 3\).*got \(5, 3\)"): tc.inverse(torch.randn(2, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="without context"): t(torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(TypeError, match="Tensor"): t([[0.0] * 4])
    with pytest.raises(ValueError, match="ordering"): MADE(4, [8], ordering="sideways")
    with pytest.raises(ValueError, match="permutation"): MADE(4, [8], ordering=[0, 1, 1, 2])
    with pytest.raises(ValueError, match="hidden_degrees"): MADE(4, [8], hidden_degrees="uniform")
    with pytest.raises(ValueError, match="positive hidden"): MADE(4, [0])
    with pytest.raises(ValueError, match="broadcast"):
        FlowDistribution(StandardNormal(4)(), tc, torch.randn(2, 3)).log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match="event_shape"): FlowDistribution(Normal(0.0, 1.0), t)
    with pytest.raises(TypeError, match="Transform"): FlowDistribution(StandardNormal(4)(), nn.Identity())
    with pytest.raises(TypeError, match="Transform"): Compose(Reverse(), nn.Identity())
    with pytest.raises(ValueError, match="steps"): ConditionalIAF(36, Z, steps=0)
