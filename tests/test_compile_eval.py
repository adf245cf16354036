"""The compiled importance-weighted estimator: the same estimate as the eager one (to Monte-Carlo noise) on a model with an exact log p(x)
and on a conv hierarchy, one compiled shape per batch, the current weights always, and an eager fallback that warns when compilation fails."""
import warnings
import pytest
import torch
import lvmkit.objectives as O
from lvmkit.objectives import LinearGaussian, evaluate, iw_log_likelihood, log_weights_fn
from lvmkit.models.lvae import LadderVAE


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    "Each test starts without compiled functions or classes marked eager-only."
    monkeypatch.setattr(O, "_COMPILED", {})
    monkeypatch.setattr(O, "_EAGER_ONLY", set())
    torch._dynamo.reset()


def test_compiled_estimate_matches_exact_log_likelihood():
    torch.manual_seed(0)
    lg = LinearGaussian(x_dim=5, z_dim=3, seed=1)
    x = lg.sample(200)
    exact = lg.exact_log_prob(x).mean().item()
    torch.manual_seed(1)
    ll, elbo = iw_log_likelihood(lg, x, k=1000, chunk_size=300, compile=True)     # 300 does not divide 1000: the last chunk is cut
    assert ll.shape == elbo.shape == (200,)
    assert abs(ll.mean().item() - exact) < 0.03 and ll.mean().item() < exact + 0.01
    assert elbo.mean().item() < ll.mean().item() - 0.1
    assert LinearGaussian not in O._EAGER_ONLY


def test_compiled_code_sees_the_current_weights():
    "No copy of the weights is baked into the compiled code: changing a parameter changes the compiled result like the eager one."
    torch.manual_seed(0)
    lg = LinearGaussian(x_dim=4, z_dim=2, seed=3)
    x = lg.sample(50)
    fn = log_weights_fn(lg, compile=True)
    with torch.no_grad():
        before = fn(x, 256).mean().item()
        lg.b.add_(3.0)                                   # the data now sits far from the decoder's mean: the weights drop
        after = fn(x, 256)
        eager = lg.log_weights(x, 256)
    assert after.mean().item() < before - 5
    se = (after.var() / after.numel() + eager.var() / eager.numel()).sqrt().item()
    assert abs(after.mean().item() - eager.mean().item()) < 5 * se


def _small_lvae(seed=0):
    torch.manual_seed(seed)
    m = LadderVAE(z_channels=(4, 4), downsample=(1, 1), channels=8, blocks=1, dropout=0.0)
    x = (torch.rand(6, 1, 28, 28) < 0.3).float()
    m.data_init(x)
    return m.eval(), x


def test_compiled_matches_eager_on_a_conv_hierarchy():
    m, x = _small_lvae()
    torch.manual_seed(2); eager = torch.stack([iw_log_likelihood(m, x, k=64, chunk_size=16)[0] for _ in range(6)])
    torch.manual_seed(3); comp = torch.stack([iw_log_likelihood(m, x, k=64, chunk_size=16, compile=True)[0] for _ in range(6)])
    # per image, the two means over 6 repeats agree within 5 standard errors of their difference
    se = (eager.var(0) / 6 + comp.var(0) / 6).sqrt()
    assert ((eager.mean(0) - comp.mean(0)).abs() < 5 * se + 1e-3).all(), (eager.mean(0), comp.mean(0), se)
    r = evaluate(m, x, k=40, batch_size=6, progress=False, max_elements=6 * 784 * 16, compile=True)   # the same shape: no second compile
    assert r["n"] == 6 and r["elbo"] < -r["nll"]


def test_bf16_autocast_estimate_is_float32_and_close_to_the_float32_one():
    "amp=True runs the network in bf16 (the estimate changes) and keeps the log-weights float32: close to float32 with the same draws."
    m, x = _small_lvae()
    torch.manual_seed(2); ll32, e32 = iw_log_likelihood(m, x, k=64, chunk_size=16)
    torch.manual_seed(2); ll16, e16 = iw_log_likelihood(m, x, k=64, chunk_size=16, amp=True)
    assert ll16.dtype == e16.dtype == torch.float32 and torch.isfinite(ll16).all() and torch.isfinite(e16).all()
    assert not torch.equal(ll16, ll32)                                                # bf16 really ran
    assert ((ll16 - ll32).abs() < 2e-3 * ll32.abs()).all(), (ll16, ll32)
    torch.manual_seed(2); r = evaluate(m, x, k=64, batch_size=6, progress=False, max_elements=6 * 784 * 16, amp=True)
    assert r["amp"] is True and abs(r["nll"] + ll16.mean().item()) < 1e-4


def test_bad_input_raises_its_own_error_under_compile():
    m, x = _small_lvae()
    with pytest.raises(ValueError, match="1-channel"):
        iw_log_likelihood(m, torch.zeros(2, 3, 28, 28), k=4, compile=True)
    assert LadderVAE not in O._EAGER_ONLY               # an error of the input is not a compilation failure


def test_failed_compilation_warns_and_evaluates_eagerly(monkeypatch):
    def broken(fn, **kw):
        def f(*a, **k): raise RuntimeError("no C++ compiler found")
        return f
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    lg = LinearGaussian(x_dim=4, z_dim=2, seed=3)
    x = lg.sample(20)
    torch.manual_seed(5)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found.*evaluating eagerly"):
        a = iw_log_likelihood(lg, x, k=50, chunk_size=10, compile=True)[0]
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # warned once: the class is eager from now on
        b = iw_log_likelihood(lg, x, k=50, chunk_size=10)[0]
        c = iw_log_likelihood(lg, x, k=50, chunk_size=10, compile=True)[0]
    assert torch.allclose(a, b)
    assert LinearGaussian in O._EAGER_ONLY and c.shape == (20,)


def test_torch_distributions_checks_are_left_as_they_were():
    "torch.compile switches torch.distributions' argument checks off for the whole process; a compiled evaluation must not leave them off."
    D = torch.distributions.Distribution
    before = D._validate_args
    try:
        D.set_default_validate_args(True)
        torch.manual_seed(0)
        lg = LinearGaussian(x_dim=4, z_dim=2, seed=3)
        iw_log_likelihood(lg, lg.sample(10), k=8, chunk_size=8, compile=True)
        assert D._validate_args is True
        with pytest.raises(ValueError):                                  # checks still on for everyone else
            torch.distributions.Normal(torch.zeros(2), -torch.ones(2))
    finally:
        D.set_default_validate_args(before)
