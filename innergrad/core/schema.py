"""One option schema for every command and `fit`: each setting is one row (`Opt`) with its type, range,
default and help, and the command line, config files and library arguments are all checked by it.

```python
LR = Opt("lr", float, 1e-3, "learning rate", lo=0, open="lo", hi=1e3)
schema = Schema([LR, Opt("epochs", int, 10, "passes", lo=1)])
schema.add_arguments(parser)                      # --lr, --epochs (default None: "not given")
values = schema.check(schema.given(args), "command line")   # typed, in range, or InnergradError
```

A message names the setting, the rule, and the offending value (cut to a readable length): for a
list, the element that breaks the rule, not the first one. `requires` / `excludes` refuse an option
that cannot apply to the command as given, rather than ignoring it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InnergradError
from .text import shorten

#: The kinds a setting can have: what a value must be, and how it is said in a message.
KINDS = {
    int: "an integer", float: "a number", str: "a string", bool: "true or false", "path": "a file path",
    "widths": "a list of integer widths such as [128, 128]", "ints": "a list of integers",
}


def _show(v: object) -> str:
    return shorten(v if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v), 80)


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


@dataclass(frozen=True)
class Opt:
    """One setting. `lo` / `hi`: inclusive bounds unless named in `open` ("lo", "hi" or "both");
    `why`: the reason for a bound; `choices`: the allowed values (or a function returning them);
    `optional`: None is allowed (it means "not set"); `requires`: names of options this one needs
    given alongside; `excludes`: names of options it cannot be given with; `flag`: the command-line
    spelling (default `--name-with-dashes`); `cli=False`: no command-line option."""

    name: str
    kind: Any
    default: Any = None
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    open: str = ""
    why: str = ""
    choices: Sequence | Callable[[], Sequence] | None = None
    optional: bool = False
    metavar: str | None = None
    flag: str | None = None
    nargs: str | None = None
    requires: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    cli: bool = True
    group: str = ""
    required: bool = False

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def allowed(self) -> Sequence | None:
        return self.choices() if callable(self.choices) else self.choices

    # ---- one value
    def check(self, v: Any, where: str = "", label: str | None = None) -> Any:
        """`v` as this setting's type, within its range and choices; InnergradError otherwise (naming the
        setting as `label`, default its name)."""
        if label is not None and label != self.name:
            from dataclasses import replace

            return replace(self, name=label).check(v, where)
        at = f"{where}: " if where else ""
        if self.nargs and isinstance(v, (list, tuple)) and self.kind not in ("widths", "ints"):
            return [self.check(x, where) for x in v]  # each item by the row; the bad one is named
        if v is None or (self.kind == "path" and v == ""):
            if self.optional or self.default is None:
                return None
            raise InnergradError(f"{at}{self.name} must be {KINDS.get(self.kind, self.kind)}, got None")
        out = self._typed(v, at)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            self._in_range(out, at)
        allowed = self.allowed()
        if allowed is not None and out not in allowed:
            shown = (" or ".join(repr(a) for a in allowed) if len(allowed) <= 3
                     else f"one of {sorted(allowed)}")
            raise InnergradError(f"{at}{self.name} must be {shown}, got {_show(out)}")
        return out

    def _typed(self, v: Any, at: str) -> Any:
        kind = self.kind

        def bad(extra: str = "") -> InnergradError:
            return InnergradError(f"{at}{self.name} must be {KINDS.get(kind, kind)}, got {_show(v)}{extra}")

        if kind is bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return v.strip().lower() in ("true", "1", "yes")
            raise bad()
        if kind is int:
            try:
                return _as_int(v)
            except (TypeError, ValueError):
                raise bad() from None
        if kind is float:
            if isinstance(v, bool):
                raise bad()
            try:
                out = float(v)
            except (TypeError, ValueError):
                raise bad() from None
            if not math.isfinite(out):
                raise InnergradError(f"{at}{self.name} must be a finite number, got {_show(v)}")
            return out
        if kind is str:
            if not isinstance(v, str):
                raise bad()
            return v
        if kind == "path":
            if not isinstance(v, (str, os.PathLike)):
                raise bad()
            return str(v)
        if kind in ("widths", "ints"):
            items = _list_items(v)
            if items is None:
                raise bad()
            ints: list[int] = []
            for w in items:
                try:
                    ints.append(_as_int(w))
                except (TypeError, ValueError):
                    raise bad(f" ({_show(w)} is not an integer)") from None
            if kind == "ints":
                for w in ints:  # each element in range; the message names the one that is not
                    self._in_range(w, at)
            if kind == "widths":
                small = [w for w in ints if w < 1]
                if not ints or small:
                    what = f" ({small[0]} is not)" if small else ""
                    raise InnergradError(f"{at}{self.name} must be one or more positive widths, got "
                                         f"{_show(list(ints))}{what}")
            return tuple(ints)
        raise TypeError(f"Opt {self.name}: unknown kind {kind!r}")

    def _in_range(self, v: float, at: str) -> None:
        lo_open, hi_open = self.open in ("lo", "both"), self.open in ("hi", "both")
        why = f" ({self.why})" if self.why else ""
        if self.lo is not None and self.hi is not None and lo_open and hi_open:
            if not self.lo < v < self.hi:
                raise InnergradError(f"{at}{self.name} must be between {_num(self.lo)} and {_num(self.hi)} "
                                     f"(exclusive), got {v}{why}")
            return
        if self.lo is not None and (v <= self.lo if lo_open else v < self.lo):
            rule = ("a positive number" if self.lo == 0 else f"> {_num(self.lo)}") if lo_open else f">= {_num(self.lo)}"
            raise InnergradError(f"{at}{self.name} must be {rule}, got {v}{why}")
        if self.hi is not None and (v >= self.hi if hi_open else v > self.hi):
            rule = f"< {_num(self.hi)}" if hi_open else f"<= {_num(self.hi)}"
            raise InnergradError(f"{at}{self.name} must be {rule}, got {_num(v)}{why}")

    # ---- the command line
    def parse(self, text: str) -> Any:
        """argparse's `type=`: the text as this kind (the range is checked with the other settings)."""
        try:
            return float(text) if self.kind is float else self._typed(text, "")  # nan and inf: for the range check
        except (InnergradError, ValueError):
            name = getattr(self.kind, "__name__", self.kind)  # argparse's own wording, the value cut short
            raise argparse.ArgumentTypeError(f"invalid {name} value: {_show(text)} (expected "
                                             f"{KINDS.get(self.kind, self.kind)})") from None

    def add_to(self, parser: Any) -> None:
        shown = self.default
        if isinstance(shown, tuple):
            shown = " ".join(str(v) for v in shown)
        kw: dict[str, Any] = {"default": None, "help": f"{self.help} (default: {'none' if shown is None else shown})"
                              .replace("%", "%%")}
        if self.kind is bool:
            kw.update(action="store_const", const=True)
            kw["help"] = f"{self.help} (default: {'on' if self.default else 'off'})"
        else:
            if self.kind in ("widths", "ints") or self.nargs:
                kw.update(nargs=self.nargs or "+")
                if self.kind in ("widths", "ints"):
                    kw["type"] = _int_or_text
            elif self.kind not in ("path", str):
                kw["type"] = self.parse
            allowed = self.allowed()
            if allowed is not None:
                kw["choices"] = list(allowed)
            if self.metavar:
                kw["metavar"] = self.metavar
        if self.required:
            kw.update(required=True, help=self.help)
        parser.add_argument(self.option, dest=self.name, **kw)


def _int_or_text(text: str) -> int | str:
    """A list item from the command line: an integer where it is one; other text ("64,64", a typo) is left for
    the row's check, which splits commas or names the bad item."""
    try:
        return int(text)
    except ValueError:
        return text


def _as_int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError("bool")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("not integral")
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    if isinstance(v, int) or hasattr(v, "__index__"):
        return int(v)
    raise TypeError(type(v).__name__)


def _list_items(v: Any) -> list | None:
    """`128`, `"128,128"`, `["128", "128"]` and `[128, 128]` all as a list of items; None if not a list."""
    if isinstance(v, (int, str)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        return None
    return [p for w in v for p in (w.replace(",", " ").split() if isinstance(w, str) else [w])]


class Schema:
    """An ordered table of `Opt`s: checks mappings of settings, adds argparse options, refuses
    options that cannot apply."""

    def __init__(self, opts: Iterable[Opt]):
        self.opts = {o.name: o for o in opts}

    def __getitem__(self, name: str) -> Opt:
        return self.opts[name]

    def __contains__(self, name: object) -> bool:
        return name in self.opts

    def __iter__(self):
        return iter(self.opts.values())

    def defaults(self) -> dict:
        return {o.name: o.default for o in self}

    def subset(self, names: Iterable[str], **defaults: Any) -> Schema:
        """The rows `names` (in that order), with other defaults where given (`fit`'s own)."""
        from dataclasses import replace

        return Schema(replace(self.opts[n], default=defaults[n]) if n in defaults else self.opts[n] for n in names)

    def check(self, values: Mapping, where: str = "", as_options: bool = False) -> dict:
        """Each value checked by its row; an unknown key is an error naming the closest known one.
        `as_options`: messages name the command-line spelling (`--max-steps`) instead of the key."""
        out = {}
        for k, v in values.items():
            key = str(k).replace("-", "_")
            if key not in self.opts:
                close = difflib.get_close_matches(key, list(self.opts), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise InnergradError(f"{where + ': ' if where else ''}unknown setting {shorten(repr(k), 60)}{hint}; "
                                     f"valid settings are {sorted(self.opts)}")
            o = self.opts[key]
            out[key] = o.check(v, where, o.option if as_options else None)
        return out

    # ---- the command line
    def add_arguments(self, parser: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The rows' options on `parser`, in argument groups by their `group`; returns the groups."""
        groups: dict[str, Any] = {}
        for name in names if names is not None else self.opts:
            o = self.opts[name]
            if not o.cli:
                continue
            if o.group and hasattr(parser, "add_argument_group"):
                if o.group not in groups:
                    groups[o.group] = parser.add_argument_group(o.group)
                o.add_to(groups[o.group])
            else:
                o.add_to(parser)
        return groups

    def given(self, args: argparse.Namespace) -> dict:
        """The settings given on the command line (argparse leaves the others None)."""
        return {o.name: getattr(args, o.name) for o in self if getattr(args, o.name, None) is not None}

    def refuse_inapplicable(self, given: Mapping, where: str = "") -> None:
        """Refuse an option given without one it `requires`, or with one it `excludes`."""
        at = f"{where}: " if where else ""
        for name in given:
            o = self.opts.get(name)
            if o is None:
                continue
            missing = [r for r in o.requires if given.get(r) in (None, False)]
            if missing:
                need = " or ".join(self.opts[r].option if r in self.opts else r for r in missing)
                raise InnergradError(f"{at}{o.option} applies only with {need}; drop {o.option} or add {need}")
            clash = [x for x in o.excludes if given.get(x) not in (None, False)]
            if clash:
                other = self.opts[clash[0]].option if clash[0] in self.opts else clash[0]
                raise InnergradError(f"{at}{o.option} cannot be combined with {other}; drop one of them")


__all__ = ["KINDS", "Opt", "Schema"]
