"""Settings in typed groups read and built in the user's flat namespace: ``X(max_length=...)``,
``x.max_length`` (the group's field). The machinery ``JobConfig`` and ``PlanConfig`` share."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any, ClassVar

from pipeline.errors import UsageError
from pipeline.io.storage import safe_uri, uri_credentials


class ComposedSettings:
    """Settings in typed groups (``GROUPS``: attribute -> frozen dataclass), built from and read in
    the user's flat namespace: ``X(max_length=...)``, ``x.max_length`` (the group's field). Immutable;
    each group checks its own fields at construction, then ``_check_across_groups`` runs."""

    __slots__ = ()
    GROUPS: ClassVar[dict[str, type]]
    FIELD_GROUP: ClassVar[dict[str, str]]  # field name -> the group that declares it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.FIELD_GROUP = {f.name: attr for attr, group in cls.GROUPS.items() for f in fields(group)}

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.FIELD_GROUP))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s): {', '.join(unknown)}")
        for attr, group in self.GROUPS.items():
            chosen = {k: v for k, v in values.items() if self.FIELD_GROUP[k] == attr}
            object.__setattr__(self, attr, group(**chosen))
        self._check_across_groups()

    def __getattr__(self, name: str) -> Any:  # only for names that are not a group: a flat setting
        group = type(self).FIELD_GROUP.get(name)
        if group is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        return getattr(object.__getattribute__(self, group), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, a) == getattr(other, a) for a in self.GROUPS)

    __hash__ = None  # type: ignore[assignment]  # storage_options is a dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{a}={getattr(self, a)!r}" for a in self.GROUPS) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        """The flat namespace: every setting by its field name."""
        return {name: getattr(getattr(self, group), name) for name, group in self.FIELD_GROUP.items()}

    def replace(self, **changes: Any) -> Any:
        return type(self)(**{**self.to_dict(), **changes})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.FIELD_GROUP)

    def _check_across_groups(self) -> None:
        buckets = self.encoding.shape_buckets
        if buckets and buckets[-1] != self.max_length:
            raise UsageError(
                f"--shape-buckets must end at --max-length {self.max_length} (no longer shape is needed, and a "
                f"shorter one leaves long rows uncompiled); largest is {buckets[-1]}"
            )
        chunk = self.chunking
        if chunk.chunk_tokens is not None:
            if chunk.chunk_tokens > self.max_length:
                raise UsageError(f"--chunk-tokens {chunk.chunk_tokens} is more than --max-length {self.max_length}")
            if chunk.chunk_overlap > chunk.chunk_tokens // 2:
                raise UsageError(
                    f"--chunk-overlap {chunk.chunk_overlap} is more than half of --chunk-tokens {chunk.chunk_tokens}"
                )
        named = [("--input", u) for u in self.inputs] + [("--reuse-from", u) for u in self.reuse_from]
        for flag, uri in named + [("--output", self.output), ("--model", self.model)]:
            kind = uri_credentials(uri) if uri else None
            if kind:  # it would be written into the manifest, the data files' `source` and the logs
                raise UsageError(
                    f"{flag} {safe_uri(uri)} carries {kind}; credentials in a URI would be recorded in the "
                    f"output and its logs: pass them with --storage-options (or the store's environment)"
                )


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)
