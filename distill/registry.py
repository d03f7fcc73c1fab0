"""Name -> factory registries for students and teachers.

Names are resolved only where configs are read (the CLI and
:mod:`distill.config`); the rest of the library passes built objects around.

Example::

    from distill.registry import Registry
    BLOCKS = Registry("block")

    @BLOCKS.register("tiny", description="a tiny block")
    def tiny(width: int = 8):
        return torch.nn.Conv2d(3, width, 3)

    block = BLOCKS.build("tiny", width=16)
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    def build(self, **kwargs: Any) -> T:
        return self.factory(**{**self.defaults, **kwargs})


class Registry(Generic[T]):
    """A named collection of factories, filled by the :meth:`register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str | None = None, *, description: str = "", **defaults: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register ``factory`` under ``name`` (default: the function's name).

        Keyword ``defaults`` are passed to the factory unless the caller overrides
        them, which lets one factory back several named presets.
        """

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            doc = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            self._entries[key] = Entry(key, factory, doc, dict(defaults))
            return factory

        return deco

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} Registered: {', '.join(sorted(self._entries))}."
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name).build(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[k] for k in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
