"Every book experiment's model trains in NHWC (TrainConfig(channels_last=True)): the same loss up to rounding, and a gradient for every parameter."
import pytest
import torch

import lvmkit.recipes  # noqa: F401  (registers the book's experiments)
from lvmkit.core import build_model
from lvmkit.experiments import EXPERIMENTS, OBJECTIVES
from lvmkit.training import nll_loss

NHWC = torch.channels_last


def _images(dataset: str, n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dataset == "binarized_mnist": return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()
    if dataset == "mnist_pixels": return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    if dataset == "cifar10": return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    raise KeyError(dataset)


# one experiment per (model, dataset): the models the book trains, at their book sizes
CASES = list({(e.model, e.data.dataset): e.name for e in EXPERIMENTS.values()}.values())


def _same_loss_in_nhwc(model, loss_fn, x):
    model.eval()
    torch.manual_seed(1); nchw = loss_fn(model, x, 10)[0]
    model = model.to(memory_format=NHWC)
    xc = x.contiguous(memory_format=NHWC) if x.dim() == 4 else x
    torch.manual_seed(1); nhwc = loss_fn(model, xc, 10)[0]
    assert torch.isfinite(nhwc) and nhwc.item() == pytest.approx(nchw.item(), rel=1e-5, abs=1e-4)
    model.train()
    loss_fn(model, xc, 10)[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no finite gradient in NHWC for {missing}"
    assert any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters())      # the conv weights really are NHWC


@pytest.mark.parametrize("name", CASES)
def test_every_model_trains_in_nhwc(name):
    e = EXPERIMENTS[name]
    torch.manual_seed(0)
    model = build_model(e.model, **e.model_kwargs)
    if not any(p.dim() == 4 for p in model.parameters()): pytest.skip(f"{e.model} has no convolution")
    x = _images(e.data.dataset)
    if hasattr(model, "data_init"): model.data_init(x)
    _same_loss_in_nhwc(model, OBJECTIVES[e.loss](**e.objective), x)


def test_the_vqvae_prior_trains_in_nhwc():
    e = EXPERIMENTS["vqvae-cifar10"]
    torch.manual_seed(0)
    vq = build_model(e.model, **e.model_kwargs).eval()
    codes = vq.prior_data(_images("cifar10"))
    prior = build_model(e.prior.model, **vq.prior_arguments(), **e.prior.model_kwargs)
    _same_loss_in_nhwc(prior, nll_loss, codes)
