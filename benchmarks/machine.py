"""What a benchmark record says about its machine beyond the device label: the processor as /proc/cpuinfo names it, and a calibration,
the time of one fixed float32 workload, so that speeds from two records are compared only where the machines ran at the same speed.

    python benchmarks/machine.py          # prints this machine's description and calibration as JSON

A device label such as "CPU: AMD EPYC, 2 threads" names a processor, not a speed: on the virtual machines these benchmarks run on,
records under that one label measured the same code 1.7-2.7x apart (the Performance page's "Same label, different speed" section).
The calibration is a small convolutional network's float32 training step (forward and backward, batch 64, 64 channels at 14x14,
about the Ladder VAE's size), at the torch thread count the record uses: the fastest of 20 repeats after a warm-up, a few seconds in
all. The fastest, not the median, because these machines' speed also wanders from minute to minute (medians of one session ranged
over 85-126 ms, the fastest over 75-91 ms). It times the CPU only: a GPU record's calibration says nothing about its GPU. Two calibrations within 15% are "the same speed"; anything else, or a record without one,
is not compared.
"""
from __future__ import annotations
import json, math, statistics, time
from pathlib import Path

TOLERANCE = 0.15           # calibrations within 15% of each other: the same speed
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")   # the instruction sets torch's CPU kernels choose between


def cpu_identity(cpuinfo: str | None = None) -> dict:
    "The first processor's vendor, family, model, stepping, clock, cache and bf16-relevant instruction sets, from /proc/cpuinfo (empty elsewhere)."
    if cpuinfo is None:
        try: cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError: return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():                # the first processor's block
        if ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            fields[key] = value
    out = {k: fields[src] for k, src in [("model_name", "model name"), ("vendor", "vendor_id"), ("family", "cpu family"), ("model", "model"),
                                          ("stepping", "stepping"), ("mhz", "cpu MHz"), ("cache", "cache size")] if src in fields}
    if "flags" in fields: out["flags"] = [f for f in FLAGS if f in fields["flags"].split()]
    return out


def calibrate(repeats: int = 20, warmup: int = 3) -> dict:
    "Milliseconds of one fixed float32 training step of a small convolutional network (the fastest of `repeats`: the machine undisturbed), at torch's thread count."
    import torch
    from torch import nn
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(64, 64, 3, padding=1), nn.ELU())])
    with torch.no_grad():
        for p in net.parameters(): p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    x = torch.randn(64, 64, 14, 14, generator=gen)
    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        net(x).square().mean().backward()
        if i >= warmup: times.append((time.perf_counter() - t) * 1000)
    return dict(ms=min(times), median_ms=statistics.median(times), threads=torch.get_num_threads(),
                workload="4 x (conv 3x3 64->64 + ELU), batch 64 at 14x14, float32 forward + backward")


def matmul_rate(dtype: str = "float32", n: int = 2048, repeats: int = 5, warmup: int = 1, budget_s: float = 10.0) -> dict:
    """The best rate, in GFLOP/s, of an n x n by n x n matrix product in `dtype` ("float32" or "bfloat16") on the CPU at torch's thread
    count (2 n^3 operations each; the fastest of `repeats` after `warmup`, fewer once `budget_s` is spent: bf16 without bf16 instructions
    takes minutes): what torch's kernels reach on the easiest work there is, a practical ceiling for a model's convolutions and products
    (measured here: a 3x3 convolution of 256 channels reached 95% of it), not the processor's theoretical peak."""
    import torch
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(256, 256, generator=gen).to(getattr(torch, dtype))
    t = time.perf_counter(); small @ small; probe = 2 * 256**3 / max(time.perf_counter() - t, 1e-9)     # a first guess of the rate
    while n > 256 and 2 * n**3 / probe * (warmup + repeats) > budget_s: n //= 2          # a size whose products fit the budget
    a, b = (torch.randn(n, n, generator=gen).to(getattr(torch, dtype)) for _ in range(2))
    best, start, timed = math.inf, time.perf_counter(), 0
    for i in range(warmup + repeats):
        t = time.perf_counter()
        a @ b
        if i >= warmup: best, timed = min(best, time.perf_counter() - t), timed + 1
        if time.perf_counter() - start > budget_s and (timed or i + 1 >= warmup): break
    if not timed: best = time.perf_counter() - t                           # the budget ran out in the warm-up: its last product
    return dict(gflop_per_s=2 * n**3 / best / 1e9, dtype=dtype, n=n, threads=torch.get_num_threads(), timed=max(timed, 1))


def describe(rates: bool = False) -> dict:
    """This machine for a benchmark record: {'cpu': cpu_identity(), 'calibration': calibrate()}, and with `rates=True` its matrix-product
    rates too ('matmul': {'float32': matmul_rate('float32'), 'bfloat16': matmul_rate('bfloat16')}, a few seconds more)."""
    out = dict(cpu=cpu_identity(), calibration=calibrate())
    if rates: out["matmul"] = {d: matmul_rate(d) for d in ("float32", "bfloat16")}
    return out


def record(command: str, cases: list | None = None, device: str | None = None, rates: bool = False, **fields) -> dict:
    """A benchmark record: the date, where it ran (lvmkit's device label, torch, Python, threads, `describe(rates)`), lvmkit's commit,
    the command that made it and its cases (where it has some), with `fields` (a recipe, a note, ...). `device`: the label's device
    (default: the best one)."""
    import platform, sys
    from datetime import datetime, timezone
    import torch
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from lvmkit.core import default_device, describe_hardware, git_commit
    return dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), hardware=describe_hardware(device or default_device()),
                torch=torch.__version__, python=platform.python_version(), commit=git_commit(root), threads=torch.get_num_threads(),
                command=command, **({} if cases is None else {"cases": cases}), machine=describe(rates=rates), **fields)


def write_record(rec: dict, prefix: str, out: Path | None = None) -> Path:
    "Write `rec` as benchmarks/results/<prefix><date>-<commit>.json (or `out`) and say so; returns the path."
    out = out or Path(__file__).resolve().parent / "results" / f"{prefix}{rec['date'][:10]}-{rec['commit']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n"); print(f"wrote {out}")
    return out


def same_speed(a: dict | None, b: dict | None) -> bool | None:
    """Whether two records' machines ran at the same speed: True or False from their calibrations (same thread count, within TOLERANCE,
    and the same instruction sets where both records list them),
    None when either record has none (older records), so the caller can say that it cannot tell."""
    ca, cb = ((m or {}).get("calibration") for m in (a, b))
    if not ca or not cb: return None
    fa, fb = (((m or {}).get("cpu") or {}).get("flags") for m in (a, b))
    if fa is not None and fb is not None and fa != fb: return False     # other kernels (bf16 above all): the float32 calibration cannot tell
    if ca.get("threads") != cb.get("threads"): return False
    return abs(math.log(ca["ms"] / cb["ms"])) <= math.log(1 + TOLERANCE)


def summary(machine: dict | None) -> str:
    "A few words for the Performance page: the calibration (and the processor's family/model/clock where known), or '' without one."
    if not machine or not machine.get("calibration"): return ""
    c, cpu = machine["calibration"], machine.get("cpu", {})
    ident = ", ".join(f"{k} {cpu[k]}" for k in ("family", "model", "stepping") if k in cpu)
    if "mhz" in cpu: ident += f", {float(cpu['mhz']):,.0f} MHz"
    if "flags" in cpu: ident += "; " + (", ".join(cpu["flags"]) or "none of " + ", ".join(FLAGS))     # which kernels torch can choose
    return f"CPU calibration {c['ms']:.0f} ms per fixed step at {c['threads']} threads (lower is faster)" + (f"; {ident}" if ident else "")


if __name__ == "__main__":
    print(json.dumps(describe(rates=True), indent=1))
