"Chapter 5 (BIVA): model contract, the bottom-up latents' place in the passes, reduction to the Ladder VAE, free bits in both modes, the bound, bad input, recipes."
import math
import pytest
import torch
from lvmkit.core import build_model
from lvmkit.objectives import elbo_loss, elbo_objective, free_bits_kl, iw_log_likelihood
from lvmkit.protocol import ELBOTerms
from lvmkit.testing import check_model
from lvmkit.models.biva import BIVA, BivaUp, BivaDown
from lvmkit.models.lvae import LadderVAE, active_units, layer_grid
from lvmkit.models.vae import VAE
from dataclasses import replace
from lvmkit.recipes import BIVA_MNIST_CPU, BIVA_MNIST_CPU_DEEP, BIVA_DEEP_STEPS, BIVA_ABLATIONS, BIVA_MNIST, BIVA_CIFAR10, LVAE_MNIST_CPU

TINY = dict(z_channels=(4, 4, 6), downsample=(1, 0, 1), channels=8, blocks=1)


def binary(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("conditional_bu", [True, False])
@pytest.mark.parametrize("latent", ["conv", "dense"])
def test_contract(skip, conditional_bu, latent):
    m = BIVA(**TINY, skip=skip, conditional_bu=conditional_bu, latent=latent).eval()
    check_model(m, binary())
    t = m.elbo_terms(binary())
    assert len(t.kl) == 5 == len(m.latent_names()) and t.mc_kl                   # 2 latents per stage below the top, 1 at the top
    shapes = [tuple(z.shape[1:]) for z in t.z]
    assert shapes == ([(4, 8, 8), (4, 8, 8), (4, 8, 8), (4, 8, 8), (6, 4, 4)] if latent == "conv" else [(4,), (4,), (4,), (4,), (6,)])


def test_contract_dmol_colour():
    m = BIVA(x_shape=(3, 32, 32), likelihood="dmol", n_mix=3, z_channels=(4, 4), downsample=(1, 1), channels=8, pad=False).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    check_model(m, x)
    assert m.sample(2).shape == (2, 3, 32, 32)


def test_bottom_up_latent_is_sampled_in_the_bottom_up_pass_and_feeds_the_stage_above():
    torch.manual_seed(0)
    m = BIVA(**TINY).eval()
    order, seen = [], {}
    m.bottom_up[0].q_bu.register_forward_hook(lambda mod, i, o: order.append("q_bu1"))
    m.top_down[0].td.register_forward_hook(lambda mod, i, o: order.append("td1"))
    m.bottom_up[0].bu_out.register_forward_hook(lambda mod, i, o: seen.update(z_in=i[0], z_out=o))
    m.bottom_up[1].bu.register_forward_hook(lambda mod, i, o: seen.update(above_in=i[0]))
    t = m.elbo_terms(binary())
    assert order.index("q_bu1") < order.index("td1")                             # drawn on the way up, before any top-down step
    assert torch.equal(seen["z_in"], t.z[0])                                     # the latent scored in the ELBO is that draw
    assert torch.equal(seen["above_in"], seen["z_out"])                          # its sample (mapped), not the features, enters stage 2's BU stream
    # a different z_BU_1 changes what the stage above infers: the dependence is real
    d_mean = m.encode(binary(), pick=lambda i, p, q: q.mean)
    d_shift = m.encode(binary(), pick=lambda i, p, q: q.mean + (1.0 if i == 0 else 0.0))
    assert torch.equal(d_mean[0][0] + 1.0, d_shift[0][0]) and not torch.allclose(d_mean[1][0], d_shift[1][0])


def test_importance_samples_redraw_the_bottom_up_latents():
    torch.manual_seed(0)
    m = BIVA(**TINY).eval()
    z = m.elbo_terms(binary(2), n_samples=5).z[0]                                 # (5, 2, 4, 8, 8)
    assert z.shape == (5, 2, 4, 8, 8) and not torch.allclose(z[0], z[1])
    assert m.stochastic_bottom_up


def test_without_bottom_up_latents_biva_is_the_ladder_vae():
    torch.manual_seed(1)
    lvae = LadderVAE(**TINY).eval()
    plain = BIVA(bu_channels=(0, 0), **TINY).eval()
    assert not plain.stochastic_bottom_up
    plain.load_state_dict({k: lvae.state_dict()[k.replace(".td.", ".")] for k in plain.state_dict()})
    assert set(k.replace(".td.", ".") for k in plain.state_dict()) == set(lvae.state_dict())   # no extra parameters
    x = binary()
    torch.manual_seed(2); a = lvae.elbo_terms(x)
    torch.manual_seed(2); b = plain.elbo_terms(x)
    assert torch.equal(a.elbo, b.elbo) and all(torch.equal(p, q) for p, q in zip(a.kl, b.kl))
    torch.manual_seed(3); ia = iw_log_likelihood(lvae, x, k=16)[0]
    torch.manual_seed(3); ib = iw_log_likelihood(plain, x, k=16)[0]
    assert torch.equal(ia, ib)


def test_one_stage_without_bottom_up_latent():
    m = BIVA(bu_channels=(4, 0), **TINY).eval()
    check_model(m, binary())
    assert m.latent_names() == ["z1 BU", "z1 TD", "z2", "z3"]


def test_kl_per_dimension_sums_to_the_layer_kl():
    m = BIVA(**TINY).eval()
    for n_samples in (None, 3):
        t = m.elbo_terms(binary(), n_samples=n_samples)
        assert len(t.kl_dims) == len(t.kl)
        for k, kd in zip(t.kl, t.kl_dims):
            assert kd.shape[:-1] == k.shape and torch.allclose(kd.sum(-1), k, atol=1e-3)
    ta = m.elbo_terms(binary(), analytic_kl=True)
    assert all(torch.allclose(kd.sum(-1), k, atol=1e-3) for k, kd in zip(ta.kl, ta.kl_dims))


def test_free_bits_per_dimension_value_and_gradient():
    kd = torch.tensor([[0.01, 0.5, 0.2, 2.0], [0.3, 0.3, 0.0, 0.0]], requires_grad=True)   # 2 examples, D = 4, floor 1.0 / 4
    pen = free_bits_kl(kd, 1.0, "dim")
    assert math.isclose(pen.item(), ((0.25 + 0.5 + 0.25 + 2.0) + (0.3 + 0.3 + 0.25 + 0.25)) / 2, rel_tol=1e-6)
    pen.backward()
    assert kd.grad.tolist() == [[0.0, 0.5, 0.0, 0.5], [0.5, 0.5, 0.0, 0.0]]        # zero below the floor
    with pytest.raises(ValueError, match="per dimension"): free_bits_kl(torch.ones(3), 1.0, "dim")


def test_free_bits_per_example_value_and_gradient():
    k = torch.tensor([0.1, 3.0], requires_grad=True)
    pen = free_bits_kl(k, 1.0, "example"); pen.backward()
    assert math.isclose(pen.item(), 2.0) and k.grad.tolist() == [0.0, 0.5]


@pytest.mark.parametrize("mode", ["dim", "example"])
def test_free_bits_on_the_model_loss(mode):
    torch.manual_seed(0)
    m = BIVA(**TINY).eval()
    x = binary()
    torch.manual_seed(1); loss, metrics = elbo_objective(free_bits=50.0, free_bits_mode=mode)(m, x, 0)
    torch.manual_seed(1); t = m.elbo_terms(x)
    assert torch.isclose(metrics["elbo"], t.elbo.mean())                         # the reported ELBO is the true one
    assert loss.item() >= -t.elbo.mean().item() - 1e-3                            # a high floor only raises the loss
    floored = [kd.clamp(min=50.0 / kd.shape[-1]).sum(-1).mean() for kd in t.kl_dims] if mode == "dim" else [k.clamp(min=50.0).mean() for k in t.kl]
    assert torch.isclose(loss, -t.log_px_z.mean() + sum(floored), atol=1e-3)      # the floor acts exactly as the mode says
    m.zero_grad(); loss.backward()
    enc = m.bottom_up[0].q_bu.net.weight.grad                                     # with every KL under the floor, q gets gradient only via log p(x|z)
    assert enc is not None and torch.isfinite(enc).all()


def test_dim_mode_needs_kl_per_dimension():
    terms = ELBOTerms(torch.zeros(2), (torch.ones(2),))
    with pytest.raises(ValueError, match="kl_dims"): elbo_loss(terms, free_bits=1.0, free_bits_mode="dim")


def test_elbo_not_above_iw_bound():
    torch.manual_seed(0)
    m = BIVA(**TINY).eval()
    ll, elbo = iw_log_likelihood(m, binary(4), k=64, chunk_size=16)
    assert (elbo <= ll + 1e-4).all()
    assert torch.isfinite(iw_log_likelihood(m, binary(4), k=32, chunk_size=5)[0]).all()     # chunks that do not divide k


@pytest.mark.parametrize("bad, match", [(torch.zeros(2, 3, 28, 28), "1-channel"), (torch.zeros(2, 1, 32, 32), "28x28"),
                                        (torch.full((2, 1, 28, 28), 0.5), "binary"), (torch.zeros(1, 28, 28), "shape")])
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match): BIVA(**TINY).elbo_terms(bad)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bu_channels"): BIVA(**TINY, bu_channels=(4,))
    with pytest.raises(ValueError, match="bu_channels"): BIVA(**TINY, bu_channels=(4, -1))
    with pytest.raises(ValueError, match="latent"): BIVA(**TINY, latent="sparse")


def test_reconstruct_sample_active_units_layer_grid():
    torch.manual_seed(0)
    m = BIVA(**TINY).eval()
    x = binary(8)
    assert m.reconstruct(x).shape == x.shape and m.sample(3).shape == (3, 1, 28, 28)
    au = active_units(m, x)
    assert len(au) == 5 and all(0 <= a <= 1 for a in au)
    assert layer_grid(m, layer=1, rows=2, cols=3).shape == (6, 1, 28, 28)
    r1, r2 = m.reconstruct(x), m.reconstruct(x)
    assert torch.equal(r1, r2)                                                    # posterior means in both directions: deterministic


def test_data_dependent_init_and_state_dict_round_trip():
    torch.manual_seed(0)
    m = BIVA(**TINY)
    m.data_init(binary(16))
    m2 = build_model("biva", **TINY)
    m2.load_state_dict(m.state_dict())
    m.eval(); m2.eval()
    torch.manual_seed(5); a = m.elbo_terms(binary()).elbo
    torch.manual_seed(5); b = m2.elbo_terms(binary()).elbo
    assert torch.equal(a, b)


def test_recipes_build_and_match_the_comparison():
    cpu = build_model(BIVA_MNIST_CPU.model, **BIVA_MNIST_CPU.model_kwargs)
    lv = build_model(LVAE_MNIST_CPU.model, **LVAE_MNIST_CPU.model_kwargs)
    n_latent = lambda m: sum(z[0].numel() for z in m.eval().elbo_terms(binary(1)).z)
    assert n_latent(cpu) == n_latent(lv) == 2688                                   # the same latent budget
    assert BIVA_MNIST_CPU.train == LVAE_MNIST_CPU.train and replace(BIVA_MNIST_CPU.data, test_n=None) == LVAE_MNIST_CPU.data
    assert BIVA_MNIST_CPU.data.test_n == 1000 and LVAE_MNIST_CPU.data.test_n is None           # its record: every tenth test image
    assert BIVA_MNIST_CPU_DEEP.data == LVAE_MNIST_CPU.data and BIVA_MNIST_CPU_DEEP.train.steps == BIVA_DEEP_STEPS   # the comparison: all 10k
    assert BIVA_MNIST_CPU.data.valid_split is None                                 # no selection: the last EMA weights
    for e in BIVA_ABLATIONS: assert e.train.steps == 1_500 and e.data.test_n == BIVA_MNIST_CPU.data.test_n
    assert BIVA_MNIST.train.optimizer == "adamax" and BIVA_MNIST.train.ema_decay == 0.9995
    lr_end = BIVA_MNIST.train.lr * BIVA_MNIST.train.lr_final
    assert math.isclose(lr_end, 2e-3 * 0.999999 ** 625_000) and lr_end > 1e-4     # the seed's floor never binds
    assert BIVA_MNIST.objective == dict(free_bits=2.0, free_bits_mode="dim")
    assert BIVA_MNIST.model_kwargs["latent"] == "dense" and BIVA_MNIST.model_kwargs["z_channels"] == (48, 40, 32, 24, 16, 8)
    assert BIVA_CIFAR10.model_kwargs["z_channels"] == tuple(range(38, 8, -2)) and len(BIVA_CIFAR10.model_kwargs["z_channels"]) == 15


def test_seed_configurations_build():
    m = build_model(BIVA_MNIST.model, **BIVA_MNIST.model_kwargs).eval()
    t = m.elbo_terms(binary(2))
    assert len(t.kl) == 11 and [z.shape[1] for z in t.z][::2] == [48, 40, 32, 24, 16, 8]
    c = build_model(BIVA_CIFAR10.model, **BIVA_CIFAR10.model_kwargs).eval()
    assert len(c.latent_names()) == 29 and [h for h in c.hw][::5] == [(16, 16), (16, 16), (8, 8)] and c.hw[-1] == (4, 4)
