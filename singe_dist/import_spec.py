"""A user's own model or criterion, named ``"package.module:attribute"``: its syntax and its import.

Kept apart from torch so that config validation (which runs before the heavy imports, so that a typo
fails in a second) can check the syntax; :func:`load_import_spec` is the one place that imports a
user's module, with the working directory first on ``sys.path`` (as ``python -m`` would: a Ray job's
own files, its ``--working-dir``, come first).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback

from singe_dist.errors import SingeError

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_SPEC = re.compile(rf"({_DOTTED}):({_DOTTED})")
_WHAT = {"model": "factory", "criterion": "Class"}  # what the attribute is, in the error's expected form


def is_import_spec(name: str) -> bool:
    """Whether ``name`` means a user's own object (it has a ``:``) rather than a built-in name."""
    return ":" in name


def parse_import_spec(spec: str, what: str = "model") -> tuple[str, str]:
    """``"pkg.module:attr"`` -> ``("pkg.module", "attr")``; a one-line SingeError if malformed."""
    found = _SPEC.fullmatch(spec)
    if not found:
        hint = ("a callable in it taking num_classes" if what == "model"
                else "a subclass of singe_dist.relevance.criterion.Criterion in it")
        raise SingeError(f"{what} {spec!r} is not an import path: expected 'package.module:{_WHAT[what]}' (a module "
                         f"importable from the job's working directory and {hint})")
    return found.group(1), found.group(2)


def load_import_spec(spec: str, what: str = "model") -> object:
    """Import ``module`` and return ``attr`` of ``"module:attr"``; every failure is one line naming the spec."""
    module_name, attr = parse_import_spec(spec, what)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):  # the module itself
            raise SingeError(f"{what} {spec!r}: no module named {exc.name!r} in the working directory {cwd} "
                             "or the installed packages") from None
        raise SingeError(f"{what} {spec!r}: importing {module_name} failed: {where(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a syntax error or a failing import in the user's module
        raise SingeError(f"{what} {spec!r}: importing {module_name} failed: {where(exc)}") from None
    found: object = module
    for part in attr.split("."):
        if not hasattr(found, part):
            source = getattr(module, "__file__", None) or module_name
            raise SingeError(f"{what} {spec!r}: {source} has no attribute {attr!r}")
        found = getattr(found, part)
    return found


def where(exc: BaseException, caller: str | None = None) -> str:
    """``TypeError: ... (my_model.py:12)``: an exception and the innermost line of the user's code it came
    from, in one line (frames of this module and of ``caller``, the file that called the user, left out)."""
    text = " ".join(str(exc).split())
    ours = {__file__, caller}
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename not in ours]  # the user's side
    if isinstance(exc, SyntaxError) and exc.filename:
        place = f" ({os.path.basename(exc.filename)}:{exc.lineno})"
        text = " ".join((exc.msg or "").split())
    elif frames:
        place = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    else:
        place = ""
    return f"{type(exc).__name__}{': ' + text if text else ''}{place}"
