"Chapter 4 (Ladder VAE): model contract, merges, free bits, data-dependent init, active units, per-layer grids, bad input, experiments."
import json, math, subprocess, sys
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal
from lvmkit.core import build_model
from lvmkit.distributions import ConditionalNormal
from lvmkit.experiments import EXPERIMENTS, get_experiment, run_experiment
from lvmkit.objectives import elbo_loss, iw_log_likelihood
from lvmkit.testing import check_model
from lvmkit.training import TrainConfig, fit
from lvmkit.models.lvae import (LadderVAE, ResBlock, Merge, precision_weighted, data_dependent_init, active_units, layer_grid,
                                measure_training, peak_rss_mb)
from lvmkit.recipes import LVAE_MNIST, LVAE_MNIST_CPU, LVAE_CIFAR10, LVAE_CIFAR10_CPU

TINY = dict(z_channels=(4, 4, 4), downsample=(1, 0, 1), channels=8, blocks=1)


def binary(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


def pixels(n=4, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("merge", ["linear", "precision"])
@pytest.mark.parametrize("skip", [True, False])
def test_contract_bernoulli(merge, skip):
    m = LadderVAE(**TINY, merge=merge, skip=skip).eval()
    check_model(m, binary())
    t = m.elbo_terms(binary())
    assert [tuple(z.shape[1:]) for z in t.z] == [(4, 8, 8), (4, 8, 8), (4, 4, 4)]
    assert len(t.kl) == 3 and t.mc_kl


def test_contract_dmol_colour():
    m = LadderVAE(x_shape=(3, 32, 32), likelihood="dmol", n_mix=3, z_channels=(4, 4), downsample=(1, 1), channels=8, blocks=1).eval()
    x = pixels()
    check_model(m, x)
    s = m.sample(2)
    assert s.dtype == torch.long and s.shape == (2, 3, 32, 32) and 0 <= s.min() and s.max() <= 255
    r = m.reconstruct(x)
    assert r.shape == x.shape and r.is_floating_point() and 0 <= r.min() and r.max() <= 255


def test_parameter_count_matches_the_seed_scale():
    n = sum(p.numel() for p in LadderVAE(z_channels=(32,) * 3, downsample=(1, 1, 1)).parameters())
    assert 2.5e6 < n < 4e6          # the seed: roughly 1M parameters per stochastic layer


def test_iw_samples_share_one_bottom_up_pass_and_shapes():
    m = LadderVAE(**TINY).eval()
    x = binary(3)
    calls = []
    h = m.stem.register_forward_hook(lambda mod, i, o: calls.append(o.shape[0]))
    t = m.elbo_terms(x, n_samples=5)
    h.remove()
    assert calls == [3]                                  # the bottom-up pass ran once, on B images
    assert t.elbo.shape == (5, 3) and all(k.shape == (5, 3) for k in t.kl) and t.z[0].shape == (5, 3, 4, 8, 8)


def test_iw_bound_runs_in_bounded_chunks():
    m = LadderVAE(**TINY).eval()
    x = binary(4)
    seen = []
    orig = m.generate
    def spy(n, d=None, pick=None):
        seen.append(n); return orig(n, d, pick)
    m.generate = spy
    ll, elbo = iw_log_likelihood(m, x, k=100, max_elements=4 * 784 * 8)    # at most 8 samples per chunk
    assert max(seen) <= 4 * 8 and sum(seen) == 4 * 100
    assert torch.isfinite(ll).all() and (ll >= elbo - 1e-4).all()


def test_eval_is_deterministic_and_train_is_not():
    m = LadderVAE(**TINY, dropout=0.5)
    x = binary()
    m.eval()
    assert torch.equal(m.reconstruct(x), m.reconstruct(x))
    torch.manual_seed(1); a = m.log_prob(x)
    torch.manual_seed(1); b = m.log_prob(x)
    assert torch.equal(a, b)
    m.train()
    torch.manual_seed(1); c = m.log_prob(x)
    assert not torch.allclose(a, c)                      # dropout and batch statistics in training mode


def test_channels_last_leaves_the_bound_unchanged():
    m = LadderVAE(**TINY).eval()
    x = binary()
    torch.manual_seed(0); a = m.elbo_terms(x, n_samples=4).elbo
    m = m.to(memory_format=torch.channels_last)
    torch.manual_seed(0); b = m.elbo_terms(x, n_samples=4).elbo
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)


def test_analytic_kl_option():
    m = LadderVAE(**TINY).eval()
    t = m.elbo_terms(binary(), analytic_kl=True)
    assert not t.mc_kl and all((k >= -1e-4).all() for k in t.kl)
    with pytest.raises(ValueError, match="Monte-Carlo"):
        class Analytic(LadderVAE):
            def elbo_terms(self, x, n_samples=None, analytic_kl=False): return super().elbo_terms(x, n_samples, analytic_kl=True)
        iw_log_likelihood(Analytic(**TINY).eval(), binary(), k=4)


def test_learned_and_fixed_top_prior():
    m = LadderVAE(**TINY, learn_top_prior=False)
    p = m.top_prior(2)
    assert torch.allclose(p.mean, torch.zeros_like(p.mean)) and torch.allclose(p.stddev, torch.full_like(p.stddev, 1 + 1e-3))
    assert not m.top_prior_params.requires_grad
    m2 = LadderVAE(**TINY)
    assert m2.top_prior_params.requires_grad
    (-m2.log_prob(binary()).mean()).backward()
    assert m2.top_prior_params.grad.abs().sum() > 0


def test_precision_weighted_merge_closed_form():
    a = Independent(Normal(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 3.0]])), 1)
    b = Independent(Normal(torch.tensor([[0.0, 4.0]]), torch.tensor([[1.0, 1.0]])), 1)
    q = precision_weighted(a, b)
    var = 1 / (1 / 0.25 + 1.0), 1 / (1 / 9.0 + 1.0)
    mean = (1.0 * 4 + 0.0) * var[0], (-2.0 / 9 + 4.0) * var[1]
    assert torch.allclose(q.mean, torch.tensor([mean]), atol=1e-6) and torch.allclose(q.variance, torch.tensor([var]), atol=1e-6)
    assert (q.stddev <= torch.minimum(a.stddev, b.stddev)).all()          # merging never loses certainty


def test_precision_merge_uses_the_prior():
    m = LadderVAE(**TINY, merge="precision").eval()
    d = m.encode(binary(2))
    _, layers = m.generate(2, d)
    for z, p, q in layers:
        assert (q.stddev <= p.stddev + 1e-6).all()


def test_free_bits_stop_the_kl_gradient_below_the_floor():
    x = binary()
    def prior_grads(free_bits):
        torch.manual_seed(0)
        m = LadderVAE(**TINY)
        loss, _ = elbo_loss(m.elbo_terms(x), free_bits=free_bits, free_bits_mode="example")
        loss.backward()
        # with the learned merge, the priors of the lower layers and the top prior enter the loss only through the KL terms
        return [m.top_prior_params.grad] + [l.prior.net.weight.grad for l in m.top_down[:-1]]
    assert all(g is not None and g.abs().sum() > 0 for g in prior_grads(0.0))
    assert all(g is None or g.abs().sum() == 0 for g in prior_grads(1e6))


def test_data_dependent_init_sets_every_layer():
    torch.manual_seed(0)
    m = LadderVAE(**TINY)
    x = binary(32)
    torch.manual_seed(5); m.data_init(x)
    outs = {}
    hooks = [mod.register_forward_hook(lambda mod, i, o, n=n: outs.setdefault(n, o.detach()))
             for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))]
    torch.manual_seed(5)                             # the same dropout masks and latent draws as during the init
    with torch.no_grad(): m.train().elbo_terms(x)
    for h in hooks: h.remove()
    n_conv = sum(isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)) for mod in m.modules())
    assert len(outs) == n_conv
    for name, o in outs.items():
        std = o.transpose(0, 1).flatten(1).std(1)
        assert torch.allclose(std, torch.full_like(std, 0.1), atol=2e-3), name
        assert o.transpose(0, 1).flatten(1).mean(1).abs().max() < 1e-4, name


def test_data_dependent_init_off_changes_nothing():
    torch.manual_seed(0)
    m = LadderVAE(**TINY, data_dep_init=False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.data_init(binary(8))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_data_dependent_init_linear_and_transpose():
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(256, 5) * 3
    assert data_dependent_init(net, lambda: net(x), scale=0.5) == 2
    with torch.no_grad(): out = net(x)
    assert torch.allclose(out.std(0), torch.full((3,), 0.5), atol=1e-3)



def test_data_dependent_init_warns_when_a_channel_has_too_few_values():
    "A Linear layer on a batch of 2 estimates each output's std from 2 values: the scales are noise (a BIVA's dense top went non-finite)."
    import warnings
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    with pytest.warns(RuntimeWarning, match=r"in 2 layers each channel's std came from fewer than 8 values \(fewest: 2, in a Linear\)"):
        data_dependent_init(net, lambda: net(torch.randn(2, 5)))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Linear(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                     # a conv counts every position: 1 image of 6x6 is 36 values
        data_dependent_init(conv, lambda: conv(torch.randn(1, 1, 6, 6)), min_values=6)
        data_dependent_init(net, lambda: net(torch.randn(8, 5)))


class _Counting(nn.Module):
    def __init__(self):
        super().__init__(); self.lin = nn.Linear(4, 4); self.calls = 0
    def data_init(self, x): self.calls += 1
    def log_prob(self, x): return -((self.lin(x) - x) ** 2).sum(-1)


def test_fit_calls_data_init_on_a_fresh_start_only(tmp_path):
    data = torch.randn(64, 4)
    m = _Counting()
    fit(m, data, config=TrainConfig(steps=4, batch_size=16, eval_every=2, log_every=2), run_dir=tmp_path, progress=False, stop_at_step=2)
    assert m.calls == 1
    m2 = _Counting()
    fit(m2, data, config=TrainConfig(steps=4, batch_size=16, eval_every=2, log_every=2), run_dir=tmp_path, progress=False)
    assert m2.calls == 0                              # resumed from last.pt: the checkpoint's weights, no re-initialisation


def test_fit_logs_the_monitor(tmp_path):
    data = torch.randn(64, 4)
    seen = []
    def monitor(model):
        seen.append(model.training); return {"w": model.lin.weight.norm()}
    fit(_Counting(), data, config=TrainConfig(steps=4, batch_size=16, eval_every=2, log_every=2), run_dir=tmp_path, progress=False, monitor=monitor)
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mon = [r for r in recs if "monitor" in r]
    assert [r["step"] for r in mon] == [2, 4] and all(isinstance(r["monitor"]["w"], float) for r in mon)
    assert seen == [False, False]                     # called in eval mode


def test_active_units_detects_a_dead_layer():
    torch.manual_seed(0)
    m = LadderVAE(**TINY).eval()
    x = binary(64)
    with torch.no_grad():
        m.top_down[1].posterior.net.weight.zero_(); m.top_down[1].posterior.net.bias.zero_()   # q(z_2) ignores everything
        for layer in m.top_down: layer.posterior.net.weight.mul_(50)                          # the others respond strongly
    au = active_units(m, x)
    assert len(au) == 3 and au[1] == 0.0 and au[0] > 0.5 and au[2] > 0.5
    assert set(m.monitor(x)) == {"au0", "au1", "au2"}


def test_layer_grid_rows_share_the_layers_above():
    torch.manual_seed(0)
    m = LadderVAE(**TINY).eval()
    seen = {}
    orig = m.generate
    def spy(n, d=None, pick=None):
        def rec(i, p, q):
            z = pick(i, p, q); seen[i] = z; return z
        return orig(n, d, rec)
    m.generate = spy
    g = layer_grid(m, layer=1, rows=3, cols=4)
    assert g.shape == (12, 1, 28, 28)
    top = seen[2].unflatten(0, (3, 4))
    assert torch.equal(top[:, 0], top[:, 3]) and not torch.equal(top[0, 0], top[1, 0])   # shared within a row, not across rows
    mid = seen[1].unflatten(0, (3, 4))
    assert not torch.equal(mid[0, 0], mid[0, 1])                                         # layer i varies along a row
    _, layers = orig(12, None, lambda i, p, q: p.mean if i < 1 else seen[i])   # below layer i: the prior's mode
    assert torch.allclose(layers[0][0], seen[0])
    with pytest.raises(ValueError, match="layer must be"):
        layer_grid(m, layer=3)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 3, 28, 28), "1-channel"),
    (torch.zeros(2, 1, 32, 32), "28x28"),
    (torch.zeros(2, 28, 28), "shape"),
    (torch.full((2, 1, 28, 28), 0.5), "binary"),
])
def test_bad_input_bernoulli(bad, match):
    with pytest.raises(ValueError, match=match):
        LadderVAE(**TINY).elbo_terms(bad)


def test_bad_input_dmol():
    m = LadderVAE(x_shape=(3, 32, 32), likelihood="dmol", z_channels=(4,), downsample=(1,), channels=8, blocks=1)
    with pytest.raises(TypeError, match="integer pixel values"):
        m.elbo_terms(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="3-channel"):
        m.elbo_terms(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(pad=False), "image size 28x28 is not divisible by the total downsampling factor 8"),
    (dict(z_channels=(4, 4), downsample=(1,)), "one entry per stochastic layer"),
    (dict(downsample=(1, 2, 1)), "0 or 1"),
    (dict(merge="sum"), "merge must be"),
    (dict(likelihood="gauss"), "likelihood must be"),
    (dict(x_shape=(3, 28, 28)), "1-channel binary"),
    (dict(activation="swishy"), "unknown activation"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LadderVAE(**{**TINY, **kwargs})


def test_padding_is_only_as_large_as_needed():
    assert LadderVAE(**TINY).padded == (32, 32)                    # factor 8: 28 -> 32
    assert LadderVAE(z_channels=(4,), downsample=(0,), channels=8, blocks=1).padded == (28, 28)   # factor 2 divides 28
    LadderVAE(z_channels=(4,), downsample=(0,), channels=8, blocks=1, pad=False).elbo_terms(binary(2))


def test_conditional_normal_on_feature_maps():
    cn = ConditionalNormal(nn.Conv2d(3, 8, 1), event_dims=3)
    d = cn(torch.randn(2, 3, 5, 5))
    assert d.batch_shape == (2,) and d.event_shape == (4, 5, 5)
    with pytest.raises(ValueError, match="even number"):
        ConditionalNormal(nn.Conv2d(3, 7, 1), event_dims=3)(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="event_dims"):
        ConditionalNormal(nn.Identity(), event_dims=2)


def test_blocks_keep_shapes():
    h = torch.randn(2, 8, 6, 6)
    assert ResBlock(8, gated=False, batchnorm=False, dropout=0.0)(h).shape == h.shape
    assert Merge(8, 4, 8)(h, torch.randn(2, 4, 6, 6)).shape == h.shape


def test_measure_training_and_peak_memory():
    r = measure_training(LadderVAE(**TINY), binary(4), steps=1, warmup=1)
    assert r["examples_per_s"] > 0 and r["peak_memory_mb"] >= r["baseline_memory_mb"] > 0 and r["batch_size"] == 4
    assert peak_rss_mb() > 10


def test_experiments_registered_and_build():
    assert get_experiment("lvae").name == "lvae-mnist-cpu"
    for exp in [*LVAE_MNIST.values(), LVAE_CIFAR10, LVAE_CIFAR10_CPU, LVAE_MNIST_CPU]:
        assert EXPERIMENTS[exp.name] is exp and exp.objective["free_bits_mode"] == "example"
        m = build_model(exp.model, **exp.model_kwargs)
        assert isinstance(m, LadderVAE) and len(m.top_down) == len(exp.model_kwargs["z_channels"])
    assert LVAE_MNIST[12].objective["free_bits"] == 1.0 and LVAE_MNIST[6].objective["free_bits"] == 0.5
    assert all(e.data.train_split == "train+valid" and e.train.optimizer == "adamax" and e.train.lr == 3e-4 for e in LVAE_MNIST.values())
    assert build_model("lvae").top_shape == (32, 2, 2)


def test_quick_experiment_end_to_end_and_reload_in_a_fresh_process(tmp_path, monkeypatch):
    s = run_experiment(LVAE_MNIST_CPU, quick_mode=True, run_dir=tmp_path / "run", results_dir=tmp_path / "res", progress=False)
    assert s["finished"] and -s["test_elbo"] >= s["test_nll_iw4"] - 0.5
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mon = [r for r in recs if "monitor" in r]
    assert mon and set(mon[-1]["monitor"]) == {f"au{i}" for i in range(6)}
    assert {f"kl{i}" for i in range(6)} <= set(next(r for r in recs if "loss" in r))
    code = ("import sys, torch; from lvmkit.training import load_model; "
            f"m = load_model({str(tmp_path / 'run' / 'last.pt')!r}); print(type(m).__name__, tuple(m.sample(2).shape))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LadderVAE (2, 1, 28, 28)" in out


def test_bf16_autocast_keeps_the_distributions_in_float32():
    torch.manual_seed(0)
    m = LadderVAE(**TINY).eval()
    x = binary(8)
    torch.manual_seed(1); a = m.elbo_terms(x, n_samples=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1); b = m.elbo_terms(x, n_samples=4)
    assert b.elbo.dtype == torch.float32 and all(k.dtype == torch.float32 for k in b.kl)
    rel = ((a.elbo - b.elbo).abs() / a.elbo.abs()).max()
    assert rel < 0.02, f"bf16 autocast moved the ELBO by {rel:.3%}"
