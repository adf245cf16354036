"The Chapter-1 VAE: protocol contract, bad input, registry round trip, training through the shared loop."
import pytest
import torch
from lvmkit.core import build_model
from lvmkit.distributions import MLP, ConditionalNormal, ConditionalBernoulli, StandardNormal, check_binary
from lvmkit.objectives import elbo_objective, iw_log_likelihood
from lvmkit.testing import check_model
from lvmkit.training import TrainConfig, fit, load_model
import lvmkit.models.vae  # registers mlp_vae, gaussian_vae and the experiments
from lvmkit.models.vae import VAE


def binary_batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.2).float()


@pytest.mark.parametrize("name,kwargs,x", [
    ("mlp_vae", dict(z_dim=8, hidden=(64,)), binary_batch()),
    ("mlp_vae", dict(z_dim=4, hidden=(32, 32), activation="relu"), binary_batch()),
    ("gaussian_vae", dict(), torch.randn(16, 2)),
])
def test_contract(name, kwargs, x):
    torch.manual_seed(0)
    check_model(build_model(name, **kwargs), x)


def test_check_model_catches_a_dead_parameter():
    m = build_model("mlp_vae", z_dim=4, hidden=(16,))
    m.unused = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(AssertionError, match="unused"): check_model(m, binary_batch())


@pytest.mark.parametrize("bad,match", [
    (torch.rand(4, 1, 28, 28), "binary data"),
    (torch.zeros(4, 784), r"shape \(B, 1, 28, 28\)"),
    (torch.full((4, 1, 28, 28), float("nan")), "NaN"),
])
def test_bad_input_is_named(bad, match):
    m = build_model("mlp_vae", z_dim=4, hidden=(16,))
    with pytest.raises(ValueError, match=match): m.log_prob(bad)
    with pytest.raises(ValueError, match=match): iw_log_likelihood(m, bad, k=4)


def test_builder_errors():
    with pytest.raises(ValueError, match="activation"): build_model("mlp_vae", activation="swish")
    with pytest.raises(TypeError, match="latent_dim"): build_model("mlp_vae", latent_dim=3)
    with pytest.raises(ValueError, match="even number"): ConditionalNormal(MLP([3, 5]))(torch.randn(2, 3))
    with pytest.raises(ValueError, match="at least two"): MLP([3])


def test_distribution_shapes_and_kl():
    d = ConditionalBernoulli(MLP([3, 12]), (3, 2, 2))(torch.randn(5, 7, 3))
    assert d.batch_shape == (5, 7) and d.event_shape == (3, 2, 2)
    q = ConditionalNormal(MLP([3, 4]))(torch.randn(6, 3)); p = StandardNormal(2)()
    kl = torch.distributions.kl_divergence(q, p)
    closed = 0.5 * (q.mean ** 2 + q.variance - 1 - q.variance.log()).sum(-1)
    assert torch.allclose(kl, closed, atol=1e-5)
    check_binary(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError): check_binary(torch.tensor([0.5]))


def test_sample_and_reconstruct_shapes():
    m = build_model("mlp_vae", z_dim=3, hidden=(16,)).eval()
    assert m.sample(5).shape == (5, 1, 28, 28) and set(m.sample(5).unique().tolist()) <= {0.0, 1.0}
    mean = m.sample(5, noise=False); assert ((mean > 0) & (mean < 1)).all()
    x = binary_batch(4)
    assert torch.equal(m.reconstruct(x), m.reconstruct(x))   # eval reconstruction is deterministic


def test_training_improves_elbo_and_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    x = binary_batch(512, seed=1)
    m = build_model("mlp_vae", z_dim=8, hidden=(64,))
    before = m.log_prob(x).mean().item()
    r = fit(m, x, x[:128], TrainConfig(steps=150, batch_size=64, lr=3e-3, eval_every=75, ema_decay=0.9),
            loss_fn=elbo_objective(analytic_kl=True, warmup_steps=20), run_dir=tmp_path, progress=False)
    assert r.finished and r.best_valid > before + 50
    back = load_model(tmp_path / "best.pt")
    assert isinstance(back, VAE) and back.spec == {"name": "mlp_vae", "kwargs": {"z_dim": 8, "hidden": (64,)}}
    torch.manual_seed(5); a = back.elbo_terms(x[:8], analytic_kl=True).elbo
    torch.manual_seed(5); b = back.elbo_terms(x[:8], analytic_kl=True).elbo
    assert torch.equal(a, b)
    other = build_model("mlp_vae", z_dim=9, hidden=(64,))
    from lvmkit.training import check_compatible, load_checkpoint
    with pytest.raises(ValueError): check_compatible(other, load_checkpoint(tmp_path / "best.pt"))
