"""Importance-weighted evaluation in float32 and under bf16 autocast, on trained runs: time and the difference of the estimates.

    python benchmarks/amp_eval.py --runs runs --cases lvae-mnist-cpu:200 vae-mlp:1000
    python benchmarks/bench.py --page          # shows the newest record on the book's Performance page

For each run folder (RUN:N), its last weights (EMA where the run kept them) are evaluated on N test images spread evenly over the split,
with the recipe's K (the first of its Evaluation.k), batch size and chunking, compiled as the recipe's full-mode evaluation is, twice:
in float32 and with `amp=True`. Both passes use the same seed, so they draw the same noise (autocast does not change the random
stream) and the per-image difference is paired: its mean and standard error over the N images say whether bf16 moved the bound
beyond the noise of the difference. Time per 1000 images is from a second, timed pass of each (the first pass compiles). Unlike speed,
the difference depends on the trained weights, which is why this runs on run folders and bench.py runs on initial weights.
Nothing else should run on the machine while it measures. Not part of CI.
"""
from __future__ import annotations
import argparse, json, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import record, write_record  # noqa: E402  (every record's machine, commit and date)


def measure(run: Path, n: int) -> dict:
    import torch
    sys.path.insert(0, str(ROOT))
    import lvmkit.recipes  # noqa: F401  (registers the experiments)
    from lvmkit.checkpoint import load_model
    from lvmkit.experiments import get_dataset, get_experiment, _subset
    from lvmkit.objectives import iw_log_likelihood
    exp = get_experiment(recipe_of(run.name))
    ev = exp.evaluation
    model = load_model(run / "last.pt").eval()
    test = _subset(get_dataset(exp.data.dataset, exp.data.test_split), n)
    x_all = torch.stack([test[i][0] for i in range(len(test))])
    k = ev.k[0]

    def one(amp: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
        torch.manual_seed(0); t = time.perf_counter(); lls, elbos = [], []
        for x in x_all.split(ev.batch_size):
            ll, elbo = iw_log_likelihood(model, x, k=k, max_elements=ev.max_elements, compile=True, amp=amp)
            lls.append(ll); elbos.append(elbo)
        return torch.cat(lls).double(), torch.cat(elbos).double(), time.perf_counter() - t

    out = {}
    for amp in (False, True):
        one(amp)                                                          # compiles (and warms up) this precision's code
        ll, elbo, s = one(amp)
        out["bf16" if amp else "fp32"] = (ll, elbo, s)
    (l32, e32, s32), (l16, e16, s16) = out["fp32"], out["bf16"]
    d, de = l16 - l32, e16 - e32                                          # per image: bf16 minus float32 (log-likelihoods)
    return dict(run=run.name, n=len(x_all), k=k, batch_size=ev.batch_size, max_elements=ev.max_elements,
                fp32_s_per_1000=s32 * 1000 / len(x_all), bf16_s_per_1000=s16 * 1000 / len(x_all), speedup=s32 / s16,
                nll_fp32=-l32.mean().item(), nll_bf16=-l16.mean().item(),
                nll_diff=-d.mean().item(), nll_diff_se=(d.std() / len(d) ** 0.5).item(),
                elbo_fp32=e32.mean().item(), elbo_diff=de.mean().item(), elbo_diff_se=(de.std() / len(de) ** 0.5).item())


def recipe_of(run: str) -> str:
    "The recipe a run folder was trained from: its name, less the -bf16 / -fp32 that `lvmkit train NAME --amp / --no-amp` adds."
    for suffix in ("-bf16", "-fp32"):
        if run.endswith(suffix): return run[: -len(suffix)]
    return run


def parse_case(case: str) -> tuple[str, int]:
    "'RUN:N' -> (RUN, N), with an error that names the malformed case."
    name, sep, n = case.rpartition(":")
    if not sep or not name or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"{case!r}: expected RUN:N, a run folder's name and a positive number of test images (e.g. vae-mlp:1000)")
    return name, int(n)

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs", help="the folder that holds the run folders")
    ap.add_argument("--cases", nargs="+", required=True, type=parse_case, help="RUN:N, the run folder's name (its recipe's name, or NAME-bf16 for a run of lvmkit train NAME --amp) and the test images")
    a = ap.parse_args()
    missing = [name for name, _ in a.cases if not (Path(a.runs) / name / "last.pt").is_file()]
    if missing: ap.error(f"no checkpoint {', '.join(str(Path(a.runs) / m / 'last.pt') for m in missing)}: train the run first "
                         f"(lvmkit train NAME --out {a.runs}/NAME) or point --runs at the folder that holds it")
    cases = []
    for name, n in a.cases:
        r = measure(Path(a.runs) / name, n); cases.append(r)
        print(json.dumps(r), flush=True)
    write_record(record(f"python benchmarks/amp_eval.py --runs {a.runs} --cases " + " ".join(f"{name}:{n}" for name, n in a.cases), cases,
                        device="cpu"), "amp-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
