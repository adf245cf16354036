"The library's floors: nothing low imports anything high, models import neither the loop nor the recipes, and every registered model keeps the protocol."
import ast, importlib, pkgutil, subprocess, sys
from pathlib import Path
import pytest
import torch
import lvmkit
from lvmkit.core import MODELS, build_model, import_models
from lvmkit.testing import check_model

LIB = Path(lvmkit.__file__).parent

# the floors, bottom to top; a module may import only from floors strictly below its own (models may also use earlier models)
FLOORS = {
    "core": 0,
    "data": 1, "blocks": 1,
    "distributions": 2, "protocol": 3,
    "flows": 4,
    "objectives": 5,
    "testing": 6,
    "models": 7,
    "checkpoint": 8,
    "results": 9, "training": 9,
    "pretrained": 10,
    "experiments": 11,
    "recipes": 12, "assign": 12,
    "cli": 13,
}
UPPER = {"lvmkit.checkpoint", "lvmkit.training", "lvmkit.results", "lvmkit.experiments", "lvmkit.recipes", "lvmkit.cli"}


def floor_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else module
    assert top in FLOORS, f"lvmkit.{top} has no floor: add it to FLOORS in tests/test_layers.py (and to the toolkit page)"
    return FLOORS[top]


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (LIB / rel).with_suffix(".py").exists() or (LIB / rel).is_dir()


def lvmkit_imports(path: Path) -> set[str]:
    "The lvmkit modules a source file imports (relative or absolute), as dotted names."
    mod = "lvmkit." + ".".join(path.relative_to(LIB).with_suffix("").parts)
    pkg = mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else: name = node.module or ""
            if name == "lvmkit" or (node.module is None and name.startswith("lvmkit")):   # from . import x: keep the names that are modules
                out |= {f"{name}.{a.name}" for a in node.names if _is_module(f"{name}.{a.name}")}
            elif name.startswith("lvmkit"): out.add(name)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lvmkit")}
    return out


SOURCES = sorted(p for p in LIB.rglob("*.py") if p.name not in ("__init__.py", "_modidx.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(LIB)) for p in SOURCES])
def test_nothing_low_imports_anything_high(path):
    mod = "lvmkit." + ".".join(path.relative_to(LIB).with_suffix("").parts)
    me = floor_of(mod)
    for dep in lvmkit_imports(path):
        if dep.startswith("lvmkit.models.") and mod.startswith("lvmkit.models."): continue
        assert floor_of(dep) < me, f"{mod} (floor {me}) imports {dep} (floor {floor_of(dep)}): a lower floor must not import a higher one"


def test_layer_test_sees_relative_imports():
    deps = lvmkit_imports(LIB / "models" / "iaf.py")
    assert "lvmkit.flows" in deps and "lvmkit.models.vae" in deps and "lvmkit.core" in deps


MODEL_MODULES = [m.name for m in pkgutil.iter_modules(importlib.import_module("lvmkit.models").__path__, "lvmkit.models.")]


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_a_model_module_imports_neither_the_loop_nor_the_recipes(module):
    "In a fresh interpreter: importing a model module loads no training loop, experiments, recipes, CLI or torchvision."
    code = (f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith(('lvmkit', 'torchvision')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = sorted(m for m in out if m in UPPER or m.startswith("torchvision"))
    assert not heavy, f"import {module} also imports {heavy}"


def _binary(*shape): return (torch.rand(*shape) < 0.3).float()
def _pixels(*shape): return torch.randint(0, 256, shape)
def _codes(*shape): return torch.randint(0, 8, shape)

# one small configuration and a batch of valid input for every registered model; a new model must be added here
CONTRACT = {
    "mlp_vae": (dict(z_dim=4, hidden=(16,)), lambda: _binary(6, 1, 28, 28)),
    "gaussian_vae": (dict(), lambda: torch.randn(6, 2)),
    "iaf_vae": (dict(z_dim=4, hidden=(16,), steps=2), lambda: _binary(6, 1, 28, 28)),
    "mlp_vlae": (dict(z_dim=4, hidden=(16,), flow_hidden=(8,)), lambda: _binary(6, 1, 28, 28)),
    "conv_vae": (dict(x_shape=(3, 16, 16), z_dim=4, n_mix=2), lambda: _pixels(6, 3, 16, 16)),
    "pixelcnn_vae": (dict(z_dim=4, hidden=(16,), channels=8, layers=1), lambda: _binary(6, 1, 28, 28)),
    "lvae": (dict(z_channels=(2, 2), downsample=(1, 0), channels=8, blocks=1), lambda: _binary(6, 1, 28, 28)),
    "biva": (dict(z_channels=(2, 2, 2), downsample=(1, 0, 1), channels=8, blocks=1), lambda: _binary(6, 1, 28, 28)),
    "vqvae": (dict(x_shape=(3, 16, 16), channels=16, dim=8, n_codes=16, n_mix=2), lambda: _pixels(6, 3, 16, 16)),
    "pixelcnn_prior": (dict(n_codes=8, grid=(4, 4), embed=8, channels=8, blocks=1, hidden=16), lambda: _codes(6, 4, 4)),
    "gated_pixelcnn_prior": (dict(n_codes=8, grid=(4, 4), embed=8, channels=8, layers=2, hidden=16), lambda: _codes(6, 4, 4)),
    "survae_image_flow": (dict(x_shape=(1, 8, 8), steps=1, hidden=8, pool="maxpool"), lambda: _pixels(6, 1, 8, 8)),
}
# the loss that trains every parameter, where it is not -log_prob (the VQ codebook learns from its own loss)
TRAINING_LOSS = {"vqvae": lambda m, x: m.vq_loss(x)[0]}


def test_every_registered_model_has_a_contract_case():
    import_models()
    public = {n for n in MODELS if not n.startswith("_")}
    assert public == set(CONTRACT), f"registered but unchecked: {sorted(public - set(CONTRACT))}; stale: {sorted(set(CONTRACT) - public)}"


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_every_registered_model_keeps_the_protocol(name):
    kwargs, make_x = CONTRACT[name]
    model = build_model(name, **kwargs)
    check_model(model, make_x(), k=8, n_mc=32, loss_fn=TRAINING_LOSS.get(name))


@pytest.mark.parametrize("name", sorted(set(CONTRACT) - {"gaussian_vae", "pixelcnn_prior", "gated_pixelcnn_prior"}))
def test_wrong_dtypes_and_empty_batches_get_one_clear_error(name):
    "Issue 14: uint8, float64, int and bool images and empty batches reached the user as torch internals (dtype mismatches, reshape errors)."
    kwargs, make_x = CONTRACT[name]
    model = build_model(name, **kwargs).eval()
    x = make_x()
    wrong = [torch.float64, torch.bool] + ([torch.uint8, torch.int64] if x.is_floating_point() else [torch.float32])
    for dt in wrong:
        with pytest.raises(TypeError, match="dtype"): model.log_prob(x.to(dt))
    with pytest.raises(ValueError, match="empty batch"): model.log_prob(x[:0])
