"Chapter 7 (SurVAE flows): the contract of every transform, brute-force checks of the surjections' contributions, bad input, the models."
import itertools, math
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal
from lvmkit.flows import Flow, check_transform, AffineAutoregressive
from lvmkit.distributions import StandardNormal
from lvmkit.objectives import iw_log_likelihood
from lvmkit.core import build_model
from lvmkit.models.survae import (ElementwiseAffine, Logit, SoftplusInverse, AffineCoupling, Conv1x1, Squeeze, UniformDequantization,
                                  VariationalDequantization, Augment, Slice, Abs, Sort, RandomPermutation, MaxPool2d, VAELayer, ImageFlow,
                                  image_flow, symmetric_2d, symmetric_2d_log_prob, symmetric_2d_entropy, SYMMETRIC_2D, plain_flow_2d, abs_flow_2d,
                                  SetCoupling, sort_flow, permute_flow, spatial_mnist)


def _randomise(m: nn.Module, std: float = 0.3) -> nn.Module:
    "Move every parameter away from its (often identity) initialisation."
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * std)
    return m

PIXELS = lambda *s: torch.randint(0, 256, s).float()

# (name, layer factory, input factory): every transform of the chapter on small inputs of several event shapes
CASES = [
    ("affine-vector", lambda: _randomise(ElementwiseAffine((3,))), lambda: torch.randn(5, 3)),
    ("affine-image", lambda: _randomise(ElementwiseAffine((2, 3, 3))), lambda: torch.randn(4, 2, 3, 3)),
    ("logit", lambda: Logit(), lambda: torch.rand(5, 3) * 0.9 + 0.05),
    ("softplus-inverse", lambda: SoftplusInverse(), lambda: torch.rand(5, 3) * 4 + 0.01),
    ("coupling-vector", lambda: _randomise(AffineCoupling(4, hidden=(16,))), lambda: torch.randn(5, 4)),
    ("coupling-odd-swap", lambda: _randomise(AffineCoupling(5, hidden=(16,), swap=True)), lambda: torch.randn(5, 5)),
    ("coupling-image", lambda: _randomise(AffineCoupling(3, dim=-3, hidden=(8,))), lambda: torch.randn(2, 3, 4, 4)),
    ("conv1x1-image", lambda: _randomise(Conv1x1(4), 0.2), lambda: torch.randn(2, 4, 3, 3)),
    ("conv1x1-vector", lambda: _randomise(Conv1x1(3, dim=-1), 0.2), lambda: torch.randn(5, 3)),
    ("squeeze", lambda: Squeeze(), lambda: torch.randn(2, 3, 4, 6)),
    ("uniform-dequantization", lambda: UniformDequantization(), lambda: PIXELS(3, 1, 4, 4)),
    ("variational-dequantization", lambda: _randomise(VariationalDequantization(2, hidden=8), 0.1), lambda: PIXELS(3, 2, 4, 4)),
    ("augment", lambda: Augment(3, 2), lambda: torch.randn(4, 3)),
    ("augment-learned-image", lambda: _randomise(Augment(2, 2, dim=-3, learn=True, hidden=(8,)), 0.1), lambda: torch.randn(3, 2, 4, 4)),
    ("slice", lambda: Slice(5, 2), lambda: torch.randn(4, 5)),
    ("slice-learned-image", lambda: _randomise(Slice(4, 1, dim=-3, learn=True, hidden=(8,)), 0.1), lambda: torch.randn(2, 4, 3, 3)),
    ("abs", lambda: Abs(3), lambda: torch.randn(4, 3)),
    ("abs-learned", lambda: Abs(2, elements=[0], sign_net=nn.Linear(2, 1)), lambda: torch.randn(4, 2)),
    ("sort-values", lambda: Sort(), lambda: torch.randn(4, 6)),
    ("sort-points", lambda: Sort(key=0), lambda: torch.randn(4, 5, 2)),
    ("random-permutation", lambda: RandomPermutation(), lambda: torch.randn(4, 5, 2)),
    ("maxpool", lambda: _randomise(MaxPool2d(2)), lambda: torch.randn(3, 2, 4, 6)),
    ("set-coupling", lambda: _randomise(SetCoupling(8)), lambda: torch.randn(3, 5, 2)),
    ("set-coupling-swap", lambda: _randomise(SetCoupling(8, swap=True)), lambda: torch.randn(3, 5, 2)),
]

@pytest.mark.parametrize("name,make,inp", CASES, ids=[c[0] for c in CASES])
def test_contract(name, make, inp):
    torch.manual_seed(0)
    check_transform(make(), inp())


@pytest.mark.parametrize("name,make,inp", CASES, ids=[c[0] for c in CASES])
def test_gradients_reach_every_parameter(name, make, inp):
    torch.manual_seed(0)
    t = make()
    params = [p for p in t.parameters() if p.requires_grad]
    if not params: pytest.skip("no parameters")
    x = inp()
    z, ldj = t(x)
    ((z.float() ** 2).sum() + ldj.sum()).backward()
    missing = [n for n, p in t.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"{name}: no gradient for {missing}"


def test_kinds():
    assert AffineCoupling(2).kind == "bijection" and Conv1x1(2).kind == "bijection"
    assert UniformDequantization().kind == "generative surjection" and Augment(2, 1).kind == "generative surjection"
    assert Slice(2, 1).kind == "inference surjection" and Abs(2).kind == "inference surjection" and MaxPool2d(1).kind == "inference surjection"
    assert Sort().kind == "inference surjection"
    assert RandomPermutation().kind == "stochastic" and VAELayer(nn.Identity(), nn.Identity()).kind == "stochastic"


def test_coupling_starts_at_identity_and_bounds_its_scale():
    c = AffineCoupling(4, hidden=(8,), bound=1.5)
    x = torch.randn(6, 4)
    z, ldj = c(x)
    assert torch.equal(z, x) and torch.equal(ldj, torch.zeros(6))
    with torch.no_grad():
        for p in c.parameters(): p.normal_(0, 10.0)                      # huge raw scales
    assert c._params(x[:, :2])[1].abs().max() <= 1.5


def test_layers_move_between_devices_and_dtypes():
    for t in [Conv1x1(3), AffineCoupling(3, dim=-3, hidden=(4,)), MaxPool2d(3), VariationalDequantization(3, hidden=4)]:
        t.to("cpu").double().float()


def test_conv1x1_log_determinant_is_slogdet():
    cv = _randomise(Conv1x1(5), 0.3)
    W = cv.weight().double()
    assert torch.allclose(torch.linalg.slogdet(W).logabsdet, cv.log_s.double().sum(), atol=1e-6)
    z, ldj = cv(torch.randn(2, 5, 3, 4))
    assert torch.allclose(ldj, torch.full((2,), 12 * cv.log_s.sum().item()), atol=1e-5)


def test_uniform_dequantization_bookkeeping():
    x = PIXELS(4, 1, 3, 3)
    z, ldj = UniformDequantization()(x)
    assert ((z >= x / 256) & (z < (x + 1) / 256)).all()
    assert torch.allclose(ldj, torch.full((4,), -9 * math.log(256)))


def test_variational_dequantization_log_q_by_brute_force():
    "exp(-ldj - D log 256) is q(u | x); integrated over u in (0, 1) for one pixel it must be 1."
    vd = _randomise(VariationalDequantization(1, hidden=4), 0.2)
    x = torch.tensor([[[[37.0]]]])
    q = vd._q(x)
    u = torch.linspace(1e-6, 1 - 1e-6, 200_001)
    e = torch.log(u) - torch.log1p(-u)
    dens = (q.log_prob(e.view(-1, 1, 1, 1)) - torch.log(u * (1 - u)).view(-1, 1, 1, 1)).exp().flatten()
    assert abs(torch.trapezoid(dens, u).item() - 1) < 1e-3
    torch.manual_seed(0)
    z, ldj = vd(x)
    u0 = z * 256 - x
    e0 = torch.log(u0) - torch.log1p(-u0)
    log_q = q.log_prob(e0) - torch.log(u0 * (1 - u0))
    assert torch.allclose(ldj, -math.log(256) - log_q.flatten(), atol=1e-3)


def test_abs_signs_sum_to_one_and_inverse_draws_them():
    ab = Abs(2, sign_net=nn.Linear(2, 2))
    z = torch.rand(5, 2) + 0.1
    total = sum(ab(z * torch.tensor(s))[1].exp() for s in itertools.product([-1.0, 1.0], repeat=2))
    assert torch.allclose(total, torch.ones(5), atol=1e-6)
    torch.manual_seed(0)
    zz = torch.tensor([[1.0, 2.0]]).expand(20000, 2)
    x = ab.inverse(zz)
    p_pos = torch.sigmoid(ab.sign_net(zz[:1]))[0]
    assert torch.allclose((x > 0).float().mean(0), p_pos, atol=0.02)


def test_abs_is_exact_for_a_symmetric_density():
    std = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    x = torch.randn(7, 3)
    z, ldj = Abs(3)(x)
    assert torch.allclose(std.log_prob(z) + 3 * math.log(2) + ldj, std.log_prob(x), atol=1e-6)


def test_sort_every_order_gives_the_same_z_and_the_contributions_sum_to_one():
    s = Sort(key=1)
    pts = torch.randn(1, 4, 3)
    outs = [s(pts[:, list(o)]) for o in itertools.permutations(range(4))]
    assert all(torch.equal(z, outs[0][0]) for z, _ in outs)
    assert abs(sum(l.exp().item() for _, l in outs) - 1) < 1e-6
    assert (outs[0][0][0, :, 1].diff() >= 0).all()


def test_maxpool_contribution_integrates_to_one_and_inverse_samples():
    mp = MaxPool2d(1)
    with torch.no_grad(): mp.log_scale.fill_(-0.7)
    g = torch.linspace(0, 4, 51)
    gaps = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    total = 0.0
    for pos in range(4):
        block = torch.zeros(len(gaps), 4); block[:, [i for i in range(4) if i != pos]] = -gaps
        v = mp(block.view(-1, 1, 2, 2))[1].exp().view(51, 51, 51)
        total += torch.trapezoid(torch.trapezoid(torch.trapezoid(v, g), g), g).item()
    assert abs(total - 1) < 5e-3
    x = torch.randn(2, 1, 4, 4)
    z = mp(x)[0]
    assert torch.equal(z, torch.nn.functional.max_pool2d(x, 2))
    back = mp.inverse(z)
    assert torch.equal(mp(back)[0], z) and not torch.equal(back, x)       # a right inverse that samples, not a reconstruction


def test_slice_contribution_integrates_to_one():
    sl = _randomise(Slice(2, 1, learn=True, hidden=(8,)), 0.3)
    grid = torch.linspace(-15, 15, 6001)
    for z1 in (-2.0, 0.0, 1.5):
        xs = torch.stack([torch.full_like(grid, z1), grid], 1)
        assert abs(torch.trapezoid(sl(xs)[1].exp(), grid).item() - 1) < 1e-4


@pytest.mark.parametrize("layer,bad,match", [
    (Squeeze(), torch.randn(2, 1, 5, 4), "divisible"),
    (Squeeze(), torch.randn(2, 4, 4), r"\(B, C, H, W\)"),
    (MaxPool2d(1), torch.randn(2, 1, 4, 5), "even"),
    (MaxPool2d(3), torch.randn(2, 1, 4, 4), "3"),
    (AffineCoupling(4, dim=-3, hidden=(4,)), torch.randn(2, 3, 4, 4), "4"),
    (Conv1x1(3), torch.randn(2, 4, 2, 2), "3"),
    (UniformDequantization(), torch.rand(2, 1, 4, 4), "pixel values"),
    (UniformDequantization(), torch.full((2, 1, 2, 2), 3.5), "integer"),
    (UniformDequantization(), torch.full((2, 1, 2, 2), 256.0), "0..255"),
    (VariationalDequantization(1), torch.randint(0, 256, (2, 3, 4, 4)).float(), r"\(B, 1, H, W\)"),
    (Slice(4, 1), torch.randn(2, 3), "4"),
    (Abs(3), torch.randn(2, 2), "3"),
    (Sort(key=0), torch.randn(2, 5), r"\(B, N, d\)"),
    (ElementwiseAffine((3,)), torch.randn(2, 4), r"\(B, 3\)"),
])
def test_bad_input_gets_a_clear_error(layer, bad, match):
    with pytest.raises(ValueError, match=match): layer(bad)


def test_outside_the_support_the_density_is_zero():
    for t, x in [(Logit(), torch.tensor([[1.5, 0.5], [0.5, 0.5], [0.0, 1.0]])), (SoftplusInverse(), torch.tensor([[-1.0, 0.5], [0.5, 0.5], [0.0, 2.0]]))]:
        z, ldj = t(x)
        assert ldj[0] == -math.inf and torch.isfinite(ldj[1]) and torch.isfinite(z).all()
    f = Flow(StandardNormal(2), [Logit()])
    assert f.log_prob(torch.tensor([[2.0, 0.5]]))[0] == -math.inf


def test_bad_constructor_arguments():
    for make in [lambda: AffineCoupling(1), lambda: Slice(3, 3), lambda: Abs(2, elements=[2]), lambda: Squeeze(1),
                 lambda: ElementwiseAffine((2,), scale=-1.0), lambda: image_flow(x_shape=(1, 30, 30)), lambda: image_flow(pool="avg")]:
        with pytest.raises(ValueError): make()


def test_autoregressive_layers_work_inside_a_flow():
    f = Flow(StandardNormal(3), [_randomise(AffineAutoregressive(3, hidden=(16,)), 0.1), Abs(3), SoftplusInverse(), AffineCoupling(3, hidden=(8,))])
    x = torch.randn(6, 3)
    lp = f.log_prob(x)
    assert lp.shape == (6,) and torch.isfinite(lp).all() and f.log_prob_exact
    assert f.sample(4).shape == (4, 3)


def test_vae_as_a_flow_gives_chapter_1s_importance_weighted_number():
    from lvmkit.models.vae import mlp_vae
    torch.manual_seed(0)
    vae = _randomise(mlp_vae(z_dim=4, hidden=(32,)), 0.05).eval()
    x = (torch.rand(6, 1, 28, 28) < 0.3).float()
    flow = VAELayer.from_vae(vae)
    torch.manual_seed(1); a = iw_log_likelihood(vae, x, k=200)[0]
    torch.manual_seed(1); b = iw_log_likelihood(flow, x, k=200)[0]
    torch.manual_seed(2); c = iw_log_likelihood(flow, x, k=200)[0]
    assert torch.allclose(a, b, atol=1e-3)                  # the same noise in the same order: the same number
    assert (a - c).abs().max() < 1.0 and not torch.equal(a, c)
    with pytest.raises(ValueError): flow.log_prob(torch.full((2, 1, 28, 28), 0.5))   # Chapter 1's own input check


@pytest.mark.parametrize("name", SYMMETRIC_2D)
def test_symmetric_2d_density_is_normalised_and_symmetric(name):
    g = torch.linspace(-6, 6, 601)
    grid = torch.stack([t.flatten() for t in torch.meshgrid(g, g, indexing="xy")], 1)
    p = symmetric_2d_log_prob(name, grid).exp()
    assert abs(p.sum().item() * (12 / 600) ** 2 - 1) < 0.03
    x = symmetric_2d(name, 4000)
    lp = symmetric_2d_log_prob(name, x)
    assert torch.isfinite(lp).all()                                               # every sample lies in the support
    assert torch.allclose(symmetric_2d_log_prob(name, -x), lp, atol=1e-9)          # symmetric under x -> -x
    if name != "checkerboard": assert torch.allclose(symmetric_2d_log_prob(name, x * torch.tensor([-1.0, 1.0])), lp, atol=1e-9)


def test_symmetric_2d_entropies():
    assert symmetric_2d_entropy("checkerboard") == (math.log(32), 0.0)
    H, _ = symmetric_2d_entropy("corners")
    x = symmetric_2d("corners", 200_000, seed=3)
    assert abs(-symmetric_2d_log_prob("corners", x).mean().item() - H) < 0.01     # the closed form against Monte Carlo
    H8, se = symmetric_2d_entropy("eight_gaussians", n=100_000)
    assert se < 0.005 and 2.7 < H8 < 3.0
    with pytest.raises(ValueError): symmetric_2d("spirals", 10)


@pytest.mark.parametrize("name", SYMMETRIC_2D)
def test_2d_flows_same_budget_and_exact(name):
    p, a = plain_flow_2d(name, couplings=2, hidden=(16,)), abs_flow_2d(name, couplings=2, hidden=(16,))
    n_p, n_a = (sum(t.numel() for t in m.parameters()) for m in (p, a))
    assert abs(n_p - n_a) <= 0.01 * n_p
    x = symmetric_2d(name, 64)
    for m in (p, a):
        assert m.log_prob_exact and torch.isfinite(m.log_prob(x)).all()


@pytest.mark.parametrize("pool,deq", [("slice", "uniform"), ("maxpool", "variational")])
def test_image_flow_model(pool, deq):
    torch.manual_seed(0)
    m = build_model("survae_image_flow", steps=1, hidden=8, pool=pool, dequantization=deq)
    assert isinstance(m, ImageFlow) and not m.log_prob_exact
    x = PIXELS(4, 1, 28, 28).long()
    m.data_init(x)
    lp = m.log_prob(x)
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    assert (lp <= 0).all()                                   # a bound on a discrete log-probability
    s = m.sample(3)
    assert s.shape == (3, 1, 28, 28) and (s == s.round()).all() and s.min() >= 0 and s.max() <= 255
    assert iw_log_likelihood(m, x, k=3)[0].shape == (4,)
    for bad, err, match in [(x / 255, TypeError, "dtype"), (x.float(), TypeError, "long"), (PIXELS(4, 1, 32, 32).long(), ValueError, r"\(B, 1, 28, 28\)"),
                            (x + 256, ValueError, "0..255"), (x[:0], ValueError, "empty batch")]:
        with pytest.raises(err, match=match): m.log_prob(bad)


def test_set_coupling_is_permutation_equivariant():
    sc = _randomise(SetCoupling(8))
    x, perm = torch.randn(2, 7, 2), torch.randperm(7)
    (z1, l1), (z2, l2) = sc(x), sc(x[:, perm])
    assert torch.allclose(z1[:, perm], z2, atol=1e-5) and torch.allclose(l1, l2, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"): sc(torch.randn(2, 7, 3))


@pytest.mark.parametrize("make", [lambda: sort_flow(points=6, layers=2, hidden=16), lambda: permute_flow(points=6, layers=2, hidden=8)])
def test_set_flows_are_exchangeable_and_sample(make):
    f = _randomise(make(), 0.05)
    x = torch.rand(3, 6, 2) * 28
    perm = torch.randperm(6)
    a, b = f.log_prob(x), f.log_prob(x[:, perm])
    assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-3)
    assert f.sample(2).shape == (2, 6, 2)


def test_spatial_mnist():
    x = spatial_mnist("test", points=10, seed=1)
    assert x.shape == (10000, 10, 2) and x.min() >= 0 and x.max() < 28
    assert torch.equal(x[:5], spatial_mnist("test", points=10, seed=1)[:5]) and not torch.equal(x[:5], spatial_mnist("test", points=10, seed=2)[:5])
