"""The one table of models: `kind -> class`. A run folder records a model's spec (`spec_of`) and
`ig.load` rebuilds it (`build`) through this table alone; `ig.register_model` adds a user's class.

Adding a model to innergrad: its file in `models/` (a class with `spec()`, and `export_program()` if it
exports; see `protocol.py`), one row below, its tests, one line of docs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ModelSpecError
from ..core.mlp import MLP
from .conservative import ConservativeField
from .dissipative import DissipativeHNN
from .gradrnn import GradRNN
from .hamiltonian import HamiltonianNet
from .lagrangian import LagrangianNet

#: kind -> class. A spec is `{"kind": kind, **class's constructor arguments}`.
MODELS: dict[str, type[nn.Module]] = {
    "GradRNN": GradRNN,
    "HamiltonianNet": HamiltonianNet,
    "LagrangianNet": LagrangianNet,
    "DissipativeHNN": DissipativeHNN,
    "ConservativeField": ConservativeField,
    "MLP": MLP,
}

#: The kind of a spec without one: innergrad 0.1's `innergrad train` (main aeb7002 and before) trained only
#: GradRNNs and recorded their constructor arguments alone.
LEGACY_KIND = "GradRNN"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_model(cls: type, kind: str | None = None) -> type:
    """Add your model class to the table, so that runs of it record its spec and `ig.load` rebuilds it.

    ```python
    @ig.register_model          # or ig.register_model(MyModel)
    class MyModel(nn.Module):
        def __init__(self, dim: int, width: int = 32): ...
        def spec(self) -> dict:                 # the constructor's keyword arguments, JSON-able
            return {"dim": self.dim, "width": self.width}
    ```

    `kind`: the name runs record (default: the class's name). The class may define a classmethod
    `from_spec(spec)` (default: `cls(**spec)`) and `export_program(example=None) -> Program` for
    `ig.export` (see `innergrad/models/protocol.py`). Registering a class again under its name
    replaces the row (a notebook cell run twice); another class under a taken kind is refused.
    Returns `cls`, so it works as a decorator.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_model: expected a torch.nn.Module subclass, got {cls!r}; pass the class itself, "
                        "not an instance")
    if not callable(getattr(cls, "spec", None)):
        raise TypeError(f"register_model: {cls.__name__} has no spec() method; add `def spec(self) -> dict` returning "
                        "its constructor's keyword arguments, so that a run can rebuild it")
    kind = cls.__name__ if kind is None else kind
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"register_model: kind must be a name such as {cls.__name__!r}, got {kind!r}")
    old = MODELS.get(kind)
    if old is not None and old is not cls and (_qualname(old) != _qualname(cls) or old.__module__.startswith(
            "innergrad.")):
        raise ModelSpecError(f"register_model: the kind {kind!r} is {_qualname(old)} already; register "
                             f"{cls.__name__} under another name: ig.register_model({cls.__name__}, kind='...')")
    for k, c in list(MODELS.items()):
        if c is cls and k != kind:
            del MODELS[k]
    MODELS[kind] = cls
    return cls


def kind_of(model: nn.Module) -> str | None:
    """The table's kind of `model`'s class (the exact class: a subclass may take other arguments), or None."""
    return next((k for k, c in MODELS.items() if c is type(model)), None)


def _not_registered(cls: type, where: str) -> ModelSpecError:
    return ModelSpecError(
        f"{where}: {cls.__name__} is not in innergrad's model table ({', '.join(MODELS)}), so a run cannot record how "
        f"to rebuild it; give the class a spec() method returning its constructor's keyword arguments and register "
        f"it with ig.register_model({cls.__name__}) before training and before ig.load")


def spec_of(model: nn.Module, where: str = "model") -> dict:
    """`{"kind": ..., **model.spec()}`, JSON-able; module-valued arguments become their own specs."""
    kind = kind_of(model)
    if kind is None:
        raise _not_registered(type(model), where)
    spec = model.spec()  # type: ignore[operator]
    if not isinstance(spec, dict):
        raise ModelSpecError(f"{where}: {type(model).__name__}.spec() must return a dict of constructor arguments, "
                             f"got {type(spec).__name__}")
    return {"kind": kind, **{k: _encode(v, f"{where}.{k}") for k, v in spec.items()}}


def _encode(v, where: str):
    if isinstance(v, nn.Module):
        return spec_of(v, where)
    if isinstance(v, (list, tuple)):
        return [_encode(x, where) for x in v]
    if isinstance(v, dict):
        return {str(k): _encode(x, f"{where}.{k}") for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ModelSpecError(f"{where}: a spec holds JSON values and modules that describe themselves, got a "
                         f"{type(v).__name__}; make spec() return plain values")


def describe(model: nn.Module) -> dict | None:
    """The model's spec, or None when it or a module inside it is not in the table (its runs then cannot be
    rebuilt by `ig.load`)."""
    try:
        return spec_of(model)
    except ModelSpecError:  # its class, or a module inside it (a custom F), is not in the table
        return None


def build(spec: dict, where: str = "spec") -> nn.Module:
    """The model a spec describes (a spec without `kind`: an innergrad 0.1 CLI run's GradRNN)."""
    if not isinstance(spec, dict):
        raise ModelSpecError(f"{where}: a model spec is a dict with a 'kind', got {type(spec).__name__}")
    kw = {k: _decode(v, f"{where}.{k}") for k, v in spec.items() if k != "kind"}
    kind = spec.get("kind", LEGACY_KIND)
    cls = MODELS.get(kind)
    if cls is None:
        raise ModelSpecError(
            f"{where}: the model kind {kind!r} is not in innergrad's model table ({', '.join(MODELS)}); if it is your "
            f"own class, register it before loading: ig.register_model({kind})")
    make = getattr(cls, "from_spec", None)
    try:
        return make(kw) if callable(make) else cls(**kw)
    except (TypeError, ValueError) as e:
        raise ModelSpecError(f"{where}: cannot build a {kind} from {kw}: {' '.join(str(e).split())}") from None


def _decode(v, where: str):
    if isinstance(v, dict):
        if "kind" in v:
            return build(v, where)
        return {k: _decode(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x, where) for x in v]
    return v


def spec_diff(then: dict, now: dict, labels: tuple[str, str] = ("then", "now"), prefix: str = "") -> list[str]:
    """The fields in which two specs differ, as `"field (X then, Y now)"`, nested fields dotted."""
    out = []
    for k in [*then, *(k for k in now if k not in then)]:
        a, b = then.get(k, "absent"), now.get(k, "absent")
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, labels, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} ({a!r} {labels[0]}, {b!r} {labels[1]})")
    return out


def normalized(spec: dict) -> dict:
    """The spec as its class writes it today: a record from an older innergrad (no kind, fewer arguments)
    gains the kind and the defaults. A spec that does not build (a kind not registered) stays as it is."""
    try:
        with torch.random.fork_rng(devices=[]):  # building draws initial weights; the caller's RNG stays put
            return spec_of(build(spec))
    except (ModelSpecError, TypeError, ValueError):
        return spec


def check_same_model(then: dict, now: dict, what: str, labels: tuple[str, str] = ("then", "now"),
                     fix: str = "give the same model to continue it, or start another run") -> None:
    """Run identity: a `ModelSpecError` naming every differing field (kind, sizes, activation, ...) in one line,
    `"{what} another model: field (X then, Y now); ...; {fix}"`."""
    fields = spec_diff(normalized(then), normalized(now), labels)
    if fields:
        raise ModelSpecError(f"{what} another model: {'; '.join(fields)}; {fix}")


__all__ = ["LEGACY_KIND", "MODELS", "build", "check_same_model", "describe", "kind_of", "normalized", "register_model",
           "spec_diff", "spec_of"]
