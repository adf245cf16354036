"""Side by side with a seed's own code: the training step of the seed's model, built from the seed's repository, against lvmkit's
reimplementation of the same configuration, on this machine, same batch, same optimiser, same thread count, each in a fresh process.

    git clone https://github.com/addtt/ladder-vae-pytorch /tmp/ladder-vae-pytorch     # the seed (not part of lvmkit)
    git clone https://github.com/addtt/boiler-pytorch /tmp/boiler-pytorch              # its framework (boilr)
    python benchmarks/seeds.py --lvae-src /tmp/ladder-vae-pytorch --boilr-src /tmp/boiler-pytorch

A step is what each project's training loop does per batch: the seed's `forward_pass` (model(x), the loss with its free bits and the
L2 norm it logs) then backward and Adamax; lvmkit's recipe objective through `LossModule`, then backward and Adamax, eager and with
`TrainConfig(compile=True)` (torch.compile; its compile time is reported separately and excluded from the rate). Data loading is
excluded on both sides: one fixed batch of real binarized MNIST. Nothing else should run on the machine. Writes
benchmarks/results/seeds-<date>-<commit>.json, which `python benchmarks/bench.py --page` shows on the Performance page. Not part of CI.
"""
from __future__ import annotations
import argparse, json, platform, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# name -> (the seed's README MNIST configuration, lvmkit's recipe of it)
LVAE_SEED = dict(z_dims=[32] * 12, blocks_per_layer=4, downsample=[0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0], nonlin="elu", merge_type="residual",
                 batchnorm=True, stochastic_skip=True, n_filters=64, dropout=0.2, res_block_type="bacdbacd", free_bits=1.0, learn_top_prior=True,
                 img_shape=(28, 28), likelihood_form="bernoulli", gated=True)
CASES = {"lvae-12": ("addtt/ladder-vae-pytorch, README MNIST command (12 layers x 32, 4 gated blocks, 64 filters, skip, dropout 0.2, free bits 1.0)",
                     "lvae-mnist-12")}


def _batch(n: int):
    import torch
    from lvmkit.data import binarized_mnist
    d = binarized_mnist("train")
    return torch.stack([d[i][0] for i in range(n)]).float()


def _time(step, steps: int, warmup: int) -> tuple[float, float]:
    t = time.perf_counter()
    for i in range(warmup): step(i)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(steps): step(warmup + i)
    return first, time.perf_counter() - t


def run_seed(case: str, src: str, boilr: str, steps: int, warmup: int) -> dict:
    import torch
    sys.path[:0] = [src, boilr]                                         # the seed first: boiler-pytorch has a models/ folder of its own
    from models.lvae import LadderVAE                                      # the seed's own model code
    torch.manual_seed(0)
    x = _batch(64)
    model = LadderVAE(1, **LVAE_SEED).train()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
    def step(i):
        out = model(x)                                                   # the seed's experiment_manager.forward_pass
        loss = (-out["ll"]).mean() + out["kl_loss"]
        l2 = sum(torch.sum(p ** 2) for p in model.parameters()).sqrt()  # computed (and logged) every step by the seed
        opt.zero_grad(); loss.backward(); opt.step()
    first, dt = _time(step, steps, warmup)
    return dict(side="seed", params=sum(p.numel() for p in model.parameters()), examples_per_s=steps * 64 / dt, ms_per_step=1000 * dt / steps,
                warmup_s=first)


def run_lvmkit(case: str, compile: bool, steps: int, warmup: int) -> dict:
    import torch
    sys.path.insert(0, str(ROOT))
    import lvmkit.recipes  # noqa: F401
    from lvmkit.core import build_model
    from lvmkit.experiments import OBJECTIVES, get_experiment
    from lvmkit.training import LossModule, make_optimizer
    exp = get_experiment(CASES[case][1])
    torch.manual_seed(0)
    x = _batch(exp.train.batch_size)
    model = build_model(exp.model, **exp.model_kwargs)
    model.data_init(x)
    module = LossModule(model, OBJECTIVES[exp.loss](**exp.objective))
    if compile: module = torch.compile(module)                           # what fit does with TrainConfig(compile=True)
    opt = make_optimizer(list(model.parameters()), exp.train, torch.device("cpu"))
    model.train()
    def step(i):
        loss, _ = module(x, i)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    first, dt = _time(step, steps, warmup)
    return dict(side="lvmkit compiled" if compile else "lvmkit", params=sum(p.numel() for p in model.parameters()),
                examples_per_s=steps * exp.train.batch_size / dt, ms_per_step=1000 * dt / steps, warmup_s=first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lvae-src", required=True, help="a checkout of addtt/ladder-vae-pytorch")
    ap.add_argument("--boilr-src", required=True, help="a checkout of addtt/boiler-pytorch (the seed's framework)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (for the compiled side: the compilation)")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:                                                           # one side, in this (fresh) process
        r = run_seed("lvae-12", a.lvae_src, a.boilr_src, a.steps, a.warmup) if a.side == "seed" else \
            run_lvmkit("lvae-12", a.side == "compiled", a.steps, a.warmup)
        print(json.dumps(r)); return 0
    import torch
    sys.path.insert(0, str(ROOT))
    from lvmkit.core import default_device, describe_hardware, git_commit
    seed_commit = subprocess.run(["git", "-C", a.lvae_src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
    sides = []
    for side in ("seed", "eager", "compiled"):
        r = subprocess.run([sys.executable, __file__, "--side", side, "--lvae-src", a.lvae_src, "--boilr-src", a.boilr_src,
                            "--steps", str(a.steps), "--warmup", str(a.warmup)], capture_output=True, text=True, cwd=ROOT)
        out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"side": side, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
        sides.append(out); print(json.dumps(out), flush=True)
    rec = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), hardware=describe_hardware(default_device()), torch=torch.__version__,
               python=platform.python_version(), commit=git_commit(ROOT), threads=torch.get_num_threads(),
               command=f"python benchmarks/seeds.py --lvae-src LADDER_VAE --boilr-src BOILR --steps {a.steps} --warmup {a.warmup}",
               cases=[dict(case="lvae-12", seed=f"addtt/ladder-vae-pytorch@{seed_commit}", what=CASES["lvae-12"][0], recipe=CASES["lvae-12"][1], sides=sides)])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"seeds-{rec['date'][:10]}-{rec['commit']}.json"
    out.write_text(json.dumps(rec, indent=1) + "\n"); print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
