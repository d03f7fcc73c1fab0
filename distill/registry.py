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
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

#: attribute where :func:`record_init` keeps an instance's constructor arguments
INIT_KWARGS = "init_kwargs"


def record_init(cls: type) -> type:
    """Make every instance of ``cls`` remember its constructor arguments in ``obj.init_kwargs``.

    The arguments are bound to the signature with defaults applied (a plain dict), so an object
    built directly (``MobileNet(alpha=0.25)``) can be rebuilt later (a student checkpoint records
    them). Idempotent; subclasses record their own constructor's arguments.
    """
    if cls.__dict__.get("_records_init"):
        return cls
    original = cls.__init__
    sig = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if type(self).__init__ is __init__:  # the most derived recorder wins
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            values: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = sig.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    values.update(value)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:  # *args cannot be rebuilt by keyword
                    values[name] = value
            object.__setattr__(self, INIT_KWARGS, values)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls._records_init = True  # type: ignore[attr-defined]
    return cls


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered factory: its name, the callable, a description, preset default arguments and, optionally,
    ``check``: a fail-fast check of the weights the factory would load (``weights`` or None for its default ->
    problems, one sentence each; never downloads)."""
    name: str
    factory: Callable[..., T]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    check: Callable[[str | None], list[str]] | None = None

    def build(self, **kwargs: Any) -> T:
        """Call the factory with the preset defaults, overridden by ``kwargs``."""
        return self.factory(**{**self.defaults, **kwargs})


class Registry(Generic[T]):
    """A named collection of factories, filled by the :meth:`register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str | None = None, *, description: str = "",
        check: Callable[[str | None], list[str]] | None = None, **defaults: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register ``factory`` under ``name`` (default: the function's name).

        Keyword ``defaults`` are passed to the factory unless the caller overrides
        them, which lets one factory back several named presets. ``check`` is the entry's weight check
        (see :class:`Entry`).
        """

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or factory.__name__
            if isinstance(factory, type):
                record_init(factory)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            doc = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            self._entries[key] = Entry(key, factory, doc, dict(defaults), check)
            return factory

        return deco

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``.
        
        Raises:
            UnknownNameError: not registered (the message lists close matches)."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} Registered: {', '.join(sorted(self._entries))}."
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Build the object registered as ``name`` with ``kwargs`` over its preset defaults."""
        return self.get(name).build(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def name_of(self, obj: Any) -> tuple[str, dict[str, Any]] | None:
        """``(name, kwargs)`` that rebuild ``obj`` with :meth:`build`, or None if its class is not registered.

        ``obj`` must come from a registered class (which records its constructor arguments). Among
        the entries of that class, the one whose preset defaults all equal ``obj``'s arguments is
        preferred (``MobileNet(alpha=0.25)`` -> ``mobilenet_v1_025``), else any entry of the class.
        """
        kwargs = getattr(obj, INIT_KWARGS, None)
        if kwargs is None:
            return None
        entries = [e for e in self._entries.values() if e.factory is type(obj)]
        matching = [e for e in entries if all(kwargs.get(k) == v for k, v in e.defaults.items())]
        best = max(matching or entries, key=lambda e: (len(e.defaults), e.name), default=None)
        return None if best is None else (best.name, dict(kwargs))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[k] for k in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
