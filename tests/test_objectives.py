"Objectives and bounds: closed-form checks on the linear-Gaussian model, chunking, free bits, warm-up, evaluation."
import math
import pytest
import torch
from lvmkit.objectives import (ELBOTerms, LinearGaussian, bits_per_dim, elbo_loss, elbo_objective, evaluate, free_bits_kl,
                               iw_log_likelihood, kl_warmup)


@pytest.fixture(scope="module")
def lg_data():
    torch.manual_seed(0)
    lg = LinearGaussian(x_dim=5, z_dim=3, seed=1)
    return lg, lg.sample(300)


def test_iw_bound_rises_with_k_and_approaches_exact(lg_data):
    lg, x = lg_data
    torch.manual_seed(1)
    exact = lg.exact_log_prob(x).mean().item()
    b = {k: iw_log_likelihood(lg, x, k=k)[0].mean().item() for k in (1, 10, 100, 2000)}
    elbo = iw_log_likelihood(lg, x, k=500)[1].mean().item()
    assert elbo < b[10] < b[100] < b[2000] + 1e-3
    assert exact - elbo > 0.3                     # the bound is not trivially tight
    assert abs(b[2000] - exact) < 0.03           # and importance weighting closes the gap
    assert b[2000] < exact + 0.01                 # a lower bound (up to Monte-Carlo noise)


def test_chunking_is_exact_given_the_same_samples(lg_data):
    "Chunked log-sum-exp equals the one-shot one for the same log-weights."
    lg, x = lg_data
    torch.manual_seed(3); one = iw_log_likelihood(lg, x[:20], k=64, chunk_size=64)[0]
    # draw the same 64 samples per example in chunks of 64 through a model that replays them
    torch.manual_seed(3); t = lg.elbo_terms(x[:20], n_samples=64)
    log_w = t.elbo.double()
    for S in (1, 5, 64):
        lse = None
        for i in range(0, 64, S):
            c = torch.logsumexp(log_w[i:i + S], 0); lse = c if lse is None else torch.logaddexp(lse, c)
        assert torch.allclose((lse - math.log(64)).float(), one, atol=1e-5)


def test_small_chunks_give_the_same_estimate_statistically(lg_data):
    lg, x = lg_data
    a = iw_log_likelihood(lg, x, k=1000, chunk_size=3)[0].mean()
    assert abs(a - lg.exact_log_prob(x).mean()) < 0.05


def test_memory_budget_sets_chunk_size(lg_data):
    lg, x = lg_data
    calls = []
    orig = lg.elbo_terms
    def spy(x, n_samples=None, analytic_kl=False):
        calls.append(n_samples); return orig(x, n_samples, analytic_kl)
    lg.elbo_terms = spy
    try: iw_log_likelihood(lg, x[:10], k=100, max_elements=10 * 5 * 7)   # B * D * 7 -> chunks of 7
    finally: del lg.elbo_terms
    assert calls[:-1] == [7] * 14 and sum(calls) == 100


def test_iw_refuses_analytic_kl_and_bad_k(lg_data):
    lg, x = lg_data
    class Analytic(LinearGaussian):
        def elbo_terms(self, x, n_samples=None, analytic_kl=False): return super().elbo_terms(x, n_samples, True)
    with pytest.raises(ValueError, match="Monte-Carlo KL"): iw_log_likelihood(Analytic(5, 3), x, k=4)
    with pytest.raises(ValueError, match="k must be >= 1"): iw_log_likelihood(lg, x, k=0)


def test_analytic_and_mc_kl_agree(lg_data):
    lg, x = lg_data
    mc = lg.elbo_terms(x, n_samples=4000).kl_total.mean(0)
    an = lg.elbo_terms(x, analytic_kl=True).kl_total
    assert torch.allclose(mc, an, atol=0.1)


def test_free_bits_and_warmup():
    kl = torch.tensor([0.1, 0.2, 3.0], requires_grad=True)
    free_bits_kl(kl, 1.0, "example").backward()
    assert kl.grad.tolist() == [0.0, 0.0, pytest.approx(1 / 3)]
    assert free_bits_kl(torch.tensor([0.1, 0.2]), 1.0, "batch").item() == 1.0
    with pytest.raises(ValueError, match="mode"): free_bits_kl(kl, 1.0, "layer")
    with pytest.raises(ValueError, match="free_bits"): elbo_objective(free_bits=-1)
    assert kl_warmup(0, 10) == 0 and kl_warmup(5, 10, 2.0) == 1.0 and kl_warmup(99, 10) == 1.0 and kl_warmup(3, 0) == 1.0


def test_elbo_loss_uses_beta_but_reports_true_elbo():
    t = ELBOTerms(torch.tensor([-10.0, -20.0]), (torch.tensor([1.0, 3.0]),))
    loss, m = elbo_loss(t, beta=0.0)
    assert loss.item() == 15.0 and m["elbo"].item() == -17.0 and m["kl0"].item() == 2.0


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2) * 0.5, 784) == pytest.approx(0.5)
    with pytest.raises(ValueError): bits_per_dim(1.0, 0)


def test_evaluate_matches_exact_and_restores_mode(lg_data):
    lg, x = lg_data
    lg.train()
    r = evaluate(lg, x, k=2000, batch_size=64, progress=False)
    assert lg.training and r["n"] == 300 and r["k"] == 2000
    assert r["nll"] == pytest.approx(-lg.exact_log_prob(x).mean().item(), abs=0.05)
    assert r["elbo"] < -r["nll"] and r["bpd"] == pytest.approx(r["nll"] / (5 * math.log(2)))
    with pytest.raises(ValueError, match="empty"): evaluate(lg, x[:0], k=2, progress=False)


def test_iw_log_likelihood_evaluates_a_model_left_in_train_mode_as_in_eval_mode():
    "Issue 14: a model in train mode gave a different number (dropout, batch statistics) and had its BatchNorm statistics updated."
    from lvmkit.models.lvae import LadderVAE
    torch.manual_seed(0)
    m = LadderVAE(z_channels=(2, 2), downsample=(1, 0), channels=8, blocks=1, dropout=0.3)
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    m.train()
    torch.manual_seed(1); a = iw_log_likelihood(m, x, k=8)[0]
    assert m.training                                                          # the caller's mode is restored
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in stats.items())    # no batch-norm update
    m.eval()
    torch.manual_seed(1); b = iw_log_likelihood(m, x, k=8)[0]
    assert torch.equal(a, b)


def test_without_free_bits_the_kl_is_not_clamped():
    "Issue 14: free_bits=0 still applied kl.mean().clamp(min=0), zeroing the gradient of a negative Monte-Carlo KL estimate."
    for mode, kl in [("batch", torch.tensor([-0.5, 0.1])), ("example", torch.tensor([-0.5, 0.1])), ("dim", torch.tensor([[-0.5, 0.1]]))]:
        k = kl.clone().requires_grad_()
        pen = free_bits_kl(k, 0.0, mode)
        pen.backward()
        assert math.isclose(pen.item(), kl.sum().item() / kl.shape[0], rel_tol=1e-6) and (k.grad != 0).all(), mode


def test_a_memory_budget_sizes_the_chunks_from_measured_activations():
    "Issue 14: the importance-sampling bound counted input pixels, not the network's activations (45 GB for a Ladder VAE)."
    from lvmkit.models.lvae import LadderVAE
    from lvmkit.objectives import activation_bytes
    torch.manual_seed(0)
    m = LadderVAE(z_channels=(2, 2), downsample=(1, 0), channels=8, blocks=1).eval()
    x = (torch.rand(5, 1, 28, 28) < 0.3).float()
    per = activation_bytes(m, x)
    assert per > 20 * x[0].numel() * 4                                # a conv net keeps many maps per pixel: far more than the input
    budget = 7 * per * len(x) + 1                                     # room for 7 samples of the batch
    torch.manual_seed(1); a = iw_log_likelihood(m, x, k=20, max_bytes=budget)
    torch.manual_seed(1); b = iw_log_likelihood(m, x, k=20, chunk_size=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])       # the budget chose chunks of 7, and the probe used no random numbers
    with pytest.raises(ValueError, match="smaller batch"): iw_log_likelihood(m, x, k=20, max_bytes=per)
