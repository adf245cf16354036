"Chapter 2: the IAF VAE builder, its experiments, and the grid posterior helper."
import math, subprocess, sys
import pytest, torch
from torch import nn
from lvmkit.core import build_model
from lvmkit.experiments import get_experiment
from lvmkit.flows import InverseFlowDistribution
from lvmkit.models.iaf import iaf_vae, log_joint_grid
from lvmkit.recipes import SEED_IAF, IAF_MLP
from lvmkit.objectives import LinearGaussian, iw_log_likelihood
from lvmkit.testing import check_model
from lvmkit.models.vae import VAE, mlp_vae

def _x(n=8, shape=(1, 6, 6)): return (torch.rand(n, *shape) < 0.4).float()

def test_iaf_vae_contract():
    m = iaf_vae(x_shape=(1, 6, 6), z_dim=5, hidden=(16,), steps=3, made_hidden=(12, 12), context_features=7)
    assert isinstance(m.encoder(_x()), InverseFlowDistribution)
    check_model(m, _x())

def test_iaf_vae_with_the_seeds_made_context():
    "iaf_vae(context_to_output=False): the altosaar seed's MADEs, with h(x) in each first layer only; the model contract still holds."
    kw = dict(x_shape=(1, 6, 6), z_dim=5, hidden=(16,), steps=3, made_hidden=(12, 12), context_features=7)
    m, full = iaf_vae(**kw, context_to_output=False), iaf_vae(**kw)
    mades = [l.made for l in m.encoder.flow.transforms if hasattr(l, "made")]
    assert len(mades) == 3 and all(d.out.context is None and d.layers[0].context is not None for d in mades)
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in m.parameters()) == 3 * 7 * 10   # steps x C x (D * 2)
    check_model(m, _x())

def test_iaf_vae_is_not_mean_field():
    "With the flow's last layer's weights non-zero, the posterior is not a diagonal Gaussian: its samples are correlated for D=2."
    torch.manual_seed(0)
    m = iaf_vae(x_shape=(1, 6, 6), z_dim=2, hidden=(16,), steps=4, made_hidden=(16, 16), context_features=4)
    for p in m.encoder.flow.parameters(): p.data.normal_(0, 1.0)
    z = m.encoder(_x(1)).sample((20000,))[:, 0]                     # (S, 2)
    skew = (((z - z.mean(0)) / z.std(0)) ** 3).mean(0)
    assert skew.abs().max() > 0.1, f"an IAF with random weights should give a non-Gaussian posterior, skewness {skew.tolist()}"

def test_iaf_vae_errors():
    with pytest.raises(ValueError, match="steps"): iaf_vae(z_dim=4, hidden=(8,), steps=0)
    with pytest.raises(ValueError, match="z_dim"): iaf_vae(z_dim=0, hidden=(8,))
    with pytest.raises(ValueError, match="activation"): iaf_vae(z_dim=4, hidden=(8,), activation="swish2")
    m = iaf_vae(x_shape=(1, 6, 6), z_dim=4, hidden=(8,))
    with pytest.raises(ValueError, match="shape"): m.log_prob(_x(shape=(1, 5, 6)))
    with pytest.raises(ValueError, match="binary"): m.log_prob(_x() * 0.5)
    with pytest.raises(NotImplementedError, match="closed form"): m.elbo_terms(_x(), analytic_kl=True)

def test_registered_experiments_build():
    for exp in (SEED_IAF, IAF_MLP, get_experiment("iaf")):
        m = build_model(exp.model, **exp.model_kwargs)
        assert m.spec["name"] == "iaf_vae" and isinstance(m.encoder(_x(2, (1, 28, 28))), InverseFlowDistribution)
    assert SEED_IAF.train.steps == get_experiment("vae-seed-meanfield").train.steps, "equal budget with the mean-field seed run"

def test_build_model_imports_chapters():
    "A fresh process can rebuild a Chapter-2 model (for example from a checkpoint) without importing lvmkit.models.iaf itself."
    code = "from lvmkit.core import build_model; m = build_model('iaf_vae', z_dim=3, hidden=(8,)); print(type(m.encoder).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ConditionalIAF"

def test_log_joint_grid_quadrature_is_exact_for_linear_gaussian():
    lg = LinearGaussian(x_dim=3, z_dim=2, seed=3)
    g = torch.linspace(-7, 7, 281); dg = float(g[1] - g[0])
    z = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    x = lg.sample(4)
    lj = log_joint_grid(lg, x, z, chunk=1000)   # any model with prior() and decoder(z)
    assert lj.shape == (4, len(z))
    assert torch.allclose(torch.logsumexp(lj, 1) + 2 * math.log(dg), lg.exact_log_prob(x), atol=1e-3)

def test_log_joint_grid_matches_model_terms():
    m = mlp_vae(x_shape=(1, 6, 6), z_dim=2, hidden=(16,)).eval()
    x, z = _x(3), torch.randn(10, 2)
    lj = log_joint_grid(m, x, z, chunk=3)
    ref = torch.stack([m.decoder(z).log_prob(x[i]) + m.prior().log_prob(z) for i in range(3)])
    assert torch.allclose(lj, ref, atol=1e-5)
    with pytest.raises(ValueError, match="shape"): log_joint_grid(m, _x(shape=(1, 5, 6)), z)
