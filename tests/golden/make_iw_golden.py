"""Capture importance-weighted numbers of a small model of each family at a fixed seed (run once, on the code *before* a refactor).

    python tests/golden/make_iw_golden.py tests/golden/iw_before_refactor.json

tests/test_protocol.py recomputes them with the current estimator (`log_weights`) and asserts agreement to 1e-4.
"""
import json, sys
import torch

CASES = {  # name: (model name, kwargs, input kind)
    "mlp_vae": ("mlp_vae", dict(z_dim=8, hidden=(32,)), "binary28"),
    "gaussian_vae": ("gaussian_vae", dict(x_dim=2, z_dim=2, hidden=(16,)), "real2"),
    "iaf_vae": ("iaf_vae", dict(z_dim=8, hidden=(32,), steps=2), "binary28"),
    "mlp_vlae": ("mlp_vlae", dict(z_dim=8, hidden=(32,), flow_hidden=(16,), flow_steps=2), "binary28"),
    "conv_vae": ("conv_vae", dict(x_shape=(3, 16, 16), z_dim=4, n_mix=2, prior="flow", flow_hidden=(8,)), "pixels16"),
    "pixelcnn_vae": ("pixelcnn_vae", dict(z_dim=4, hidden=(16,), channels=8, layers=1), "binary28"),
    "lvae_linear": ("lvae", dict(z_channels=(2, 2), downsample=(1, 0), channels=8, blocks=1, dropout=0.0), "binary28"),
    "lvae_precision_noskip": ("lvae", dict(z_channels=(2, 2, 2), downsample=(1, 0, 1), channels=8, blocks=1, merge="precision",
                                           skip=False, dropout=0.0, batchnorm=False), "binary28"),
    "lvae_dmol": ("lvae", dict(x_shape=(3, 16, 16), z_channels=(2, 2), downsample=(1, 0), channels=8, blocks=1, likelihood="dmol",
                               n_mix=2, dropout=0.0), "pixels16"),
    "vqvae_gated_prior": ("vqvae", dict(x_shape=(3, 16, 16), channels=16, dim=8, n_codes=16, n_mix=2), "pixels16"),
    "vqvae": ("vqvae", dict(x_shape=(3, 16, 16), channels=16, dim=8, n_codes=16, n_mix=2), "pixels16"),
}
K, CHUNK = 50, 20


def make_input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    if kind == "binary28": return (torch.rand(6, 1, 28, 28, generator=g) < 0.3).float()
    if kind == "real2": return torch.randn(6, 2, generator=g)
    if kind == "pixels16": return torch.randint(0, 256, (6, 3, 16, 16), generator=g)
    raise ValueError(kind)


def build(name: str):
    from lvmkit.core import build_model
    model_name, kwargs, kind = CASES[name]
    torch.manual_seed(0)
    model = build_model(model_name, **kwargs)
    if name == "vqvae_gated_prior":   # stage 2: a Gated PixelCNN over the 4x4 code grid, built under its own seed
        torch.manual_seed(2)
        prior = build_model("gated_pixelcnn_prior", n_codes=16, grid=(4, 4), embed=8, channels=8, layers=2)
        attach = getattr(model, "set_prior", None)
        if attach is not None: attach(prior)
        else: model.prior = prior
    return model.eval(), make_input(kind)


def iw_numbers(name: str, estimator) -> dict:
    "IW-K log-likelihood and mean ELBO per example, computed in chunks of CHUNK samples with the global seed fixed."
    model, x = build(name)
    torch.manual_seed(1)
    ll, elbo = estimator(model, x, k=K, chunk_size=CHUNK)
    return {"iw": ll.tolist(), "elbo": elbo.tolist()}


if __name__ == "__main__":
    from lvmkit.objectives import iw_log_likelihood
    out = {name: iw_numbers(name, iw_log_likelihood) for name in CASES}
    json.dump(out, open(sys.argv[1], "w"), indent=1)
    print(json.dumps({k: round(sum(v["iw"]) / len(v["iw"]), 4) for k, v in out.items()}))
