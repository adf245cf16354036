"A new kind of stage plugs into Hierarchy's loops without copying them: two latents per stage and a stochastic bottom-up path (BIVA's shape)."
import math
import torch
from torch import nn
import torch.nn.functional as F
from torch.distributions import Independent, Normal
from lvmkit.distributions import ImageLikelihood
from lvmkit.models.lvae import Hierarchy, LatentSample
from lvmkit.objectives import iw_log_likelihood
from lvmkit.testing import check_model

C = 4  # channels of every map (4 x 4 images, 1 channel)


def gauss(h: torch.Tensor) -> Independent:
    loc, pre = h.chunk(2, dim=1)
    return Independent(Normal(loc, F.softplus(pre) + 1e-3), 3)


class StochasticUp(nn.Module):
    "Bottom-up step that samples z_BU ~ q(z_BU | h): its sample, not h, goes up; the top-down pass gets (z_BU, q, h)."
    def __init__(self, c_in: int):
        super().__init__()
        self.q = nn.Conv2d(c_in, 2 * C, 3, padding=1)
        self.calls = 0
    def up(self, h, pick=None):
        self.calls += 1
        q = gauss(self.q(h)); z = q.rsample() if pick is None else pick(0, None, q)
        return z, (z, q, h)


class TwoLatentDown(nn.Module):
    "Top-down step with two latents: p(z_BU | h) scored against the bottom-up sample, and z_TD from q(z_TD | h, d)."
    def __init__(self, top: bool):
        super().__init__()
        self.top = top
        self.p_bu = nn.Conv2d(C, 2 * C, 3, padding=1)
        self.p_td = nn.Conv2d(C, 2 * C, 3, padding=1)
        self.q_td = nn.Conv2d(2 * C, 2 * C, 3, padding=1)
        self.out = nn.Conv2d(2 * C, C, 3, padding=1)
    def down(self, h, d, pick, i, top=None):
        ctx = torch.zeros(top.mean.shape, device=top.mean.device) if self.top else h   # (n, C, 4, 4)
        p_bu, p_td = gauss(self.p_bu(ctx)), gauss(self.p_td(ctx))
        if d is None: z_bu, q_bu, q_td = pick(i, p_bu, None), None, None
        else:
            z_bu, q_bu, feats = d
            q_td = gauss(self.q_td(torch.cat([feats, ctx], 1)))
        z_td = pick(i, p_td, q_td)
        return self.out(torch.cat([z_bu, z_td], 1)), [LatentSample(z_bu, p_bu, q_bu), LatentSample(z_td, p_td, q_td)]


class ToyBIVA(Hierarchy):
    stochastic_bottom_up = True
    def __init__(self):
        super().__init__()
        self.x_shape = (1, 4, 4)
        self.lik = ImageLikelihood(self.x_shape)
        self.stem = nn.Conv2d(1, C, 3, padding=1)
        self.bottom_up = nn.ModuleList([StochasticUp(C), StochasticUp(C)])
        self.top_down = nn.ModuleList([TwoLatentDown(top=False), TwoLatentDown(top=True)])
        self.head = nn.Conv2d(C, 1, 3, padding=1)
    def embed(self, x):
        self.check_input(x)
        return self.stem(self.lik.to_input(x))
    def top_prior(self, n):
        return Independent(Normal(torch.zeros(n, C, 4, 4), torch.ones(n, C, 4, 4)), 3)


def binary(n=6):
    return (torch.rand(n, 1, 4, 4) < 0.4).float()


def test_a_two_latent_stochastic_bottom_up_stage_keeps_the_protocol():
    torch.manual_seed(0)
    m = ToyBIVA()
    check_model(m, binary(), k=16, n_mc=64)
    t = m.elbo_terms(binary(), n_samples=3)
    assert len(t.kl) == 4 and t.elbo.shape == (3, 6)                 # two latents per stage, bottom first


def test_stochastic_bottom_up_draws_fresh_bottom_up_samples_per_importance_sample():
    torch.manual_seed(0)
    m = ToyBIVA().eval()
    x = binary(2)
    m.bottom_up[0].calls = 0
    t = m.elbo_terms(x, n_samples=5)
    z_bu = t.z[0]                                                    # (5, 2, C, 4, 4): the bottom stage's bottom-up latent
    assert m.bottom_up[0].calls == 1 and not torch.allclose(z_bu[0], z_bu[1])   # one pass over 5 copies: 5 different samples
    ll, elbo = iw_log_likelihood(m, x, k=200, chunk_size=50)
    assert (elbo <= ll + 1e-4).all()


def test_generation_draws_every_latent_from_the_priors():
    torch.manual_seed(0)
    m = ToyBIVA().eval()
    h, latents = m.generate(3)
    assert h.shape == (3, 1, 4, 4) and len(latents) == 4 and all(l.q is None for l in latents)
    assert m.sample(3).shape == (3, 1, 4, 4)
