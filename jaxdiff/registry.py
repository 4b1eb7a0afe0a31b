"""One registry helper for every kind of component: samplers, schedules, networks, guidance
transforms, objectives, jobs and reproductions.

A ``Registry`` maps a name to an ``Entry``: the registered object, the default config section it
brings (a ``ConfigDict`` factory, or None), its own check of that section (or None) and free
metadata.  It is a read-only ``Mapping`` from name to the registered object, so ``name in REG``,
``sorted(REG)`` and ``REG[name]`` work as for a dict.

    SAMPLERS = Registry("sampler")

    @SAMPLERS.register("heun", nfe=lambda n: 2 * n - 1)
    def run(ctx, y): ...

    SAMPLERS.get("heun")          # the Entry (object, defaults, check, meta)
    SAMPLERS["heun"]              # the object itself

A new method registers itself when its module is imported; nothing else is edited.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
from typing import Any, Callable

from jaxdiff.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered component.

    name: registry key.
    obj: the registered object (function, class, spec).
    defaults: () -> ConfigDict of the component's config fields, or None.
    check: check(section, **context) raising ConfigError naming the field, or None.
    meta: free keyword metadata given at registration (e.g. a sampler's NFE rule).
    """

    name: str
    obj: Any
    defaults: Callable[[], Any] | None = None
    check: Callable[..., None] | None = None
    meta: dict = dataclasses.field(default_factory=dict)


class Registry(collections.abc.Mapping):
    """Name -> component, with per-component default config sections and checks."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, *, defaults: Callable[[], Any] | None = None,
                 check: Callable[..., None] | None = None, **meta):
        """Registers ``obj`` under ``name``; without ``obj`` returns a decorator."""
        def add(target):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, target, defaults, check, dict(meta))
            return target

        return add if obj is None else add(obj)

    def entry(self, name: str, field: str | None = None) -> Entry:
        """The Entry of ``name``; an unknown name raises ConfigError (naming ``field`` when
        given, e.g. 'sample.sampler') with the registered names and the closest match."""
        if name not in self._entries:
            names = sorted(self._entries)
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            prefix = f"config.{field}: " if field else ""
            raise ConfigError(f"{prefix}unknown {self.kind} {name!r}{hint}; choose one of "
                              f"{names}")
        return self._entries[name]

    def get(self, name: str, default: Any = None) -> Any:  # Mapping.get semantics
        return self._entries[name].obj if name in self._entries else default

    def default_config(self, name: str, field: str | None = None):
        """The default config section of ``name`` (a fresh ConfigDict; empty if none)."""
        import ml_collections

        entry = self.entry(name, field)
        return entry.defaults() if entry.defaults else ml_collections.ConfigDict()

    def section(self, name: str, field: str, **fields):
        """A config section for ``name``: its default fields plus ``name``, updated by
        ``fields``; a field the component does not have raises ConfigError naming it.
        ``field`` is the section's config path, e.g. 'guidance'."""
        section = self.default_config(name, f"{field}.name")
        section.name = name
        for key, value in fields.items():
            if key not in section:
                raise ConfigError(f"config.{field}.{key}: {self.kind} {name!r} has no such "
                                  f"field; it has {sorted(k for k in section if k != 'name')}")
            section[key] = value
        return section

    def check(self, name: str, section, field: str | None = None, **context) -> None:
        """Runs the component's own check on its config section (if it has one)."""
        entry = self.entry(name, field)
        if entry.check is not None:
            entry.check(section, **context)

    def __getitem__(self, name: str) -> Any:
        return self._entries[name].obj

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"
