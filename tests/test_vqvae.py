"Chapter 6 (VQ-VAE + Gated PixelCNN): quantizer, losses, codebook cures, model protocol, both priors' causality, bad input, experiments."
import math
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from lvmkit.core import build_model
from lvmkit.experiments import EXPERIMENTS, OBJECTIVES, get_experiment
from lvmkit.objectives import evaluate, iw_log_likelihood
from lvmkit.training import TrainConfig, fit
from lvmkit.models.vqvae import (VectorQuantizer, VQVAE, PixelCNNPrior, GatedPixelCNNPrior, GatedLayer, code_receptive_field, check_code_prior,
                                 vq_objective)
from lvmkit.recipes import VQVAE_CIFAR10, VQVAE_CIFAR10_CPU, GPU_PRIORS, CPU_PRIORS

SMALL = dict(channels=16, dim=8, n_codes=16, n_mix=2)
PRIOR = dict(n_codes=16, grid=(6, 6), embed=8, channels=16, kernel=5, hidden=32)


def pixels(n=4, seed=0, shape=(3, 32, 32)):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_nearest_code_is_vectorised_and_exact():
    vq = VectorQuantizer(n_codes=32, dim=5)
    with torch.no_grad(): vq.codebook.normal_()
    z = torch.randn(500, 5)
    assert torch.equal(vq.nearest(z), torch.cdist(z, vq.codebook).argmin(1))


def test_straight_through_gradient():
    vq = VectorQuantizer(n_codes=8, dim=3)
    with torch.no_grad(): vq.codebook.normal_()
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(z_e)
    g = torch.randn_like(out.z_q)
    grad, = torch.autograd.grad((out.z_q * g).sum(), z_e)
    assert torch.equal(grad, g)
    assert torch.allclose(out.z_q, vq.lookup(out.codes), atol=1e-6)
    assert vq.codebook.grad is None                       # the decoder's gradient does not reach the codebook


def test_losses_against_hand_computed_values():
    vq = VectorQuantizer(n_codes=2, dim=2, beta=0.25)
    with torch.no_grad(): vq.codebook.copy_(torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
    z = torch.tensor([[1.0, 1.0], [3.0, 5.0]]).t().reshape(1, 2, 1, 2).requires_grad_()   # positions (1, 1) and (3, 5)
    out = vq(z)
    assert out.codes.flatten().tolist() == [0, 1]
    expect = ((1 ** 2 + 1 ** 2) + (1 ** 2 + 1 ** 2)) / 4       # squared distances to the codes, mean over 4 elements
    assert math.isclose(out.codebook_loss.item(), expect) and math.isclose(out.commitment_loss.item(), expect)
    cb, = torch.autograd.grad(out.codebook_loss, vq.codebook, retain_graph=True)
    assert torch.allclose(cb, torch.tensor([[-0.5, -0.5], [0.5, -0.5]]))   # d/de mean((e - sg(z))^2) = 2 (e - z) / 4
    cz, = torch.autograd.grad(out.commitment_loss, z)
    assert torch.allclose(cz.flatten(), torch.tensor([0.5, -0.5, 0.5, 0.5]))   # channel-major: z dims (2, 1, 2)


def test_perplexity_and_usage():
    vq = VectorQuantizer(n_codes=4, dim=1)
    with torch.no_grad(): vq.codebook.copy_(torch.tensor([[0.0], [10.0], [20.0], [30.0]]))
    out = vq(torch.tensor([0.0, 10.0, 0.0, 10.0]).view(1, 1, 2, 2))
    assert math.isclose(out.perplexity.item(), 2.0, rel_tol=1e-5) and out.usage.item() == 0.5


def test_seed_initialisation():
    vq = VectorQuantizer(n_codes=128, dim=256)
    assert vq.codebook.abs().max() <= 1 / 128 and vq.codebook.shape == (128, 256)


def test_ema_update_moves_codes_to_the_assigned_mean():
    vq = VectorQuantizer(n_codes=2, dim=1, ema=True, decay=0.5)
    with torch.no_grad(): vq.codebook.copy_(torch.tensor([[0.0], [10.0]])); vq.ema_sum.copy_(vq.codebook); vq.ema_count.fill_(1.0)
    assert not vq.codebook.requires_grad
    for _ in range(30): out = vq(torch.tensor([1.0, 1.2, 9.0, 9.4]).view(1, 1, 2, 2))
    assert torch.allclose(vq.codebook.flatten(), torch.tensor([1.1, 9.2]), atol=1e-3)
    assert out.codebook_loss.item() == 0.0


def test_dead_codes_are_restarted_from_encoder_outputs():
    vq = VectorQuantizer(n_codes=4, dim=2, restart_after=3)
    with torch.no_grad(): vq.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
    z = torch.randn(1, 2, 4, 4) * 0.1
    for _ in range(3): vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    restarted = vq.codebook[1:].detach()
    assert all((flat == r).all(1).any() for r in restarted)     # each dead code is now one of the batch's vectors
    vq.eval(); before = vq.codebook.clone(); vq(z * 50)
    assert torch.equal(before, vq.codebook)                      # no updates in eval mode


def test_the_quantizer_runs_in_float32_under_bf16_autocast():
    """Under bf16 autocast (lvmkit train --amp, the default on CUDA) the quantizer gives the codes, codebook, EMA sums and restarts of float32
    on the same input: a bf16 distance picks other codes, and the restart's index_put of bf16 rows into the float32 codebook used to fail."""
    torch.manual_seed(0)
    z = (torch.randn(4, 16, 8, 8) * 3).bfloat16()                      # what an encoder gives under autocast
    ref, amp = (VectorQuantizer(n_codes=64, dim=16, ema=True, restart_after=2) for _ in range(2))
    amp.load_state_dict(ref.state_dict())
    for step in range(2):                                              # codes unused in both steps restart at the end of the second
        torch.manual_seed(step); a = ref(z.float())
        torch.manual_seed(step)
        with torch.autocast("cpu", dtype=torch.bfloat16): b = amp(z)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.perplexity, b.perplexity)
    for name, t in ref.state_dict().items():
        assert amp.state_dict()[name].dtype == t.dtype and torch.equal(amp.state_dict()[name], t), name
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, 16)
    assert (torch.cdist(amp.codebook, flat).min(1).values == 0).sum() > 0 and amp.codebook.dtype == torch.float32   # some codes restarted
    near = VectorQuantizer(n_codes=64, dim=16)                          # codes close together far from 0: where bf16 distances fail
    with torch.no_grad(): near.codebook.copy_(10 + 0.1 * torch.randn(64, 16))
    zn = 10 + 0.1 * torch.randn(1, 16, 8, 8)
    fn = zn.permute(0, 2, 3, 1).reshape(-1, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = near(zn).codes.flatten()
        bf16 = (fn.pow(2).sum(1, keepdim=True) - 2 * fn @ near.codebook.t() + near.codebook.pow(2).sum(1)).argmin(1)
    assert torch.equal(codes, torch.cdist(fn, near.codebook).argmin(1))
    assert (bf16 != codes).float().mean() > 0.5                         # the same distance in bf16 picks other codes
    km = VectorQuantizer(n_codes=8, dim=16)
    with torch.autocast("cpu", dtype=torch.bfloat16): km.kmeans_init(z)
    assert km.codebook.dtype == km.ema_sum.dtype == torch.float32


def test_kmeans_init_uses_the_codebook():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    z = (centres[torch.randint(4, (400,))] + 0.1 * torch.randn(400, 2)).t().reshape(1, 2, 20, 20)
    vq = VectorQuantizer(n_codes=4, dim=2)
    vq.kmeans_init(z)
    assert torch.cdist(centres, vq.codebook.detach()).min(1).values.max() < 0.1
    assert vq(z).perplexity > 3.9
    with pytest.raises(ValueError, match="at least n_codes"):
        VectorQuantizer(n_codes=500, dim=2).kmeans_init(z)


@pytest.mark.parametrize("kwargs, match", [(dict(n_codes=1), "n_codes"), (dict(beta=-1.0), "beta"), (dict(decay=1.0), "decay")])
def test_quantizer_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**kwargs)


def test_quantizer_bad_input():
    vq = VectorQuantizer(n_codes=8, dim=4)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        vq(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="0..7"):
        vq.lookup(torch.full((1, 2, 2), 8))
    with pytest.raises(TypeError, match="integer"):
        vq.lookup(torch.zeros(1, 2, 2))


def test_vqvae_protocol():
    torch.manual_seed(0)
    m = VQVAE(**SMALL)
    x = pixels()
    loss, metrics = m.vq_loss(x)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert {"nll_per_dim", "codebook_loss", "commitment_loss", "perplexity", "usage", "mse"} <= set(metrics)
    m.eval()
    t = m.elbo_terms(x, n_samples=4)
    assert t.elbo.shape == (4, 4) and torch.equal(t.elbo[0], t.elbo[3])
    assert torch.allclose(t.kl[0], torch.full((4, 4), 64 * math.log(16)))
    ll, elbo = iw_log_likelihood(m, x, k=5)
    assert torch.allclose(ll, elbo, atol=1e-4) and torch.allclose(ll, m.log_prob(x), atol=1e-4)   # a point mass: IW = ELBO
    s = m.sample(3)
    assert s.shape == (3, 3, 32, 32) and s.dtype == torch.long
    assert m.reconstruct(x).shape == x.shape


def test_seed_layout_is_the_seeds_architecture_layer_for_layer():
    "VQVAE(layout='seed') is henrhoi/vae-pytorch's stage 1 (vq_vae.py, VQVAE(K=128, D=256)): its layers in order, its parameter count but the head."
    m = VQVAE(layout="seed", n_mix=1)
    kinds = lambda seq: [type(l).__name__ for l in seq]
    assert kinds(m.encoder) == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "Residual", "Residual"]
    assert kinds(m.decoder_net) == ["Residual", "Residual", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d"]
    assert kinds(m.encoder[4].f) == ["BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert [l.kernel_size for l in m.encoder[4].f if isinstance(l, nn.Conv2d)] == [(3, 3), (1, 1)]
    conv = lambda i, o, k: i * o * k * k + o                                   # weights and biases
    bn = lambda c: 2 * c
    res = bn(256) + conv(256, 256, 3) + bn(256) + conv(256, 256, 1)
    seed = (conv(3, 256, 4) + bn(256) + conv(256, 256, 4) + 2 * res              # its Encoder
            + 2 * res + bn(256) + conv(256, 256, 4) + bn(256) + conv(256, 3, 4)  # its Decoder
            + 128 * 256)                                                       # its codebook
    assert seed == 4_784_387                                                   # what benchmarks/seeds.py counts on the seed's own modules
    assert sum(p.numel() for p in m.parameters()) - seed == conv(256, 10, 4) - conv(256, 3, 4)   # only the head: 10 channels, not 3
    x = pixels(4)
    loss, _ = m.vq_loss(x)
    loss.backward()
    assert loss.isfinite() and all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters())
    m.eval()                                                                   # batch norm on its running statistics: one image alone, same score
    assert torch.allclose(m.log_prob(x)[:1], m.log_prob(x[:1]), atol=1e-3)


def test_layout_choices_and_the_lvmkit_layout_keeps_its_parameter_names():
    with pytest.raises(ValueError, match="layout must be 'lvmkit' or 'seed'"):
        VQVAE(layout="paper")
    with pytest.raises(ValueError, match="dim must equal channels, got 64 and 128"):
        VQVAE(layout="seed", dim=64, channels=128)
    names = [n for n, _ in VQVAE(**SMALL).named_parameters()]                  # what the book's checkpoints hold
    assert names[:4] == ["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias"]
    assert "encoder.6.weight" in names and "decoder_net.0.weight" in names and "decoder_net.6.weight" in names
    assert not any(isinstance(l, nn.BatchNorm2d) for l in VQVAE(**SMALL).modules())


def test_vqvae_with_a_prior_uses_its_log_prob():
    torch.manual_seed(0)
    m = VQVAE(**SMALL).eval()
    prior = GatedPixelCNNPrior(n_codes=16, grid=(8, 8), embed=4, channels=8, kernel=3, layers=2, hidden=16).eval()
    x = pixels()
    uniform = m.log_prob(x)
    m.prior = prior
    codes = m.codes(x)
    assert torch.allclose(m.log_prob(x) - uniform, prior.log_prob(codes) + 64 * math.log(16), atol=1e-3)
    assert m.sample(2).shape == (2, 3, 32, 32)


def test_vqvae_grey_and_bad_input():
    m = VQVAE(x_shape=(1, 28, 28), **SMALL)
    assert m.grid == (7, 7) and m.vq_loss(pixels(2, shape=(1, 28, 28)))[0].isfinite()
    with pytest.raises(ValueError, match="multiples of 4"):
        VQVAE(x_shape=(3, 30, 30))
    with pytest.raises(ValueError, match="init"):
        VQVAE(init="random")
    with pytest.raises(TypeError, match="integer pixel values"):
        m.vq_loss(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        m.vq_loss(pixels(2))
    with pytest.raises(ValueError, match=r"\(B, 7, 7\)"):
        m.decode_codes(torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="0..15"):
        m.decode_codes(torch.full((2, 7, 7), 16))


def test_data_init_kmeans_only_when_asked():
    torch.manual_seed(0)
    a, b = VQVAE(**SMALL), VQVAE(**SMALL, init="kmeans")
    cb_a = a.vq.codebook.clone()
    x = pixels(16)
    a.data_init(x); b.data_init(x)
    assert torch.equal(cb_a, a.vq.codebook)
    assert b.vq.codebook.abs().max() > 1 / 16                      # now on the scale of the encoder's outputs


@pytest.mark.parametrize("cls, kw", [(PixelCNNPrior, dict(blocks=3)), (GatedPixelCNNPrior, dict(layers=3))])
def test_priors_are_causal(cls, kw):
    check_code_prior(cls(**PRIOR, **kw))


def test_gated_prior_has_no_blind_spot_and_plain_has_one():
    check_code_prior(GatedPixelCNNPrior(**PRIOR, layers=4), complete=True)
    with pytest.raises(AssertionError, match="blind spot"):
        check_code_prior(PixelCNNPrior(**PRIOR, blocks=6), complete=True)
    rf = code_receptive_field(PixelCNNPrior(**PRIOR, blocks=6), 3, 1)
    assert not rf[2, 4:].all() and not rf[3, 1:].any() and not rf[4:].any()


def test_first_gated_layer_excludes_the_current_position():
    layer = GatedLayer(4, 3, first=True).eval()
    v = torch.randn(1, 4, 5, 5, requires_grad=True)
    h = torch.randn(1, 4, 5, 5, requires_grad=True)
    v_out, h_out = layer(v, h)
    gv, gh = torch.autograd.grad(h_out[0, :, 2, 2].sum(), (v, h), retain_graph=True)
    assert gv[0, :, 2:].abs().sum() == 0 and gh[0, :, 2, 2:].abs().sum() == 0 and gh[0, :, :2].abs().sum() == 0
    gvv, = torch.autograd.grad(v_out[0, :, 2, 2].sum(), v)
    assert gvv[0, :, 2:].abs().sum() == 0 and gvv[0, :, :2].abs().sum() > 0


def test_prior_log_prob_normalises_and_sampling():
    torch.manual_seed(0)
    p = GatedPixelCNNPrior(n_codes=3, grid=(2, 2), embed=4, channels=8, kernel=3, layers=2, hidden=16).eval()
    allc = torch.cartesian_prod(*[torch.arange(3)] * 4).view(-1, 2, 2)
    assert torch.isclose(p.log_prob(allc).exp().sum(), torch.tensor(1.0), atol=1e-5)   # a distribution over all 81 grids
    torch.manual_seed(1)
    s = p.sample(4000)
    freq = torch.bincount((s.view(-1, 4) * torch.tensor([27, 9, 3, 1])).sum(1), minlength=81).float() / 4000
    probs = p.log_prob(allc).exp()
    assert (freq - probs).abs().max() < 0.03


def test_prior_class_conditioning_and_bad_input():
    p = GatedPixelCNNPrior(**PRIOR, layers=2, n_classes=3)
    c = torch.randint(16, (4, 6, 6))
    a, b = p.log_prob(c, torch.zeros(4, dtype=torch.long)), p.log_prob(c, torch.full((4,), 2))
    assert a.shape == (4,) and not torch.allclose(a, b)
    assert p.sample(2, torch.tensor([0, 1])).shape == (2, 6, 6)
    with pytest.raises(ValueError, match="0..15"):
        p.log_prob(torch.full((1, 6, 6), 16))
    with pytest.raises(ValueError, match=r"\(B, 6, 6\)"):
        p.log_prob(torch.zeros(1, 5, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        p.log_prob(torch.zeros(1, 6, 6))
    with pytest.raises(ValueError, match="without classes"):
        PixelCNNPrior(**PRIOR, blocks=1).log_prob(c, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="class indices"):
        p.log_prob(c, torch.full((4,), 3))


def test_prior_trains_with_the_shared_loop(tmp_path):
    torch.manual_seed(0)
    codes = torch.zeros(64, 6, 6, dtype=torch.long)
    codes[:, ::2] = 3                                              # a deterministic pattern: learnable
    p = GatedPixelCNNPrior(**PRIOR, layers=2)
    before = -p.log_prob(codes).mean().item()
    r = fit(p, TensorDataset(codes), None, TrainConfig(steps=60, batch_size=16, lr=3e-3, log_every=20), run_dir=tmp_path, progress=False)
    assert -r.model.log_prob(codes).mean().item() < before / 3


def test_experiments_and_objective():
    assert OBJECTIVES["vq"] is vq_objective and get_experiment("vqvae").name == "vqvae-cifar10-cpu"
    for exp in (VQVAE_CIFAR10, VQVAE_CIFAR10_CPU):
        assert EXPERIMENTS[exp.name] is exp and exp.loss == "vq" and exp.data.dataset == "cifar10"
        assert isinstance(build_model(exp.model, **exp.model_kwargs), VQVAE)
    assert VQVAE_CIFAR10.model_kwargs["n_codes"] == 128 and VQVAE_CIFAR10.model_kwargs["dim"] == 256 and VQVAE_CIFAR10.train.batch_size == 128
    for priors in (GPU_PRIORS, CPU_PRIORS):
        for key, stage in priors.items():
            assert stage.name == key and isinstance(build_model(stage.model, n_codes=128, grid=(8, 8), **stage.model_kwargs), (PixelCNNPrior, GatedPixelCNNPrior))
    assert VQVAE_CIFAR10.prior is GPU_PRIORS["gated"] and VQVAE_CIFAR10_CPU.prior is CPU_PRIORS["gated"]   # `lvmkit train vqvae` runs stage 2
    g = build_model(GPU_PRIORS["gated"].model, n_codes=128, grid=(8, 8), **GPU_PRIORS["gated"].model_kwargs)
    assert len(g.layers) == 13 and g.layers[0].v.out_channels == 2 * 256    # the seed's GatedPixelCNN(n_layers=15): 13 gated layers of 256
    m = VQVAE(**SMALL)
    loss, metrics = vq_objective()(m, pixels(), 0)
    assert loss.ndim == 0 and "perplexity" in metrics


def test_a_fitted_prior_is_part_of_the_model_its_spec_and_its_checkpoint(tmp_path):
    "set_prior records the prior's spec; a checkpoint of the whole model rebuilds both, with the same bound."
    from lvmkit.experiments import PriorStage, fit_prior
    from lvmkit.training import TrainConfig, load_model, save_checkpoint
    torch.manual_seed(0)
    m = build_model("vqvae", x_shape=(3, 8, 8), **SMALL).eval()
    x = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    uniform = m.log_prob(x)
    stage = PriorStage("p", "gated_pixelcnn_prior", dict(embed=4, channels=8, kernel=3, layers=2, hidden=8), TrainConfig(steps=20, batch_size=16))
    r = fit_prior(m, stage, x, progress=False)
    assert r.finished and m.spec["kwargs"]["prior"] == {"name": "gated_pixelcnn_prior",
                                                        "kwargs": {"n_codes": 16, "grid": (2, 2), **stage.model_kwargs}}
    assert not torch.allclose(m.log_prob(x), uniform)                                # the prior now enters the bound
    path = save_checkpoint(tmp_path / "final.pt", model=m.state_dict(), spec=m.spec)
    back = load_model(path)
    assert isinstance(back.prior, GatedPixelCNNPrior) and torch.allclose(back.log_prob(x), m.log_prob(x))
    m.set_prior(None)
    assert m.prior is None and "prior" not in m.spec["kwargs"] and torch.allclose(m.log_prob(x), uniform)
    with pytest.raises(ValueError, match="not both"): fit_prior(m, stage, x, latents=m.prior_data(x))
    with pytest.raises(TypeError, match="fitted prior"): fit_prior(build_model("mlp_vae", z_dim=2, hidden=(4,)), stage, x)


def test_a_prior_for_other_codes_is_refused():
    "Issue 14: a prior built for 16 codes was accepted by an 8-code VQ-VAE (and scored its codes silently wrong)."
    from lvmkit.core import build_model
    vq = build_model("vqvae", x_shape=(3, 16, 16), channels=16, dim=8, n_codes=8, n_mix=2)
    args = vq.prior_arguments()
    with pytest.raises(ValueError, match="n_codes"):
        vq.set_prior(build_model("pixelcnn_prior", n_codes=16, grid=args["grid"], embed=8, channels=8, blocks=1, hidden=16))
    with pytest.raises(ValueError, match="grid"):
        vq.set_prior(build_model("pixelcnn_prior", n_codes=8, grid=(2, 2), embed=8, channels=8, blocks=1, hidden=16))
    vq.set_prior(build_model("pixelcnn_prior", **args, embed=8, channels=8, blocks=1, hidden=16))      # the right one is taken
    assert vq.prior is not None
