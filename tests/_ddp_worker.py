"""Toy models for tests/test_training.py, and the worker it runs under torchrun (2 CPU processes, gloo).

As a worker: `python -m torch.distributed.run --nproc_per_node 2 tests/_ddp_worker.py OUT` trains the DDP problem and
saves, for each rank, what it ends with in OUT/rank{r}.pt.
"""
import sys
from pathlib import Path
import torch
from torch import Tensor, nn


class DiagGaussian(nn.Module):
    "A diagonal Gaussian with learnable mean and log standard deviation; exact log_prob."
    def __init__(self, dim: int = 2):
        super().__init__()
        self.loc, self.log_scale = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))

    def log_prob(self, x: Tensor) -> Tensor:  # (B, D) -> (B,)
        return torch.distributions.Normal(self.loc, self.log_scale.exp()).log_prob(x).sum(-1)


class LinearGaussian(nn.Module):
    "p(y | u) = N(y; W u + b, diag(s^2)) for x = [u, y]; exact and deterministic log_prob."
    def __init__(self, d_in: int = 3, d_out: int = 2):
        super().__init__()
        self.d_in = d_in
        self.net = nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, d_out))
        self.log_scale = nn.Parameter(torch.zeros(d_out))

    def log_prob(self, x: Tensor) -> Tensor:  # (B, d_in + d_out) -> (B,)
        u, y = x[:, :self.d_in], x[:, self.d_in:]
        return torch.distributions.Normal(self.net(u), self.log_scale.exp()).log_prob(y).sum(-1)


def regression_data(n: int, seed: int = 0) -> Tensor:
    "Rows [u, y] with y a noisy nonlinear function of u; (n, 5)."
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 3, generator=g)
    y = torch.stack([u[:, 0] * u[:, 1], u[:, 2].sin()], 1) + 0.1 * torch.randn(n, 2, generator=g)
    return torch.cat([u, y], 1)


def ddp_problem():
    "The model, data and config that the DDP test trains with one and with two processes."
    from lvmkit.training import TrainConfig
    torch.manual_seed(0)
    model = LinearGaussian()
    config = TrainConfig(steps=8, batch_size=16, lr=0.05, eval_every=4, log_every=2, ema_decay=0.5, grad_clip=5.0,
                         lr_schedule="cosine", lr_warmup_steps=2)
    return model, regression_data(70, seed=1), regression_data(13, seed=2), config


def main(out: Path) -> None:
    import torch.distributed as dist
    from lvmkit.training import fit, init_distributed
    rank, world = init_distributed()
    assert world == 2, world
    model, train, valid, config = ddp_problem()
    res = fit(model, train, valid, config, run_dir=out / "run", progress=False, device="cpu")
    torch.save({"params": {k: v.detach().clone() for k, v in res.model.state_dict().items()},
                "raw": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "best_valid": res.best_valid, "world": world, "steps": res.steps}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
