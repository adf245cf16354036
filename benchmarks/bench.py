"""lvmkit's benchmark: for each chapter's headline model, training throughput, importance-weighted evaluation time and peak memory
on the machine it runs on, written as a JSON record (hardware, torch version, commit) and shown on the book's Performance page.

    python benchmarks/bench.py                 # every case, each in a fresh process; writes benchmarks/results/<date>-<commit>.json
    python benchmarks/bench.py --cases vae-mlp lvae-mnist-cpu
    python benchmarks/bench.py --page          # only regenerate book/performance.md from the records

Training: `steps` optimiser steps of the recipe's objective and optimiser on one batch of real data of the recipe's batch size,
after 3 untimed steps (data loading excluded: this is the step itself), eagerly and with torch.compile (TrainConfig(compile=True);
its compilation happens in the untimed steps and is reported). Evaluation: the recipe's K importance samples on `n_eval` test
images with its evaluation batch size and chunking, timed and scaled to 1000 images, eagerly and compiled (Evaluation(compile=True);
the compiled evaluation is run twice, and the difference of the two times is reported as the compile time). Peak memory: the process's
peak resident set size (CPU) or the CUDA allocator's peak. Nothing else should run on the machine while it measures. Not part of CI.
"""
from __future__ import annotations
import argparse, json, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "book" / "performance.md"
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import record, same_speed, summary, write_record  # noqa: E402  (every record's machine, commit and date)
# chapter, recipe, training steps timed, test images evaluated
CASES = [("1", "vae-mlp", 30, 200), ("1", "vae-seed-meanfield", 30, 200), ("2", "iaf-mlp", 30, 200), ("3", "vlae-mlp", 30, 100),
         ("4", "lvae-mnist-cpu", 10, 25), ("5", "biva-mnist-cpu", 10, 25), ("5", "biva-mnist-cpu-deep", 10, 25),
         ("6", "vqvae-cifar10-cpu", 10, 200), ("7", "survae-mnist-slice", 10, 100)]


def measure(name: str, steps: int, n_eval: int) -> dict:
    "One case, in this process: training eager and compiled, evaluation eager and compiled."
    import torch
    import lvmkit.recipes  # noqa: F401  (registers the experiments)
    from lvmkit.core import build_model, default_device, seed_everything
    from lvmkit.experiments import OBJECTIVES, get_dataset, get_experiment, _subset
    from lvmkit.objectives import evaluate
    from lvmkit.training import LossModule, make_optimizer
    exp = get_experiment(name)
    dev = default_device()
    seed_everything(0)
    model = build_model(exp.model, **exp.model_kwargs).to(dev)
    train = get_dataset(exp.data.dataset, "train")
    batch = torch.stack([train[i][0] if isinstance(train[i], (tuple, list)) else train[i] for i in range(exp.train.batch_size)]).to(dev)
    if hasattr(model, "data_init"): model.data_init(batch)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    out = dict(name=name, model=exp.model, params=sum(p.numel() for p in model.parameters()), batch_size=exp.train.batch_size,
               optimizer=exp.train.optimizer, train_steps_timed=steps)
    for mode in ("eager", "compiled"):                                   # the recipe's objective and optimiser, as fit runs them
        module = LossModule(model, OBJECTIVES[exp.loss](**exp.objective))
        if mode == "compiled": module = torch.compile(module)           # TrainConfig(compile=True)
        opt = make_optimizer(list(model.parameters()), exp.train, dev)
        def step(i: int):
            loss, _ = module(batch, i)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        model.train()
        t0 = time.perf_counter()
        for i in range(3): step(i)                                        # untimed (compiled: the compilation)
        sync(); first = time.perf_counter() - t0; t0 = time.perf_counter()
        for i in range(steps): step(i + 3)
        sync()
        out[f"train_{mode}_examples_per_s"] = steps * exp.train.batch_size / (time.perf_counter() - t0)
        out[f"train_{mode}_first3_s"] = first
    k = exp.evaluation.k[0]
    test = _subset(get_dataset(exp.data.dataset, exp.data.test_split), n_eval)
    ev = dict(k=k, batch_size=exp.evaluation.batch_size, device=dev, progress=False, max_elements=exp.evaluation.max_elements)
    for mode in ("eager", "compiled"):
        seed_everything(0)
        r = evaluate(model, test, compile=mode == "compiled", **ev)     # compiled: the first call compiles
        if mode == "compiled":
            first = r["seconds"]; seed_everything(0)
            r = evaluate(model, test, compile=True, **ev)
            out["eval_compile_s"] = first - r["seconds"]
        out[f"eval_{mode}_s_per_1000"] = r["seconds"] * 1000 / n_eval
        out[f"eval_{mode}_nll"] = r["nll"]
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    D = test[0][0].numel() if isinstance(test[0], (tuple, list)) else test[0].numel()
    per_pass = max(1, min(k, exp.evaluation.max_elements // max(1, min(n_eval, exp.evaluation.batch_size) * D)))   # as iw_log_likelihood chunks
    return dict(out, eval_k=k, eval_n=n_eval, eval_batch_size=exp.evaluation.batch_size, eval_max_elements=exp.evaluation.max_elements,
                eval_samples_per_pass=per_pass,
                peak_memory_mb=peak, memory="CUDA allocator peak" if dev.type == "cuda" else "peak RSS of the process")


def _machine(rec: dict, commit: str = "commit") -> str:
    "The line that says where and how a record was measured: machine, threads, torch, commit, date and the command."
    calibration, rates = summary(rec.get("machine")), _rates(rec.get("machine"))
    return (f"**Machine:** {rec['hardware']} ({rec['threads']} torch threads" + (f"; {calibration}" if calibration else "")
            + (f"; matrix products: {rates}" if rates else "") + f"); torch {rec['torch']}; "
            f"{commit} `{rec['commit']}`; {rec['date'][:16]} UTC; command: `{rec['command']}`.")


def _speed_known(r: dict) -> bool | None:
    """Whether the two sides of an amp-train record ran on machines of the same speed: False for different device labels, else what
    their calibrations say (machine.same_speed), None where one side has none (a book record carries only its device label)."""
    if r["fp32_record"]["device"] != r["bf16_device"]: return False
    return same_speed(r["fp32_record"].get("machine"), r.get("machine"))

def _steps(r: dict) -> str:
    "'15,000 steps each.' or '15,000 and 14,000 steps.' for the two sides of an amp-train record."
    return f"{r['steps']['bf16']:,} steps each." if r["steps"]["bf16"] == r["steps"]["fp32"] else f"{r['steps']['fp32']:,} and {r['steps']['bf16']:,} steps."

def _speed_caveat(r: dict) -> str:
    "Why the two sides' speeds are not compared, in parentheses ('' when they are)."
    f, known = r["fp32_record"], _speed_known(r)
    if f["device"] != r["bf16_device"]: return f" (float32 on {f['device']}, bf16 on {r['bf16_device']}: their speeds are not comparable)"
    if known is None: return (" (the same device label, but the float32 record carries no calibration, so whether the machine ran at the "
                              "same speed is unknown: the speed-up is not shown; see 'Same label, different speed')")
    return "" if known else " (the same device label, but their calibrations differ by more than 15%: their speeds are not comparable)"

def _train_note(name: str, r: dict) -> str:
    "The line under the bf16-training table for one amp-train record: provenance, hardware, times, and its note."
    f = r["fp32_record"]
    side = (f"the float32 side is the run `{f['run']}` (commit `{f['commit']}`, {f['date'][:16]}), not the book's record" if f.get("run")
            else f"the float32 record is commit `{f['commit']}` ({f['date'][:16]})")
    text = f"`{name}`: {side}, the bf16 run commit `{r['commit']}`" + _speed_caveat(r)
    if r.get("compiled"): text += ", trained compiled (`--compile`: the loss and the optimizer's update under torch.compile; the float32 record trained eagerly)"
    text += f"; training time {r['train_time_s']['fp32']:.0f} s and {r['train_time_s']['bf16']:.0f} s, " + _steps(r)
    for k, t in sorted(r.get("eval_time_s", {}).items(), key=lambda kv: int(kv[0])):
        if t["fp32"] and t["bf16"]:
            text += (f" Evaluation at K={int(k):,}: {t['fp32']:,.0f} s (float32) and {t['bf16']:,.0f} s"
                     + (" (the bf16 run evaluated under bf16 autocast)." if r.get("eval_amp") else " (float32)."))
    if (ps := r.get("prior_stage")):
        text += (f" With the `{ps['name']}` prior (stage 2) the whole training took {ps['train_time_s']['fp32']:.0f} s and {ps['train_time_s']['bf16']:.0f} s "
                 f"({ps['steps']['fp32']:,} and {ps['steps']['bf16']:,} steps of both stages; its rate counts images, then code grids).")
    for label, st in [("", r)] + ([(f" with the `{r['prior_stage']['name']}` prior", r["prior_stage"])] if r.get("prior_stage") else []):
        for k, b in sorted(st.get("bpd", {}).items(), key=lambda kv: int(kv[0])):
            text += f" In bits/dim{label}: {b['fp32']:.4f} (float32) and {b['bf16']:.4f} (bf16), {b['bf16'] - b['fp32']:+.4f}."
    return text + (f" {r['note']}" if r.get("note") else "")


def _rates(machine: dict | None) -> str:
    "'float32 90 GFLOP/s, bf16 1 GFLOP/s' from a record's measured matrix-product rates ('' without them)."
    m = (machine or {}).get("matmul") or {}
    return ", ".join(f"{'bf16' if d == 'bfloat16' else d} {m[d]['gflop_per_s']:,.0f} GFLOP/s" + (f" (n = {m[d]['n']:,})" if "n" in m[d] else "")
                     for d in ("float32", "bfloat16") if d in m)


def _flops_section(flops: list[Path], records: list[Path]) -> list[str]:
    """What the arithmetic allows: the newest benchmarks/flops.py record's work per recipe, the floor it sets on this machine's measured
    matrix-product rates, and, where a bench record of a machine of the same speed (and the same instruction sets) exists, how far the
    measured compiled evaluation is above that floor."""
    lines = ["## What the arithmetic allows", "",
             "Generated from the newest `benchmarks/results/flops-*.json`, written by `python benchmarks/flops.py`: each recipe's matrix products "
             "and convolutions counted by torch's own counter (`torch.utils.flop_counter.FlopCounterMode`; elementwise work is not counted, so "
             "the counts are lower bounds), per training example (forward and backward) and per image of its importance-weighted evaluation "
             "(per sample, plus what every chunk of samples repeats, such as a hierarchy's bottom-up pass); and the machine's best rate on a "
             "large square matrix product (n in the record's line) in float32 and in bf16, a practical ceiling for the convolutions and products "
             "of a model (a 3x3 convolution of 256 channels reached 95% of it on the AVX2 machine below). The floor is the whole test set's "
             "evaluation work at that rate: an implementation of the same model and estimator gets below it only by running its arithmetic "
             "faster than torch runs its easiest product on that machine. Where bf16 is slower than float32 (a processor without bf16 "
             "instructions) its floor is not shown. The measured column is the newest compiled evaluation of the table above from a machine of the same "
             "speed and instruction sets, where there is one.", ""]
    if not flops: return lines + ["No count has been recorded yet.", ""]
    rec = json.loads(flops[-1].read_text())
    m = rec.get("machine") or {}
    mm = m.get("matmul") or {}
    lines += [_machine(rec), "",
              ":::{div} full-width", "",
              "| recipe | GFLOP per training example | MFLOP per IW sample | MFLOP per chunk, repeated | K | samples per chunk | whole test set at K | "
              "floor, float32 | floor, bf16 | measured, compiled float32 | measured / floor |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    measured: dict[str, tuple[dict, dict]] = {}
    for p in records:                                                                  # oldest first: the newest same-speed one wins
        r = json.loads(p.read_text())
        cal_ok = same_speed(r.get("machine"), m)
        same_flags = ((r.get("machine") or {}).get("cpu") or {}).get("flags") == (m.get("cpu") or {}).get("flags")
        if cal_ok and same_flags:
            for c in r["cases"]:
                if "eval_compiled_s_per_1000" in c: measured[c["name"]] = (c, r)
    for c in rec["cases"]:
        total = c["eval_flop_per_image"] * c["test_n"]
        floor = {d: total / (mm[d]["gflop_per_s"] * 1e9) for d in mm}
        fmt = lambda t: f"{t / 3600:,.1f} h" if t >= 3600 else f"{t / 60:,.1f} min" if t >= 60 else f"{t:,.1f} s"
        got = measured.get(c["name"])
        if got and got[0].get("eval_k") == c["eval_k"] and "float32" in floor:
            t = got[0]["eval_compiled_s_per_1000"] * c["test_n"] / 1000
            seen, ratio = f"{fmt(t)} ({got[1]['commit']})", f"{t / floor['float32']:.1f}x"
        else: seen, ratio = "–", "–"
        slow16 = "bfloat16" in floor and "float32" in floor and floor["bfloat16"] > floor["float32"]
        cells = [fmt(floor["float32"]) if "float32" in floor else "–", "slower than float32" if slow16 else fmt(floor["bfloat16"]) if "bfloat16" in floor else "–"]
        lines.append(f"| `{c['name']}` | {c['train_flop_per_example'] / 1e9:.3f} | {c['eval_flop_per_sample'] / 1e6:,.1f} | "
                     f"{c['eval_flop_per_chunk_fixed'] / 1e6:,.1f} | {c['eval_k']:,} | {c['eval_samples_per_chunk']:,} | "
                     f"{total / 1e12:,.1f} TFLOP ({c['test_n']:,} images) | " + " | ".join(cells)
                     + f" | {seen} | {ratio} |")
    lines += ["", ":::", "", "A measured time far above its floor has room for a faster implementation; one close to it has none, on that "
              "machine, short of less arithmetic (a smaller model, fewer samples) or faster arithmetic (bf16 where the processor has it: "
              "AVX-512 BF16 or AMX on a CPU, `lvmkit eval --amp`, whose effect on the estimate the tables below measure).", ""]
    return lines


def page(records: list[Path], seeds: list[Path] | None = None, amp: list[Path] | None = None, amp_train: list[Path] | None = None,
         checks: list[Path] | None = None, flops: list[Path] | None = None) -> str:
    """The Markdown of book/performance.md from the newest record, the newest side-by-side with the seeds (benchmarks/seeds.py), the
    newest float32-against-bf16 evaluation of trained runs (benchmarks/amp_eval.py) and the newest bf16 training run of each recipe
    against its float32 record (benchmarks/amp_train.py), and the newest float32 run of each recipe evaluated whole under bf16 autocast
    (benchmarks/amp_train.py --fp32 --eval-amp). `checks`: bench records of older commits measured again to tell the machine from the code
    (machine-check-*.json), shown only in the section on device labels. `flops`: benchmarks/flops.py's records, the newest of which
    gives the section on what the arithmetic allows."""
    lines = ["# Performance", "",
             "Generated by `python benchmarks/bench.py` from its records in `benchmarks/results/` (not by hand, and not part of CI's "
             "pass/fail). Each row is the newest measurement of one chapter's recipe measured in its own process on the machine its record names: training examples per "
             "second of the recipe's own optimiser step on one batch of real data (data loading excluded), eagerly and compiled with "
             "`torch.compile` (`TrainConfig(compile=True)`); the recipe's importance-weighted evaluation timed on a few test images and scaled "
             "to 1000, eagerly and compiled (`Evaluation(compile=True)`, the default of the recipes' full-mode evaluations that it speeds up); "
             "and the process's peak memory. The weights are the initial ones: speed and memory do not depend on them. Compile times are "
             "paid once per run and are not in the rates. Rows from different records are only comparable where the records' machines ran at the "
             "same speed (their calibrations, where they have one): the same device label has covered machines 2x apart (see 'Same label, "
             "different speed' below).", ""]
    if not records: lines += ["No benchmark has been recorded yet.", ""]
    else:
        newest: dict[str, tuple[dict, dict, str]] = {}                          # recipe -> its newest measurement (records sort by date)
        for p in records:
            rec = json.loads(p.read_text())
            for c in rec["cases"]: newest[c["name"]] = (c, rec, p.name)
        used = sorted({f for _, _, f in newest.values()})
        ids = {f: f"R{i + 1}" for i, f in enumerate(used)}
        lines += ["Records shown:", ""]
        for f in used:
            rec = json.loads(next(p for p in records if p.name == f).read_text())
            calibration = summary(rec.get("machine"))
            lines.append(f"- **{ids[f]}** `{f}`: {rec['hardware']}" + (f" ({calibration})" if calibration else "")
                         + f"; torch {rec['torch']}; commit `{rec['commit']}`; {rec['date'][:16]} UTC; command: `{rec['command']}`.")
        lines += ["", "Each row is the newest measurement of its recipe (the last column names its record); the compile times, paid once per run, "
                  "are listed under the table.", "",
                  ":::{div} full-width", "",
                  "| ch. | recipe | params | training, eager (ex./s) | compiled | K | samples x images per pass | IW evaluation per 1000 test images, eager | compiled | peak memory | rec. |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
        order = {name: i for i, (_, name, _, _) in enumerate(CASES)}
        compiles = []
        for name in sorted(newest, key=lambda n: order.get(n, 99)):
            c, rec, f = newest[name]
            if "error" in c: lines.append(f"| {c.get('chapter', '')} | `{name}` | failed: {c['error'][:80]} | | | | | | | | {ids[f]} |"); continue
            if "train_eager_examples_per_s" not in c:                                    # a record of the older, eager-only benchmark
                lines.append(f"| {c['chapter']} | `{name}` | {c['params'] / 1e6:.2f}M | {c['train_examples_per_s']:,.0f} | – | "
                             f"{c['eval_k']:,} | – | {c['eval_s_per_1000']:,.0f} s | – | {c['peak_memory_mb'] / 1024:.2f} GB | {ids[f]} |"); continue
            te, tc = c["train_eager_examples_per_s"], c["train_compiled_examples_per_s"]
            ee, ec = c["eval_eager_s_per_1000"], c["eval_compiled_s_per_1000"]
            chunk = f"{c['eval_samples_per_pass']} x {min(c['eval_n'], c['eval_batch_size'])}" if "eval_samples_per_pass" in c else "–"   # the images of the timed batch
            lines.append(f"| {c['chapter']} | `{name}` | {c['params'] / 1e6:.2f}M | {te:,.0f} | {tc:,.0f} ({tc / te:.2f}x) | {c['eval_k']:,} | {chunk} | "
                         f"{ee:,.0f} s | {ec:,.0f} s ({ee / ec:.2f}x) | {c['peak_memory_mb'] / 1024:.2f} GB | {ids[f]} |")
            compiles.append(f"`{name}` {c['train_compiled_first3_s']:.0f} s (training, incl. 3 steps) and {c['eval_compile_s']:.0f} s (evaluation)")
        lines += ["", ":::", "", "Compile times: " + "; ".join(compiles) + ". Evaluation is timed on a few test images per recipe (`eval_n` in the "
                  "record: 200 for the MLP models, 25 for the hierarchies) and scaled to 1000; training batches are the recipes' (128 for the "
                  "MLP models and the VQ-VAE, 64 for the hierarchies). Compile times depend on torch's on-disk compile cache: a first compile on a "
                  "fresh machine takes longer.", ""]
    lines += _flops_section(flops or [], records)
    lines += ["## Evaluation under bf16 autocast", "",
              "Generated from the newest `benchmarks/results/amp-*.json`, written by `python benchmarks/amp_eval.py`: trained runs' last weights "
              "evaluated compiled, with their recipe's K, batch and chunking, in float32 and with `amp=True` (`lvmkit eval --amp`), the same "
              "seed in both, so the noise is the same and the per-image difference is paired. A difference within a few standard errors is "
              "noise; a larger one is bf16's own, and a negative NLL difference is an optimistic bias. The book's records are float32 unless "
              "their protocol says otherwise.", ""]
    if not amp: lines += ["No bf16 evaluation has been recorded yet.", ""]
    else:
        rec = json.loads(amp[-1].read_text())
        lines += [_machine(rec), "",
                  "| run | test images | K | float32, per 1000 images | bf16 | speed-up | NLL, float32 | bf16 − float32 (± s.e.) | ELBO: bf16 − float32 (± s.e.) |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for c in rec["cases"]:
            lines.append(f"| `{c['run']}` | {c['n']:,} | {c['k']:,} | {c['fp32_s_per_1000']:,.0f} s | {c['bf16_s_per_1000']:,.0f} s | {c['speedup']:.2f}x | "
                         f"{c['nll_fp32']:.3f} | {c['nll_diff']:+.3f} ± {c['nll_diff_se']:.3f} | {c['elbo_diff']:+.3f} ± {c['elbo_diff_se']:.3f} |")
        lines.append("")
    lines += ["## Training under bf16 autocast", "",
              "Generated from `benchmarks/results/amp-train-*.json`, written by `python benchmarks/amp_train.py RECIPE`: a full run of the recipe "
              "with `lvmkit train RECIPE --amp` (bf16 autocast in the forward pass; weights, gradients and optimiser state in float32; the "
              "evaluation in float32 unless the notes below the table say it ran under bf16 too: `--eval-amp`), beside the float32 record of the same recipe that the book prints. One training run on each side: "
              "the difference holds run-to-run variation as well as bf16's own effect. The training rates are whole runs' (the recipe's "
              "training loop, eager as the recipe trains unless the note says `--compile`, with its data loading, logging and validation), not the single-step rates of the "
              "side-by-side below.", ""]
    loaded = [json.loads(p.read_text()) for p in (amp_train or [])]
    newest_train = {r["recipe"]: r for r in loaded if r.get("trained", "bf16") == "bf16"}        # the last bf16 run per recipe
    newest_eval = {r["recipe"]: r for r in loaded if r.get("trained") == "float32"}             # the last float32 run evaluated under bf16
    if not newest_train: lines += ["No bf16 training run has been recorded yet.", ""]
    else:
        lines += [":::{div} full-width", "", "| recipe | K | test images | NLL, float32 | bf16 | bf16 − float32 | −ELBO, float32 | bf16 | training (ex./s), float32 | bf16 | speed-up |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for name, r in newest_train.items():
            stages = [(f"`{name}`", r)] + ([(f"`{name}` + `{r['prior_stage']['name']}` prior", r["prior_stage"])] if r.get("prior_stage") else [])
            for label, st in stages:                                                 # a two-stage recipe: stage 1, then the whole model
                e, t = st["elbo"], st["train_examples_per_s"]
                speed = f"{t['bf16'] / t['fp32']:.2f}x" if _speed_known(r) else "–"      # only between machines known to run at one speed; the note says why
                for k, v in sorted(st["nll"].items(), key=lambda kv: int(kv[0])):
                    lines.append(f"| {label} | {int(k):,} | {v['test_n']:,} | {v['fp32']:.2f} | {v['bf16']:.2f} | {v['bf16'] - v['fp32']:+.2f} | "
                                 f"{-e['fp32']:.2f} | {-e['bf16']:.2f} | {t['fp32']:,.0f} | {t['bf16']:,.0f} | {speed} |")
        lines += ["", ":::", ""] + [_train_note(name, r) for name, r in newest_train.items()]
        lines += ["", *[_machine(r) for r in newest_train.values()], ""]
    lines += ["## The whole test set, evaluated under bf16 autocast", "",
              "Generated from `benchmarks/results/amp-train-*-fp32-*.json`, written by `python benchmarks/amp_train.py RECIPE --fp32 --eval-amp`: "
              "the recipe trained again in float32 exactly as its record was (`lvmkit train RECIPE --no-amp`: same seed, steps and machine), "
              "then evaluated on the whole test set under bf16 autocast (`--eval-amp`), compiled with the recipe's chunking; beside the "
              "float32 evaluation of the record that the book prints. The two are separate training runs of the same recipe, so the NLL "
              "difference holds run-to-run variation as well as bf16's own effect; the paired comparison on the same weights is the table "
              "above it. The evaluation time includes the compile.", ""]
    if not newest_eval: lines += ["No such evaluation has been recorded yet.", ""]
    else:
        lines += [":::{div} full-width", "", "| recipe | K | test images | NLL, float32 evaluation | bf16 | bf16 − float32 | −ELBO, float32 | bf16 | "
                  "evaluation time, float32 | bf16 | speed-up |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        notes = []
        for name, r in newest_eval.items():
            e, same = r["elbo"], _speed_known(r)
            for k, v in sorted(r["nll"].items(), key=lambda kv: int(kv[0])):
                t = r["eval_time_s"][k]
                speed = f"{t['fp32'] / t['bf16']:.2f}x" if same else "–"
                lines.append(f"| `{name}` | {int(k):,} | {v['test_n']:,} | {v['fp32']:.2f} | {v['bf16']:.2f} | {v['bf16'] - v['fp32']:+.2f} | "
                             f"{-e['fp32']:.2f} | {-e['bf16']:.2f} | {t['fp32'] / 60:,.1f} min | {t['bf16'] / 60:,.1f} min | {speed} |")
            f = r["fp32_record"]
            note = (f"`{name}`: the float32 record is commit `{f['commit']}` ({f['date'][:16]}), the run evaluated under bf16 commit `{r['commit']}`"
                    + _speed_caveat(r) + f"; training time {r['train_time_s']['fp32']:.0f} s and {r['train_time_s']['bf16']:.0f} s, " + _steps(r))
            notes.append(note + (f" {r['note']}" if r.get("note") else ""))
        lines += ["", ":::", "", *notes, "", *[_machine(r) for r in newest_eval.values()], ""]
    lines += ["## Same label, different speed", "",
              "A device label names a processor, not its speed. Every recipe that `benchmarks/bench.py` measured more than once under one label, "
              "from its records (generated, like the rest of this page), with the lvmkit commit each measured (`+dirty`: with uncommitted "
              "changes). Rates of one commit that differ between dates were measured on different machines behind the same label; "
              "`machine-check-*` records are older commits measured again for exactly that comparison (their notes say how). Speeds from "
              "different records are therefore compared on this page only where both records carry a calibration (`benchmarks/machine.py`: "
              "one fixed float32 training step, timed with each record) and the two agree within 15%.", ""]
    by_label: dict[tuple[str, str], list[tuple[dict, dict, str]]] = {}
    for p in sorted([*records, *(checks or [])], key=lambda p: json.loads(p.read_text())["date"]):
        rec = json.loads(p.read_text())
        for c in rec["cases"]:
            if "train_eager_examples_per_s" in c: by_label.setdefault((c["name"], rec["hardware"]), []).append((c, rec, p.name))
    repeated = {key: v for key, v in by_label.items() if len(v) > 1}
    if not repeated: lines += ["No recipe has been measured twice under one label yet.", ""]
    else:
        for label in dict.fromkeys(label for _, label in repeated):
            lines += [f"Under the label **{label}**:", "", ":::{div} full-width", "",
                      "| recipe | measured (UTC) | commit | training, eager (ex./s) | IW evaluation per 1000, compiled | calibration | record |",
                      "|---|---|---|--:|--:|--:|---|"]
            for (name, lab), v in repeated.items():
                if lab != label: continue
                for c, rec, f in v:
                    cal = (rec.get("machine") or {}).get("calibration")
                    lines.append(f"| `{name}` | {rec['date'][:16].replace('T', ' ')} | `{rec['commit']}` | {c['train_eager_examples_per_s']:,.0f} | "
                                 f"{c['eval_compiled_s_per_1000']:,.0f} s | " + (f"{cal['ms']:.0f} ms" if cal else "–") + f" | `{f}` |")
                fast, slow = (max(c["train_eager_examples_per_s"] for c, _, _ in v), min(c["train_eager_examples_per_s"] for c, _, _ in v))
                ev = [c["eval_compiled_s_per_1000"] for c, _, _ in v]
                lines.append(f"| | | fastest / slowest | {fast / slow:.2f}x | {max(ev) / min(ev):.2f}x | | |")
            lines += ["", ":::", ""]
        lines.append("")
        notes = [(f, rec["note"]) for f, rec in {f: rec for v in repeated.values() for _, rec, f in v}.items() if rec.get("note")]
        lines += [*[f"- `{f}`: {note}" for f, note in notes], ""] if notes else []
    lines += ["## Side by side with the seeds' own code", "",
              "Generated from `benchmarks/results/seeds-*.json` (each case's newest measurement), written by `python benchmarks/seeds.py` (see its docstring for how to "
              "check out the seed, which lvmkit does not ship). The seed's model is built from its own repository and trained with its own loss; "
              "lvmkit's recipe of the same configuration is trained eagerly and compiled (`lvmkit train NAME --compile`: the loss module and, in records "
              "from commit `1e5e1f7` on, the optimizer's step as well), in float32 and under bf16 autocast (`lvmkit train NAME --amp`; "
              "the seeds train in float32). Same machine, batch, optimiser and thread count, one "
              "fixed batch of real data, each side in a fresh process. A masked convolution's weights that its mask sets to zero are parameters that "
              "never change: where a side has them, the parameter count gives the unmasked count beside it. A record made with `--repeats N` measures every side N times in rounds "
              "(each round runs every side once, so that a slow spell of the machine slows all sides alike) and shows the median rate with the "
              "range; the ratio is between medians. One measurement of a side can be 20-30% off on a shared 2-core machine. Records from "
              "2026-12-07 on also give each side's work per step, counted as `benchmarks/flops.py` counts it (matrix products and convolutions, "
              "forward and backward; the compiled and bf16 sides do the eager side's work), and the rate it ran at: beside the machine's "
              "matrix-product rate (in the record's line) it shows how much of the machine each side uses, and so how much faster any code of "
              "the same work could be.", ""]
    if not seeds: lines += ["No side-by-side has been recorded yet.", ""]
    else:
        by_case: dict[str, list[tuple[dict, dict, str]]] = {}                # case -> its measurements, oldest first
        for rec, f in sorted(((json.loads(f.read_text()), f.name) for f in seeds), key=lambda rf: rf[0]["date"]):
            for c in rec["cases"]: by_case.setdefault(c["case"], []).append((c, rec, f))
        shown: list[tuple[dict, dict, str]] = []                              # per case: the newest, then the newest on each other kind of processor
        for measured in by_case.values():
            kinds: set = set()
            for c, rec, f in reversed(measured):
                flags = ((rec.get("machine") or {}).get("cpu") or {}).get("flags")
                kind = tuple(flags) if flags is not None else None
                if not kinds or (kind is not None and kind not in kinds): shown.append((c, rec, f)); kinds.add(kind)
        used = list(dict.fromkeys(f for _, _, f in shown))
        ids = {f: f"S{i + 1}" for i, f in enumerate(used)}
        lines += ["Each case below is its newest measurement, followed by the newest on each other kind of processor (other instruction "
                  "sets, named in the record's line: the bf16 sides need AVX-512 BF16 or AMX) where there is one; the records they come from:", ""]
        for f in used:
            rec = next(r for _, r, g in shown if g == f)
            lines.append(f"- **{ids[f]}** `{f}`: " + _machine(rec, "lvmkit commit") + (f" {rec['note']}" if rec.get("note") else ""))
        lines.append("")
        for c, rec, f in shown:
            c = dict(c, what=f"{c['what']} (record {ids[f]})")
            base = next((s["examples_per_s"] for s in c["sides"] if s.get("side") == "seed" and "error" not in s), None)
            work = next((s["gflop_per_step"] for s in c["sides"] if s.get("side") == "lvmkit" and "gflop_per_step" in s), None)   # eager: the others do the same work
            counted = any("gflop_per_step" in s for s in c["sides"])
            lines += [f"**{c['what']}**", ""] + (["| code | parameters | training (examples/s) | ms per step | GFLOP per step | GFLOP/s | vs the seed |",
                                                   "|---|--:|--:|--:|--:|--:|--:|"] if counted else
                                                  ["| code | parameters | training (examples/s) | ms per step | vs the seed |", "|---|--:|--:|--:|--:|"])
            for s in c["sides"]:
                code = c["seed"] if s["side"] == "seed" else (f"lvmkit `{c['recipe']}`" + (", compiled" if "compiled" in s["side"] else ", eager")
                                                               + (", bf16 autocast" if "bf16" in s["side"] else "")
                                                               + (", channels-last" if "channels-last" in s["side"] else ""))
                if "error" in s: lines.append(f"| {code} | failed: {s['error'][:80]} |" + " |" * (5 if counted else 3)); continue
                ratio = f"{s['examples_per_s'] / base:.2f}x" if base else "–"
                extra = f" (compile {s['warmup_s']:.0f} s, not counted)" if "compiled" in s["side"] else ""
                d = 1 if min(s.get("examples_per_s_runs") or [100]) < 100 else 0                    # 5.5–5.8, not 6–6
                spread = (f" (median of {len(s['examples_per_s_runs'])}: {min(s['examples_per_s_runs']):,.{d}f}–{max(s['examples_per_s_runs']):,.{d}f})"
                          if len(s.get("examples_per_s_runs", [])) > 1 else "")
                g = s.get("gflop_per_step", None if s["side"] == "seed" else work)
                flop = (f" {g:,.1f} | {g / (s['ms_per_step'] / 1000):,.0f} |" if g and g >= 10 else f" {g:.3g} | {g / (s['ms_per_step'] / 1000):,.0f} |" if g
                        else " – | – |") if counted else ""                                    # three digits for the small models' work
                params = f"{s['params'] / 1e6:.2f}M" + (f" ({s['params_unmasked'] / 1e6:.2f}M unmasked)" if "params_unmasked" in s else "")
                lines.append(f"| {code} | {params} | {s['examples_per_s']:,.1f}{spread}{extra} | {s['ms_per_step']:,.{1 if s['ms_per_step'] < 100 else 0}f} |{flop} {ratio} |")
            lines.append("")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="*", help="recipe names (default: every case)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--page", action="store_true", help="only regenerate the Performance page")
    a = ap.parse_args()
    if a.case:
        _, name, steps, n = next(c for c in CASES if c[1] == a.case)
        print(json.dumps(measure(name, steps, n))); return 0
    if not a.page:
        cases = []
        for chapter, name, steps, n in CASES:
            if a.cases and name not in a.cases: continue
            r = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, cwd=ROOT)
            out = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"name": name, "error": r.stderr.strip().splitlines()[-1]}
            out["chapter"] = chapter; cases.append(out)
            print(json.dumps(out), flush=True)
        write_record(record("python benchmarks/bench.py " + (" ".join(["--cases", *a.cases]) if a.cases else ""), cases), "")
    PAGE.write_text(page(sorted(p for p in RESULTS.glob("*.json") if not p.name.startswith(("seeds-", "amp-", "machine-check-", "flops-"))),
                         sorted(RESULTS.glob("seeds-*.json")), sorted(p for p in RESULTS.glob("amp-*.json") if not p.name.startswith("amp-train-")),
                         sorted(RESULTS.glob("amp-train-*.json"), key=lambda p: json.loads(p.read_text())["date"]),
                         sorted(RESULTS.glob("machine-check-*.json")), sorted(RESULTS.glob("flops-*.json"), key=lambda p: json.loads(p.read_text())["date"])))
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
