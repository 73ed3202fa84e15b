"""Conservative force fields: a learned energy E(x) whose negative gradient is the force.

Forces obtained as `-dE/dx` are curl-free by construction and consistent with the energy, which is
what molecular-dynamics and sampling codes need; training on forces therefore trains E through its
second derivatives (exact mode).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ExportError
from ..core.primitive import _check_mode, value_and_grad
from .protocol import Program, closed_form, example_batch, model_dtype

Tensor = torch.Tensor


def _squeeze(e: Tensor) -> Tensor:
    return e.squeeze(1) if e.dim() == 2 and e.shape[1] == 1 else e


class ConservativeField(nn.Module):
    """Wrap a scalar energy module: `forward(x, *context)` returns `(E, F)` with `F = -dE/dx`.

    ```python
    field = ig.ConservativeField(ig.MLP(2, (128, 128), activation="softplus"))
    E, F = field(x)                                   # x: (B, 2) -> E: (B,), F: (B, 2)
    loss = field.loss(x, forces=F_ref, energy=E_ref, energy_weight=0.1)
    ```

    **Arguments:**

    - `energy`: any module mapping `(x, *context) -> (B,)` (or `(B, 1)`); `x` may be `(B, ...)`,
      e.g. `(B, atoms, 3)`, and forces come back shaped like `x`. Extra positional inputs (species,
      cell, ...) are passed through and not differentiated. A module that defines
      `value_and_input_grad` (as `ig.MLP` does) gets the closed-form backend under `"auto"`.
    - `mode`: `"exact"` (default: the force is differentiable, so a force loss trains E) or
      `"detached"` (inference, e.g. running dynamics with a trained model).
    - `backend`: a name from `ig.backends()`, or `"auto"`.
    """

    def __init__(self, energy: nn.Module, mode: str = "exact", backend: str = "auto"):
        super().__init__()
        if not callable(energy):
            raise TypeError(
                f"ConservativeField: energy must be a module mapping x to one energy per sample, got "
                f"{type(energy).__name__}"
            )
        _check_mode(mode, "ConservativeField")
        self.energy_module = energy
        self.mode, self.backend = mode, backend

    def spec(self) -> dict:
        """The constructor's arguments (the model protocol, `models/protocol.py`); the energy module must
        describe itself too (an `ig.MLP` does)."""
        return {"energy": self.energy_module, "mode": self.mode, "backend": self.backend}

    def export_program(self, example=None) -> Program:
        """`(x, *context) -> (energy (B,), forces shaped like x)`; `example` is needed unless the energy is
        an `ig.MLP` of one input (whose size tells x's shape)."""
        if example is None:
            f = self.energy_module
            sizes = getattr(f, "in_sizes", None)
            if sizes is None or len(sizes) != 1:
                raise ExportError(f"export: cannot tell the input shape of the energy {type(f).__name__}; pass "
                                  "example=x (one batch of inputs, or a tuple (x, *context))")
            args: tuple[Tensor, ...] = (torch.randn(2, sizes[0], dtype=model_dtype(self)),)
        else:
            args = example_batch(example, "x, then any context inputs")
        names = ("x", *(f"context{i}" for i in range(1, len(args))))
        return Program(ConservativeProgram(self.energy_module), args, names, ("energy", "forces"))

    def energy(self, x: Tensor, *context: Tensor) -> Tensor:
        """E(x), shape `(B,)`; no gradient is computed."""
        return _squeeze(self.energy_module(x, *context))

    def forces(self, x: Tensor, *context: Tensor) -> Tensor:
        """`-dE/dx`, shaped like `x`."""
        return self(x, *context)[1]

    def forward(self, x: Tensor, *context: Tensor) -> tuple[Tensor, Tensor]:
        e, de = value_and_grad(self.energy_module, x, *context, argnums=0, mode=self.mode, backend=self.backend)
        return e, -de

    def loss(
        self,
        x: Tensor,
        *context: Tensor,
        forces: Tensor | None = None,
        energy: Tensor | None = None,
        force_weight: float = 1.0,
        energy_weight: float = 1.0,
        return_parts: bool = False,
    ):
        """Weighted mean-squared error on forces and/or energies.

        `force_weight * mean((F - forces)^2) + energy_weight * mean((E - energy)^2)`, with a term
        left out when its target is None (at least one target is required). Energy-only training
        skips the gradient entirely. With `return_parts=True` returns `(total, {"forces": ...,
        "energy": ...})` with the unweighted terms, detached, for logging.
        """
        if forces is None and energy is None:
            raise ValueError(
                "ConservativeField.loss: got neither forces= nor energy=; pass the reference forces "
                "(shaped like x), the reference energies (shape (B,)), or both."
            )
        parts: dict[str, Tensor] = {}
        if forces is not None:
            e, f = self(x, *context)
            if forces.shape != f.shape:
                raise ValueError(
                    f"ConservativeField.loss: forces must be shaped like x, {tuple(f.shape)}, got "
                    f"{tuple(forces.shape)}"
                )
            parts["forces"] = (f - forces).pow(2).mean()
        else:
            e = self.energy(x, *context)
        if energy is not None:
            if energy.shape != e.shape:
                raise ValueError(
                    f"ConservativeField.loss: energy must have shape {tuple(e.shape)} (one per sample), "
                    f"got {tuple(energy.shape)}"
                )
            parts["energy"] = (e - energy).pow(2).mean()
        total = force_weight * parts["forces"] if "forces" in parts else 0.0
        if "energy" in parts:
            total = total + energy_weight * parts["energy"]
        if return_parts:
            return total, {k: v.detach() for k, v in parts.items()}
        return total

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, backend={self.backend!r}"


class ConservativeProgram(nn.Module):
    """`(x, *context) -> (energy (B,), forces shaped like x)`, for export."""

    def __init__(self, energy: nn.Module):
        super().__init__()
        self.E = closed_form(energy, "ConservativeField's energy")

    def forward(self, x: Tensor, *context: Tensor) -> tuple[Tensor, Tensor]:
        e, (g,) = self.E.value_and_input_grad(x, *context, argnums=0)
        return _squeeze(e), -g
