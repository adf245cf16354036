"""What the arithmetic allows: the floating-point work of each chapter's recipe, counted by torch's own counter, and this machine's
measured matrix-product rate, so that a measured time can be set beside the least time the work could take on this machine.

    python benchmarks/flops.py                 # every case of benchmarks/bench.py; writes benchmarks/results/flops-<date>-<commit>.json
    python benchmarks/flops.py --cases lvae-mnist-cpu vqvae-cifar10-cpu

Counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products and convolutions (forward and, for training, backward; a
multiply-add is two operations). Elementwise work (activations, sampling, densities, the optimiser's update) is not counted: the counts
are a lower bound of the work, and the floors below are lower bounds of the time. Per recipe, with its initial weights (the work does not
depend on them):

- training: one step of the recipe's objective on one batch of real data of its batch size, forward and backward, per example;
- evaluation: `model.log_weights(x, S)` as `iw_log_likelihood` calls it, per chunk of S samples (S from the recipe's evaluation batch
  and `max_elements`, as the evaluation chooses it), counted on 2 test images at S and at 2S samples: the difference is the work of one
  sample, the rest is the work each chunk repeats (the bottom-up pass of a hierarchy, say). The whole test set at the recipe's first K
  then costs ceil(K / S) chunks per image.

The machine's rate (`machine.matmul_rate`) is the best of a few square float32 and bf16 matrix products of size 1024 at torch's thread
count: not the processor's theoretical peak, but what torch's kernels reach on the easiest work there is. Convolutions, smaller
matrices and everything not counted run slower, so a recipe's measured time is above its floor; the page shows by how much where a
`benchmarks/bench.py` record of a machine of the same speed exists. Not part of CI.
"""
from __future__ import annotations
import argparse, json, math, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import record, write_record  # noqa: E402
from bench import CASES  # noqa: E402


def flops(fn) -> int:
    "The matrix-product and convolution operations that `fn()` performs (torch.utils.flop_counter.FlopCounterMode's total)."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter: fn()
    return counter.get_total_flops()


def chunk_size(k: int, batch_size: int, max_elements: int, dims: int) -> int:
    "The samples per chunk that iw_log_likelihood draws for a full batch (its rule for max_elements)."
    return max(1, min(k, max_elements // max(1, batch_size * dims)))


def count(name: str, eval_images: int = 2) -> dict:
    "One recipe's work: per training example, and per image of its evaluation (per sample, per chunk, and in all at its first K)."
    import torch
    sys.path.insert(0, str(ROOT))
    import lvmkit.recipes  # noqa: F401  (registers the experiments)
    from lvmkit.core import build_model, seed_everything
    from lvmkit.experiments import OBJECTIVES, get_dataset, get_experiment
    from lvmkit.training import LossModule
    exp = get_experiment(name)
    seed_everything(0)
    model = build_model(exp.model, **exp.model_kwargs)
    train = get_dataset(exp.data.dataset, "train")
    first = lambda item: item[0] if isinstance(item, (tuple, list)) else item
    batch = torch.stack([first(train[i]) for i in range(exp.train.batch_size)])
    if hasattr(model, "data_init"): model.data_init(batch)
    module = LossModule(model, OBJECTIVES[exp.loss](**exp.objective)).train()
    def step():
        loss, _ = module(batch, 0)
        loss.backward()
    train_flop = flops(step)
    model.zero_grad(set_to_none=True)
    test = get_dataset(exp.data.dataset, exp.data.test_split)
    x = torch.stack([first(test[i]) for i in range(eval_images)])
    D, k, B = x[0].numel(), exp.evaluation.k[0], exp.evaluation.batch_size
    S = chunk_size(k, B, exp.evaluation.max_elements, D)
    model.eval()
    with torch.no_grad():
        one, two = (flops(lambda s=s: model.log_weights(x, s)) for s in (S, 2 * S))
    per_sample = (two - one) / (S * eval_images)
    per_chunk = one / eval_images - S * per_sample                    # repeated by every chunk, whatever its size
    chunks = math.ceil(k / S)
    return dict(name=name, params=sum(p.numel() for p in model.parameters()), batch_size=exp.train.batch_size,
                train_flop_per_example=train_flop / exp.train.batch_size, eval_k=k, eval_batch_size=B, eval_samples_per_chunk=S,
                eval_chunks=chunks, eval_flop_per_sample=per_sample, eval_flop_per_chunk_fixed=per_chunk,
                eval_flop_per_image=chunks * (per_chunk + S * per_sample), test_n=len(test))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=[c[1] for c in CASES], help="recipe names (default: every case of bench.py)")
    ap.add_argument("--out", type=Path, help="the JSON record (default: benchmarks/results/flops-<date>-<commit>.json)")
    a = ap.parse_args()
    cases = []
    for chapter, name, _, _ in CASES:
        if a.cases and name not in a.cases: continue
        c = dict(count(name), chapter=chapter); cases.append(c)
        print(json.dumps(c), flush=True)
    write_record(record("python benchmarks/flops.py" + (" --cases " + " ".join(a.cases) if a.cases else ""), cases, rates=True), "flops-", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
