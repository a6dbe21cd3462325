"""Lazy re-exports for package `__init__`s (PEP 562).

A package re-exports its public names; importing all of them eagerly would make every
`ensign` CLI call pay for PostgreSQL, aiohttp, Envoy's protos... even when it only needs a
constant. A package lists its heavy parts here instead and imports them for the type checker
under `if TYPE_CHECKING:`; the first access (`from pkg import Name` or `pkg.Name`) imports the
submodule and caches the name on the package:

    if TYPE_CHECKING:
        from ensign.daemon.registry.postgres import Changes, PgStore
    else:
        __getattr__ = lazy(__name__, {".postgres": ("Changes", "PgStore")})

A name here must not also be a submodule's name: importing that submodule would set the
package attribute to the module, and `__getattr__` would never be asked for the name.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy(package: str, exports: Mapping[str, tuple[str, ...]]) -> Callable[[str], object]:
    """The module `__getattr__` for `package`: {".submodule": (names, ...)}; a name is
    "public=attribute" where the package renames what it re-exports."""
    where = {name.partition("=")[0]: module for module, names in exports.items()
             for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module, package)
        for each in exports[module]:  # all of them: the next access finds them bound
            public, _, attribute = each.partition("=")
            setattr(sys.modules[package], public, getattr(loaded, attribute or public))
        return getattr(sys.modules[package], name)

    return __getattr__
