"The model protocol (lvmkit.protocol) and the one importance-weighted estimator built on `log_weights`."
import json, math, sys
from pathlib import Path
import pytest
import torch
from torch import nn
from torch.distributions import Normal
from lvmkit.protocol import (ELBOTerms, ExactModule, GenerativeModel, HasDataInit, HasMonitor, LatentVariableModel,
                             LatentVariableModule)
from lvmkit.objectives import LinearGaussian, iw_log_likelihood

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_iw_golden  # noqa: E402

REFERENCE = json.loads((GOLDEN / "iw_before_refactor.json").read_text())


@pytest.mark.parametrize("name", sorted(make_iw_golden.CASES))
def test_estimator_reproduces_the_numbers_from_before_the_restructuring(name):
    "Same model, same seed: the log_weights-based estimator gives the elbo_terms-based numbers of commit 0ee61f7 to 1e-4."
    got = make_iw_golden.iw_numbers(name, iw_log_likelihood)
    for key in ("iw", "elbo"):
        diff = max(abs(a - b) for a, b in zip(got[key], REFERENCE[name][key]))
        assert diff < 1e-4, f"{name} {key}: differs by {diff:.3g} from the recorded numbers"


def test_golden_cases_cover_every_family():
    families = {spec[0] for spec in make_iw_golden.CASES.values()}
    assert {"mlp_vae", "iaf_vae", "mlp_vlae", "conv_vae", "pixelcnn_vae", "lvae", "vqvae"} <= families


class _Exact1D(LatentVariableModule):
    "z ~ N(0,1), x|z ~ N(z,1), q = the exact posterior N(x/2, 1/2): every weight equals p(x) = N(x; 0, 2)."
    def elbo_terms(self, x, n_samples=None, analytic_kl=False):
        q = Normal(x / 2, math.sqrt(0.5))
        z = q.rsample(() if n_samples is None else (n_samples,))
        return ELBOTerms(Normal(z, 1.0).log_prob(x), (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z),), (z,))
    def sample(self, n): return torch.randn(n) * math.sqrt(2)


def test_log_weights_of_an_exact_posterior_are_the_exact_log_likelihood():
    x = torch.tensor([-2.0, 0.0, 1.5])
    w = _Exact1D().log_weights(x, 9)
    assert w.shape == (9, 3)
    assert torch.allclose(w, Normal(0.0, math.sqrt(2)).log_prob(x).expand(9, 3), atol=1e-5)
    ll, mean_w = iw_log_likelihood(_Exact1D(), x, k=50, chunk_size=7)
    assert torch.allclose(ll, Normal(0.0, math.sqrt(2)).log_prob(x), atol=1e-5) and torch.allclose(mean_w, ll, atol=1e-5)


def test_log_weights_refuse_analytic_kl_and_wrong_shapes():
    class Analytic(_Exact1D):
        def elbo_terms(self, x, n_samples=None, analytic_kl=False):
            t = super().elbo_terms(x, n_samples); t.mc_kl = False; return t
    with pytest.raises(ValueError, match="analytic KL"): Analytic().log_weights(torch.zeros(2), 3)
    class Flat(_Exact1D):
        def elbo_terms(self, x, n_samples=None, analytic_kl=False):
            t = super().elbo_terms(x, n_samples); t.log_px_z = t.log_px_z.reshape(-1); t.kl = (t.kl[0].reshape(-1),); return t
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"): Flat().log_weights(torch.zeros(2), 3)
    with pytest.raises(ValueError, match="k must be >= 1"): _Exact1D().log_weights(torch.zeros(2), 0)


class _StdNormal(ExactModule):
    def log_prob(self, x): return Normal(0.0, 1.0).log_prob(x).sum(-1)
    def sample(self, n): return torch.randn(n, 3)


def test_an_exact_model_is_evaluated_by_the_same_estimator():
    x = torch.randn(5, 3)
    ll, mean_w = iw_log_likelihood(_StdNormal(), x, k=1000)
    assert torch.allclose(ll, _StdNormal().log_prob(x)) and torch.allclose(mean_w, ll)


def test_estimator_names_a_model_without_log_weights():
    class OnlyLogProb(nn.Module):
        def log_prob(self, x): return x.sum(-1)
    with pytest.raises(TypeError, match="log_weights"): iw_log_likelihood(OnlyLogProb(), torch.zeros(2, 3), k=4)


def test_protocols_are_checkable_at_runtime():
    lg = LinearGaussian()
    assert isinstance(lg, LatentVariableModel) and isinstance(lg, GenerativeModel) and not lg.log_prob_exact
    assert isinstance(_StdNormal(), GenerativeModel) and not isinstance(_StdNormal(), LatentVariableModel)
    assert not isinstance(nn.Linear(2, 2), GenerativeModel) and not isinstance(lg, HasDataInit) and not isinstance(lg, HasMonitor)


def test_linear_gaussian_bound_approaches_the_exact_log_likelihood_through_log_weights():
    torch.manual_seed(0)
    lg = LinearGaussian()
    x = lg.sample(64)
    with torch.no_grad(): exact = lg.exact_log_prob(x).mean()
    gaps = [float(exact - iw_log_likelihood(lg, x, k=k)[0].mean()) for k in (1, 10, 1000)]
    assert gaps[0] > gaps[1] > gaps[2] > -0.01 and gaps[2] < 0.05, gaps
