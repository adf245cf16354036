"""Side by side with the seeds' own code: the training step of a seed's model, built from the seed's repository, against lvmkit's
reimplementation of the same configuration, on this machine, same batch, same thread count, each in a fresh process. The seeds are not
part of lvmkit: check out the ones the cases you run need (CASES names them).

    git clone https://github.com/addtt/ladder-vae-pytorch /tmp/ladder-vae-pytorch              # lvae-12
    git clone https://github.com/addtt/boiler-pytorch /tmp/boiler-pytorch                       # lvae-12: the seed's framework (boilr)
    git clone https://github.com/altosaar/variational-autoencoder /tmp/variational-autoencoder  # vae-meanfield, iaf, iaf-seed
    git clone https://github.com/henrhoi/vae-pytorch /tmp/vae-pytorch                            # vqvae, vqvae-seed, pixelcnn
    python benchmarks/seeds.py --lvae-src /tmp/ladder-vae-pytorch --boilr-src /tmp/boiler-pytorch \\
        --altosaar-src /tmp/variational-autoencoder --henrhoi-src /tmp/vae-pytorch                # every case; --cases to choose

A step is what each project's training loop does per batch. The seed's: its own model, loss and optimiser, as its script trains them
(lvae-12: `forward_pass`, i.e. model(x), the loss with its free bits and the L2 norm it logs, then backward and Adamax; vae-meanfield and
iaf: the loop of train_variational_autoencoder_pytorch.py, a one-sample ELBO summed over the batch, then backward and its centred RMSprop;
vqvae, vqvae-seed and pixelcnn: the `train` loop of vq_vae.py and of vq_vae_gated_pixelcnn_prior.py, its loss, backward, Adam and the `loss.item()`
it records). lvmkit's: the recipe's objective through `LossModule` (stage 2: minus log p(codes), as `fit_prior` trains it), backward and
the recipe's optimiser, eager and with `TrainConfig(compile=True)` (torch.compile of the loss module and of the optimizer's step, as `fit` does; its compile
time is reported separately and excluded from the rate), each in float32 and under bf16 autocast (`TrainConfig(amp=True)`, `lvmkit train NAME --amp`: the forward pass in bf16
where autocast chooses it, weights, gradients and optimiser state in float32), and in float32 with channels-last (sides eager-cl and
compiled-cl: `TrainConfig(channels_last=True)`, `lvmkit train NAME --channels-last`, the model's 4-d weights and the batch in NHWC). The seeds train in float32. A speed-up under bf16 counts
only with a full bf16 run whose bound matches the float32 record (the Performance page shows that check). Data loading is excluded on both sides: one fixed batch of real data (binarized MNIST, or CIFAR-10 with each side's own
preprocessing of it done once beforehand, as each loads its data: henrhoi's dequantized logits, lvmkit's 8-bit pixels, lvmkit's codes for
its prior). henrhoi's code calls .cuda(): in its process that is made a no-op, so that it runs on the CPU, unchanged. The JSON record
gives each side's parameter count, batch and optimiser, and each case's description says where the configurations differ; the float32
eager sides (the seed's and lvmkit's) also give their work per step (`gflop_per_step`: matrix products and convolutions of one more,
untimed step, forward and backward, counted as benchmarks/flops.py counts them), and the record the machine's matrix-product rates, so
that the page can show how much of the machine each side uses. Nothing else
should run on the machine. Writes benchmarks/results/seeds-<date>-<commit>.json (or --out), which `python benchmarks/bench.py --page`
shows on the Performance page. Not part of CI.
"""
from __future__ import annotations
import argparse, importlib.util, json, os, subprocess, sys, time, types
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import record, write_record  # noqa: E402  (every record's machine, commit and date)
SIDES = ("seed", "eager", "compiled", "eager-bf16", "compiled-bf16",   # lvmkit in float32, and under bf16 autocast (TrainConfig(amp=True))
         "eager-cl", "compiled-cl")                                     # lvmkit in float32 with channels-last (TrainConfig(channels_last=True))
# the seeds' checkouts: option -> (repository, placeholder in the recorded command)
SOURCES = {"lvae_src": ("addtt/ladder-vae-pytorch", "LADDER_VAE"), "boilr_src": ("addtt/boiler-pytorch", "BOILR"),
           "altosaar_src": ("altosaar/variational-autoencoder", "ALTOSAAR_VAE"), "henrhoi_src": ("henrhoi/vae-pytorch", "HENRHOI_VAE")}
# the seed's README MNIST configuration of lvae-12
LVAE_SEED = dict(z_dims=[32] * 12, blocks_per_layer=4, downsample=[0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0], nonlin="elu", merge_type="residual",
                 batchnorm=True, stochastic_skip=True, n_filters=64, dropout=0.2, res_block_type="bacdbacd", free_bits=1.0, learn_top_prior=True,
                 img_shape=(28, 28), likelihood_form="bernoulli", gated=True)
ALTOSAAR = dict(latent_size=128, data_size=784)              # its config: latent_size 128, data_size 784 (hidden = 2 x latent), batch 128


class Case(NamedTuple):
    what: str                   # the seed's configuration, and where lvmkit's differs
    recipe: str                 # lvmkit's recipe of it
    sources: tuple[str, ...]    # options (SOURCES) naming the seed's checkouts; the first is the seed
    prior: bool = False         # time the recipe's stage 2 (its prior over the codes) instead of stage 1
    model_kwargs: dict | None = None   # arguments of the recipe's model replaced for this case (the seed's architecture where the recipe's differs)
    prior_kwargs: dict | None = None   # the same for the recipe's prior (stage 2)


CASES = {
    "lvae-12": Case("addtt/ladder-vae-pytorch, README MNIST command (12 layers x 32, 4 gated blocks, 64 filters, skip, dropout 0.2, free bits 1.0)",
                    "lvae-mnist-12", ("lvae_src", "boilr_src")),
    "vae-meanfield": Case("altosaar/variational-autoencoder, train_variational_autoencoder_pytorch.py with variational: mean-field (latent 128, "
                          "ReLU MLPs 784-256-256-256 and 128-256-256-784, Bernoulli decoder, one-sample ELBO summed over a batch of 128 binarized "
                          "MNIST images, RMSprop lr 1e-3). The seed's RMSprop is centred (centered=True, since its commit aeee4f9, after its "
                          "README's mean-field run); lvmkit's recipe uses torch's RMSprop uncentred (TrainConfig has no such option)",
                          "vae-seed-meanfield", ("altosaar_src",)),
    "iaf": Case("altosaar/variational-autoencoder, train_variational_autoencoder_pytorch.py with its default variational: flow (flow_depth 2: "
                "two LSTM-type IAF blocks, each a MADE 128-256-256-256 with context 128, reversed between blocks; the encoder MLP outputs loc, "
                "scale and context; otherwise as vae-meanfield, centred RMSprop lr 1e-3, batch 128). lvmkit's recipe: uncentred RMSprop, and its MADE "
                "also feeds the context to its output layer and holds the gate's initial bias in the output bias instead of a separate "
                "parameter: 32,640 more parameters per block",
                "iaf-seed", ("altosaar_src",)),
    "iaf-seed": Case("altosaar/variational-autoencoder, as the iaf case. lvmkit builds the seed's architecture: the iaf-seed recipe with "
                     "iaf_vae(context_to_output=False), so that the context enters each MADE's first layer only, as the seed's does. "
                     "Parameters then differ by the seed's separate gate bias (128 per block; lvmkit holds it in the output layer's bias). "
                     "Still uncentred RMSprop, where the seed's is centred",
                     "iaf-seed", ("altosaar_src",), model_kwargs=dict(context_to_output=False)),
    "vqvae": Case("henrhoi/vae-pytorch, vq_vae.py stage 1 on CIFAR-10 (VQVAE(K=128, D=256): conv encoder and decoder of 256 channels with "
                  "batch norm, MSE on dequantized logit pixels + codebook + commitment loss, Adam 1e-3, batch 128; its count excludes the "
                  "PixelCNN prior it builds but does not train in this stage). lvmkit's vqvae-cifar10 keeps K, D, the 256 channels, beta 1, "
                  "the codebook init, Adam 1e-3 and the batch, but decodes to a 10-component discretized logistic mixture of 8-bit pixels "
                  "(100 output channels, not 3), without batch norm, with a 1x1 conv closing the encoder and a 3x3 conv opening the "
                  "decoder: about 1.05M more parameters", "vqvae-cifar10", ("henrhoi_src",)),
    "vqvae-seed": Case("henrhoi/vae-pytorch, vq_vae.py stage 1 on CIFAR-10, as the vqvae case. lvmkit builds the seed's architecture: "
                       "vqvae-cifar10 with VQVAE(layout='seed', n_mix=1), the seed's encoder and decoder layer for layer (batch norm before each "
                       "ReLU, no convolution to and from the codes), K, D, beta, codebook init, Adam 1e-3 and the batch as the seed. The one "
                       "difference: the decoder's last layer outputs one discretized logistic per pixel with its channel coefficients (10 "
                       "channels, 28,679 more parameters, 0.6%) for a likelihood of 8-bit pixels, where the seed's outputs 3 channels for an MSE",
                       "vqvae-cifar10", ("henrhoi_src",), model_kwargs=dict(layout="seed", n_mix=1)),
    "pixelcnn": Case("henrhoi/vae-pytorch, vq_vae_gated_pixelcnn_prior.py stage 2: its Gated PixelCNN prior over the 8x8 codes (embedding 64, "
                     "a 7x7 type-A masked conv to 256 filters, 13 gated layers with full 7x7 kernels masked and layer norm, a 7x7 masked conv "
                     "to the 128 logits; its n_layers=15 counts the input and output convs), cross-entropy, Adam 8e-4, batch 64; its loop "
                     "encodes and quantizes each image batch (encoder in training mode) before the prior. lvmkit's vqvae-cifar10 prior stage "
                     "(gated_pixelcnn_prior: embedding 64, 13 gated layers of 256 channels, a 512-wide 1x1 output head; Adam 8e-4, batch 64; "
                     "15 gated layers in records made before commit be66877) trains on codes computed once beforehand (not timed). Its gated "
                     "layers hold as many weights that masks leave free as the seed's: lvmkit crops its kernels to the 4x7 and 1x4 taps a "
                     "causal layer may use, where the seed's multiplies full 7x7 and 1x7 weights by a mask (its parameter count includes the "
                     "zeros: see the unmasked count). Where they still differ: lvmkit's input is a 1x1 convolution and its first gated layer "
                     "the causal one, where the seed's is a 7x7 type-A masked convolution; lvmkit's output is the 1x1 head, the seed's a 7x7 "
                     "masked convolution; lvmkit has no layer norm and its convolutions have biases. The seed's count is its prior's "
                     "(params_total adds the VQ-VAE it encodes with)",
                     "vqvae-cifar10", ("henrhoi_src",), prior=True),
}


def _with(kwargs: dict | None) -> str:
    "How a case's replaced model arguments read after the recipe's name: ' with layout='seed', n_mix=1'."
    return " with " + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) if kwargs else ""


def _batch(n: int, dataset: str = "binarized_mnist"):
    "n training examples of real data as lvmkit loads them: binarized MNIST (n, 1, 28, 28) float 0./1., or CIFAR-10 (n, 3, 32, 32) uint8."
    import torch
    from lvmkit.data import binarized_mnist, cifar10
    if dataset == "cifar10": return cifar10("train").tensors[0][:n].clone()
    d = binarized_mnist("train")
    return torch.stack([d[i][0] for i in range(n)]).float()


def _henrhoi_pixels(x):
    "The seed's preprocessing of CIFAR-10 (its `dequantize`, applied once to the whole set): uniform dequantization, then logit(0.05 + 0.9 x / 256)."
    import torch
    x = x.float() + torch.zeros_like(x, dtype=torch.float).uniform_(0, 1)
    p = 0.1 / 2 + (1 - 0.1) * x / 256
    return torch.log(p) - torch.log(1 - p)


def _time(step, steps: int, warmup: int) -> tuple[float, float]:
    t = time.perf_counter()
    for i in range(warmup): step(i)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(steps): step(warmup + i)
    return first, time.perf_counter() - t


def _count(params) -> int: return sum(p.numel() for p in params)


MASKED = {"mask": ("weight", "linear.weight"), "vmask": ("vertical.weight", "v.weight"), "hmask": ("horizontal.weight", "h.weight")}


def _count_unmasked(model) -> int:
    """The parameters that can be non-zero: a weight multiplied by a 0/1 mask buffer counts only the entries its mask keeps. MASKED names
    the weight each mask multiplies: its module's own (lvmkit's MaskedLinear, henrhoi's MaskedConv2d), its `linear` (altosaar's
    MaskedLinear), its vertical and horizontal stacks (henrhoi's GatedConv2d, lvmkit's GatedLayer)."""
    n = _count(model.parameters())
    for mod in model.modules():
        params = dict(mod.named_parameters())
        for name, mask in mod.named_buffers(recurse=False):
            if name not in MASKED: continue
            w = next((params[c] for c in MASKED[name] if c in params), None)
            if w is None: raise ValueError(f"{type(mod).__name__}.{name}: none of the weights {MASKED[name]} it masks")
            n -= w.numel() - int(mask.expand_as(w).count_nonzero())
    return n


def _gflop(step, i: int) -> float:
    """The matrix products and convolutions of one more (untimed) step, forward and backward, in GFLOP (benchmarks/flops.py's counter).
    Counted on the float32 eager sides only: the compiled and bf16 sides do the same work."""
    from flops import flops
    return flops(lambda: step(i)) / 1e9


def _optimizer(opt) -> str:
    "The optimiser and the settings that distinguish it, e.g. RMSprop(lr=0.001, centered=True)."
    g = opt.param_groups[0]
    keys = [k for k in ("lr", "alpha", "eps", "centered", "betas", "weight_decay") if k in g]
    return f"{type(opt).__name__}(" + ", ".join(f"{k}={g[k]}" for k in keys) + ")"


def _seed_lvae(src: str, boilr: str, batch: int | None):
    import torch
    sys.path[:0] = [src, boilr]                                         # the seed first: boiler-pytorch has a models/ folder of its own
    from models.lvae import LadderVAE                                      # the seed's own model code
    torch.manual_seed(0)
    n = batch or 64
    x = _batch(n)
    model = LadderVAE(1, **LVAE_SEED).train()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
    def step(i):
        out = model(x)                                                   # the seed's experiment_manager.forward_pass
        loss = (-out["ll"]).mean() + out["kl_loss"]
        l2 = sum(torch.sum(p ** 2) for p in model.parameters()).sqrt()  # computed (and logged) every step by the seed
        opt.zero_grad(); loss.backward(); opt.step()
    return step, n, opt, dict(params=_count(model.parameters()))


def _seed_altosaar(case: str, src: str, batch: int | None):
    import torch
    n = batch or 128
    x = _batch(n).view(n, -1)                                            # the seed's rows of binary_mnist.h5: (B, 784) float32 0./1.
    sys.path.insert(0, src)
    for name in ("nomen", "h5py"):                                       # imported by its script (and data.py) for its command line and data file only
        if importlib.util.find_spec(name) is None: sys.modules[name] = types.ModuleType(name)
    import train_variational_autoencoder_pytorch as seed                 # the seed's own model code
    torch.manual_seed(0)
    model = seed.Model(**ALTOSAAR)
    variational = seed.VariationalMeanField(**ALTOSAAR) if case == "vae-meanfield" else seed.VariationalFlow(**ALTOSAAR, flow_depth=2)
    opt = torch.optim.RMSprop(list(model.parameters()) + list(variational.parameters()), lr=1e-3, centered=True)   # as its script
    def step(i):                                                         # its training loop
        model.zero_grad(); variational.zero_grad()
        z, log_q_z = variational(x, n_samples=1)
        log_p_x_and_z = model(z, x)
        elbo = (log_p_x_and_z - log_q_z).mean(1)                         # average over the sample dimension
        loss = -elbo.sum(0)                                              # sum over the batch
        loss.backward(); opt.step()
    full, unmasked = _count(model.parameters()) + _count(variational.parameters()), _count_unmasked(model) + _count_unmasked(variational)
    return step, n, opt, dict(params=full, **(dict(params_unmasked=unmasked) if unmasked != full else {}))


def _seed_henrhoi(case: str, src: str, batch: int | None):
    import torch
    n = batch or (64 if case == "pixelcnn" else 128)                     # vq_vae_gated_pixelcnn_prior.py: batch 64; vq_vae.py: 128
    torch.manual_seed(0)
    x = _henrhoi_pixels(_batch(n, "cifar10"))
    torch.nn.Module.cuda = lambda self, device=None: self                # its modules and tensors call .cuda(): run them on the CPU
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    os.environ.setdefault("MPLBACKEND", "Agg")                           # its utils import matplotlib.pyplot
    sys.path.insert(0, src)
    torch.manual_seed(0)
    if case.startswith("vqvae"):
        import vq_vae as seed                                            # the seed's own model code
        model, lr, prior_only = seed.VQVAE(K=128, D=256), 1e-3, False
        loss_fn, trained = model.get_vae_loss, [p for name, p in model.named_parameters() if not name.startswith("pixelcnn_prior.")]
    else:
        import vq_vae_gated_pixelcnn_prior as seed
        model, lr, prior_only = seed.Improved_VQVAE(K=128, D=256), 8e-4, True
        loss_fn, trained = model.get_pixelcnn_prior_loss, list(model.pixelcnn_prior.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=lr)                    # as its script: every parameter of the model
    def step(i):                                                         # its train() loop
        opt.zero_grad()
        output = model(x, prior_only)
        loss = loss_fn(x, output)
        loss.backward(); opt.step()
        loss.cpu().item()                                                # train_losses.append(loss.cpu().item())
    prior = model.pixelcnn_prior if case == "pixelcnn" else None
    unmasked = _count_unmasked(prior) if prior is not None else _count(trained)
    return step, n, opt, dict(params=_count(trained), **(dict(params_unmasked=unmasked) if unmasked != _count(trained) else {}),
                              params_total=_count(model.parameters()))


def median_run(runs: list[dict]) -> dict:
    "One side's measurements as one: the run with the median rate (the lower middle one of an even count), with every rate in `examples_per_s_runs`."
    ok = [r for r in runs if "error" not in r]
    if not ok: return runs[-1]
    mid = sorted(ok, key=lambda r: r["examples_per_s"])[(len(ok) - 1) // 2]
    return dict(mid, examples_per_s_runs=[r["examples_per_s"] for r in ok]) if len(runs) > 1 else mid


def run_seed(case: str, src: dict, batch: int | None, steps: int, warmup: int) -> dict:
    if case == "lvae-12": step, n, opt, counts = _seed_lvae(src["lvae_src"], src["boilr_src"], batch)
    elif case in ("vae-meanfield", "iaf", "iaf-seed"): step, n, opt, counts = _seed_altosaar(case, src["altosaar_src"], batch)
    else: step, n, opt, counts = _seed_henrhoi(case, src["henrhoi_src"], batch)
    first, dt = _time(step, steps, warmup)
    return dict(side="seed", **counts, batch=n, optimizer=_optimizer(opt), examples_per_s=steps * n / dt, ms_per_step=1000 * dt / steps,
                warmup_s=first, gflop_per_step=_gflop(step, warmup + steps))


def run_lvmkit(case: str, compile: bool, batch: int | None, steps: int, warmup: int, amp: bool = False, channels_last: bool = False) -> dict:
    import torch
    sys.path.insert(0, str(ROOT))
    import lvmkit.recipes  # noqa: F401
    from lvmkit.core import build_model
    from lvmkit.experiments import OBJECTIVES, get_experiment
    from dataclasses import replace
    from lvmkit.training import LossModule, compile_step, make_optimizer, nll_loss
    exp = get_experiment(CASES[case].recipe)
    torch.manual_seed(0)
    model = build_model(exp.model, **{**exp.model_kwargs, **(CASES[case].model_kwargs or {})})
    if CASES[case].prior:                                                # stage 2, as fit_prior: the prior over the first stage's codes
        train = exp.prior.train
        n = batch or train.batch_size
        with torch.no_grad(): x = model.eval().prior_data(_batch(n, exp.data.dataset))    # computed once for the training set: not timed
        model, loss_fn = build_model(exp.prior.model, **model.prior_arguments(), **{**exp.prior.model_kwargs, **(CASES[case].prior_kwargs or {})}), nll_loss
    else:
        train = exp.train
        n = batch or train.batch_size
        x, loss_fn = _batch(n, exp.data.dataset), OBJECTIVES[exp.loss](**exp.objective)
    if hasattr(model, "data_init"): model.data_init(x)                  # what fit does with the first batch
    if channels_last:                                                    # what fit does with TrainConfig(channels_last=True)
        model = model.to(memory_format=torch.channels_last)
        if x.dim() == 4: x = x.contiguous(memory_format=torch.channels_last)
    module = LossModule(model, loss_fn)
    if compile: module = torch.compile(module)                           # what fit does with TrainConfig(compile=True)
    opt = make_optimizer(list(model.parameters()), replace(train, compile=compile), torch.device("cpu"))
    update = compile_step(opt) if compile else opt.step                # fit compiles the optimizer's step too
    model.train()
    def step(i):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):  # as train_step runs the forward pass with TrainConfig(amp=True)
            loss, _ = module(x, i)
        opt.zero_grad(set_to_none=True); loss.float().backward(); update()
    first, dt = _time(step, steps, warmup)
    unmasked = _count_unmasked(model)
    return dict(side=("lvmkit compiled" if compile else "lvmkit") + (" bf16" if amp else "") + (" channels-last" if channels_last else ""), params=_count(model.parameters()),
                **(dict(params_unmasked=unmasked) if unmasked != _count(model.parameters()) else {}), batch=n, optimizer=_optimizer(opt),
                examples_per_s=steps * n / dt, ms_per_step=1000 * dt / steps, warmup_s=first,
                **({} if compile or amp or channels_last else dict(gflop_per_step=_gflop(step, warmup + steps))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), help="which cases (default: all)")
    ap.add_argument("--lvae-src", help="a checkout of addtt/ladder-vae-pytorch (lvae-12)")
    ap.add_argument("--boilr-src", help="a checkout of addtt/boiler-pytorch, the framework of ladder-vae-pytorch (lvae-12)")
    ap.add_argument("--altosaar-src", help="a checkout of altosaar/variational-autoencoder (vae-meanfield, iaf, iaf-seed)")
    ap.add_argument("--henrhoi-src", help="a checkout of henrhoi/vae-pytorch (vqvae, vqvae-seed, pixelcnn)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (for the compiled side: the compilation)")
    ap.add_argument("--repeats", type=int, default=1, help="measure every side this many times, in rounds (each round runs every side once, "
                                                           "so a slow spell of the machine hits all sides alike); the record keeps each rate and the median")
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="which sides (default: all)")
    ap.add_argument("--batch", type=int, help="one batch size for every case and side instead of the seeds' (smoke tests only; the record says so)")
    ap.add_argument("--out", type=Path, help="the JSON record (default: benchmarks/results/seeds-<date>-<commit>.json)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.repeats < 1: ap.error(f"--repeats must be >= 1, got {a.repeats}")
    src = {k: getattr(a, k) for k in SOURCES}
    if a.side:                                                           # one side of one case, in this (fresh) process
        r = run_seed(a.case, src, a.batch, a.steps, a.warmup) if a.side == "seed" else \
            run_lvmkit(a.case, a.side.startswith("compiled"), a.batch, a.steps, a.warmup, amp=a.side.endswith("bf16"), channels_last=a.side.endswith("-cl"))
        print(json.dumps(r)); return 0
    missing = {f"--{k.replace('_', '-')}" for c in a.cases for k in CASES[c].sources if "seed" in a.sides and not src[k]}
    if missing: ap.error(f"the seed side of {', '.join(a.cases)} needs {' and '.join(sorted(missing))} (see --help for the checkouts)")
    passed = [x for k in SOURCES if src[k] for x in (f"--{k.replace('_', '-')}", src[k])]
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--batch", str(a.batch)] if a.batch else [])
    rounds = ["--repeats", str(a.repeats)] if a.repeats > 1 else []
    cases = []
    for case in a.cases:
        c = CASES[case]
        commit = (subprocess.run(["git", "-C", src[c.sources[0]], "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
                  if src[c.sources[0]] else "") or "unknown"
        runs: dict[str, list[dict]] = {side: [] for side in a.sides}
        for _ in range(a.repeats):                                      # rounds: every side once per round
            for side in a.sides:
                r = subprocess.run([sys.executable, __file__, "--case", case, "--side", side, *passed, *common], capture_output=True, text=True, cwd=ROOT)
                out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"side": side, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
                runs[side].append(out); print(json.dumps({"case": case, **out}), flush=True)
        sides = [median_run(v) for v in runs.values()]
        cases.append(dict(case=case, seed=f"{SOURCES[c.sources[0]][0]}@{commit}", what=c.what + (f" [smoke test: batch {a.batch}]" if a.batch else ""),
                          recipe=c.recipe + (f" (prior stage{_with(c.prior_kwargs)})" if c.prior else "") + _with(c.model_kwargs), sides=sides))
    needed = [k for k in SOURCES if any(k in CASES[c].sources for c in a.cases) and "seed" in a.sides]
    command = " ".join(["python benchmarks/seeds.py", "--cases", *a.cases, *[f"--{k.replace('_', '-')} {SOURCES[k][1]}" for k in needed], *common, *rounds]
                       + (["--sides", *a.sides] if list(a.sides) != list(SIDES) else []))
    write_record(record(command, cases, rates=True), "seeds-", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
