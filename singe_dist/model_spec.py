"""The syntax of a user's own model name, ``"package.module:factory"``, without importing torch.

Kept apart from :mod:`singe_dist.models` so that config validation (which runs before the heavy
imports, so that a typo fails in a second) can check it; :func:`singe_dist.models.build_model` is the
one place that imports and calls the factory.
"""

from __future__ import annotations

import re

from singe_dist.errors import SingeError

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_SPEC = re.compile(rf"({_DOTTED}):({_DOTTED})")


def is_import_spec(name: str) -> bool:
    """Whether ``name`` means a user's factory (it has a ``:``) rather than a zoo name."""
    return ":" in name


def parse_import_spec(spec: str) -> tuple[str, str]:
    """``"pkg.module:factory"`` -> ``("pkg.module", "factory")``; a one-line SingeError if malformed."""
    found = _SPEC.fullmatch(spec)
    if not found:
        raise SingeError(f"model {spec!r} is not an import path: expected 'package.module:factory' (a module "
                         "importable from the job's working directory and a callable in it taking num_classes)")
    return found.group(1), found.group(2)
