"""Training under bf16 autocast, checked where it counts: a full run of a recipe with `lvmkit train NAME --amp`, against the float32
record of the same recipe that the book prints (book/results/NAME*.json).

    python benchmarks/amp_train.py vae-seed-meanfield           # trains runs/vae-seed-meanfield-bf16 (resumes it if stopped)
    python benchmarks/amp_train.py lvae-mnist-cpu --iw 100 --eval-amp   # evaluated at K=100 only, under bf16 autocast
    python benchmarks/amp_train.py lvae-mnist-cpu --fp32 --iw 1000 --eval-amp   # trained in float32 as the record was, only the evaluation under bf16
    python benchmarks/amp_train.py iaf-seed --compile           # bf16 and compiled (lvmkit train --amp --compile): the seeds' fastest side
    python benchmarks/amp_train.py vqvae-cifar10-cpu            # both stages under bf16 (the VQ-VAE, then its PixelCNN prior); both compared
    python benchmarks/machine.py > runs/fp32-machine.json && lvmkit train vqvae-cifar10-cpu --no-amp --out runs/vqvae-cifar10-cpu-fp32 \
        --results-dir runs/vqvae-cifar10-cpu-fp32/records && python benchmarks/amp_train.py vqvae-cifar10-cpu \
        --results runs/vqvae-cifar10-cpu-fp32/records --reference vqvae-cifar10-cpu-fp32 --reference-machine runs/fp32-machine.json
                                                                # against a float32 run of this commit on this machine, not the book's record
    python benchmarks/bench.py --page                           # shows the newest record on the book's Performance page

The bf16 run is the recipe unchanged but for TrainConfig(amp=True): same seed, steps, batch, optimiser and evaluation (float32, the
recipe's K and test images), unless `--iw` (other K: `lvmkit train --iw`) or `--eval-amp` (the evaluation under bf16 autocast too:
`lvmkit train --eval-amp`) say otherwise; the record says which. It writes its records to its run folder, never to book/results. The record here puts each of its numbers
beside the float32 record's: NLL at each K (and bits/dim where the records have it), test ELBO, training examples/s and training time;
for a two-stage recipe the whole model's record (RECIPE-STAGE: the first stage with its fitted prior) is compared the same way. The two are single training runs each,
so their difference holds run-to-run variation as well as bf16's own effect; a difference of a few tenths of a nat says "the same within
what one run can tell". With `--fp32` the run is trained in float32 like the record (`lvmkit train NAME --no-amp`, folder NAME-fp32)
and only its evaluation runs under bf16 (`--eval-amp` is required): the record then measures what bf16 evaluation alone does to the
number and to the evaluation time of the whole test set. `--compile` trains it compiled (`lvmkit train --compile`: the loss and the optimizer's
update under torch.compile, the same run up to rounding), as the compiled sides of benchmarks/seeds.py time it. The float32 record must come from this machine, or the speed column means nothing:
the Performance page shows a speed-up only where both sides carry a calibration that agrees (benchmarks/machine.py), and a book record
carries only its device label, so it prints the two rates and says why it does not divide them.
Nothing else should run on the machine while it trains. Not part of CI.
"""
from __future__ import annotations
import argparse, json, sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import record, write_record  # noqa: E402  (every record's machine, commit and date)


def records(folder: Path, name: str) -> dict[int, dict]:
    "{k: record} of the run `name` in `folder` (NAME.json and NAME-iwK.json), each read and checked by lvmkit.results.load_result."
    sys.path.insert(0, str(ROOT))
    from lvmkit.results import load_result
    out = {}
    for p in [folder / f"{name}.json", *sorted(folder.glob(f"{name}-iw*.json"))]:
        if p.is_file():
            r = asdict(load_result(p)); out[r["k"]] = r
    return out


def compare(fp32: dict[int, dict], bf16: dict[int, dict]) -> dict:
    "The bf16 run's numbers beside the float32 run's, per K present in both."
    ks = sorted(set(fp32) & set(bf16))
    if not ks: raise ValueError(f"no K in common: float32 {sorted(fp32)}, bf16 {sorted(bf16)}")
    f, b = fp32[ks[0]], bf16[ks[0]]
    return dict(nll={k: dict(fp32=fp32[k]["value"], bf16=bf16[k]["value"], test_n=bf16[k]["test_n"]) for k in ks},
                elbo=dict(fp32=f["test_elbo"], bf16=b["test_elbo"]), steps=dict(fp32=f["steps"], bf16=b["steps"]),
                train_examples_per_s=dict(fp32=f["train_examples_per_s"], bf16=b["train_examples_per_s"]),
                train_time_s=dict(fp32=f["wall_time_s"], bf16=b["wall_time_s"]),
                eval_time_s={k: dict(fp32=fp32[k]["eval_time_s"], bf16=bf16[k]["eval_time_s"]) for k in ks},
                eval_amp="evaluated under bf16 autocast" in b["protocol"],
                fp32_record=dict(commit=f["commit"], device=f["device"], date=f["date"]), bf16_device=b["device"],
                **({"bpd": {k: dict(fp32=fp32[k]["bpd"], bf16=bf16[k]["bpd"]) for k in ks}}
                   if all(fp32[k].get("bpd") is not None and bf16[k].get("bpd") is not None for k in ks) else {}))


def compare_prior_stage(results: Path, run_records: Path, recipe: str, tag: str, stage: str, reference: str | None = None) -> dict | None:
    """The second stage of a two-stage recipe (the VQ-VAE's PixelCNN prior), compared as the first: the whole model's records
    REFERENCE-STAGE (float32, in `results`; REFERENCE: the recipe's name, or a float32 run's) and RECIPE-TAG-STAGE (this run).
    None, with a warning, if there is no float32 record of it."""
    ref = f"{reference or recipe}-{stage}"
    fp32 = records(results, ref)
    if not fp32: print(f"warning: no float32 record {results / (ref + '.json')}: the prior stage is not compared"); return None
    run = records(run_records, f"{recipe}-{tag}-{stage}")
    if not run: raise ValueError(f"{run_records}: no record {recipe}-{tag}-{stage}.json of the prior stage, though the run finished")
    return dict(name=stage, **compare(fp32, run))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="a registered experiment with a float32 record in --results")
    ap.add_argument("--runs", default="runs", help="the folder for the bf16 run (runs/RECIPE-bf16)")
    ap.add_argument("--results", default=str(ROOT / "book" / "results"), help="where the float32 records are")
    ap.add_argument("--max-time", type=float, help="stop after this many seconds (the run is saved); rerun to resume")
    ap.add_argument("--iw", type=int, nargs="+", metavar="K", help="evaluate the bf16 run at these K instead of the recipe's (lvmkit train --iw)")
    ap.add_argument("--note", help="a sentence the Performance page shows beside the record (e.g. what else ran on the machine)")
    ap.add_argument("--eval-amp", action="store_true", help="evaluate the bf16 run under bf16 autocast too (lvmkit train --eval-amp)")
    ap.add_argument("--fp32", action="store_true", help="train in float32 as the record was (lvmkit train --no-amp; run folder RECIPE-fp32): "
                                                        "only the evaluation runs under bf16, so --eval-amp is required")
    ap.add_argument("--compile", action="store_true", help="train compiled (lvmkit train --compile): the loss module and the optimizer's step under torch.compile")
    ap.add_argument("--reference", metavar="NAME", help="compare with the float32 records NAME*.json in --results instead of the recipe's: a float32 run "
                                                        "trained on this machine (lvmkit train RECIPE --no-amp --results-dir DIR: NAME is RECIPE-fp32)")
    ap.add_argument("--reference-machine", metavar="FILE", help="with --reference: benchmarks/machine.py's JSON measured when that run trained, "
                                                                "so the page can compare the two training speeds")
    a = ap.parse_args()
    if a.fp32 and not a.eval_amp: ap.error("--fp32 without --eval-amp would repeat the float32 record: add --eval-amp")
    if a.reference_machine and not a.reference: ap.error("--reference-machine describes the --reference run: give --reference too")
    ref = a.reference or a.recipe                       # the float32 side's record name: the book's, or a float32 run's
    fp32 = records(Path(a.results), ref)
    if not fp32: ap.error(f"no float32 record {Path(a.results) / (ref + '.json')}: run the recipe's chapter (or lvmkit train {a.recipe}) first")
    sys.path.insert(0, str(ROOT))
    from lvmkit.cli import main as lvmkit
    tag = "fp32" if a.fp32 else "bf16"                  # how the run trains: its name (lvmkit train --no-amp / --amp) and folder
    run = Path(a.runs) / f"{a.recipe}-{tag}"
    argv = ["train", a.recipe, "--no-amp" if a.fp32 else "--amp", "--out", str(run), "--results-dir", str(run / "records"), "--no-progress"]
    if a.max_time: argv += ["--max-time", str(a.max_time)]
    if a.iw: argv += ["--iw", *map(str, a.iw)]
    if a.eval_amp: argv += ["--eval-amp"]
    if a.compile: argv += ["--compile"]
    if lvmkit(argv) != 0: return 1
    bf16 = records(run / "records", f"{a.recipe}-{tag}")
    if not bf16: print(f"{run}: not finished; rerun the same command to resume"); return 0
    c = compare(fp32, bf16)
    if a.reference:
        c["fp32_record"]["run"] = ref                      # not the book's record: a float32 run of this recipe, named here
        if a.reference_machine: c["fp32_record"]["machine"] = json.loads(Path(a.reference_machine).read_text())
    from lvmkit.experiments import get_experiment
    stage = get_experiment(a.recipe).prior                 # a two-stage recipe: its prior stage is compared too
    if stage is not None and (p := compare_prior_stage(Path(a.results), run / "records", a.recipe, tag, stage.name, ref)) is not None:
        c["prior_stage"] = p
    if c["fp32_record"]["device"] != c["bf16_device"]:
        print(f"warning: the float32 record was measured on {c['fp32_record']['device']}, this run on {c['bf16_device']}: speeds are not comparable")
    command = (f"python benchmarks/amp_train.py {a.recipe}" + (" --fp32" if a.fp32 else "") + (" --compile" if a.compile else "") + (f" --iw {' '.join(map(str, a.iw))}" if a.iw else "")
               + (" --eval-amp" if a.eval_amp else "") + (f" --results {a.results} --reference {ref}" if a.reference else "")
               + (f" --reference-machine {a.reference_machine}" if a.reference_machine else ""))
    rec = record(command, device="cpu", recipe=a.recipe, trained="float32" if a.fp32 else "bf16", compiled=a.compile, **c, **({"note": a.note} if a.note else {}))
    write_record(rec, f"amp-train-{a.recipe}{'-fp32' if a.fp32 else ''}-")
    print(json.dumps(c, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
