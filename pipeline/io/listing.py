"""Finding the input: what ``--input`` names, listed into shards (format, compression, size and a
version that a rewrite cannot keep), side files skipped only inside listed folders, unknown files
refused by name unless ignored, ids' common root."""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import E5EmbedError, UsageError, step_failed
from pipeline.io.formats import INPUT_FORMATS, detect_format
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage, escape_controls, has_pattern, strip_uri_credentials

logger = logging.getLogger(__name__)


def _is_side_file(path: str) -> bool:
    return any(part.startswith(("_", ".")) for part in path.split("/") if part)


def version_of(info: Mapping[str, Any]) -> str:
    """What changes when an object is rewritten: its ETag (S3, HTTP), generation (GCS), or on a
    local disk its inode and ctime (with mtime). Size + mtime alone is not enough: ``cp -p`` and
    ``rsync -a`` keep both, but a rewrite cannot keep the ctime (set by the kernel on every change,
    ``utime`` included) and a rename-into-place brings a new inode. Metadata changes (``chmod``,
    a new hard link) also move the ctime: such a shard counts as changed (refused, never mixed).
    '' when the store gives none of these (see ``unversioned``)."""
    if "ino" in info and "mtime" in info:  # a POSIX filesystem (fsspec's local info)
        return f"local:ino={info['ino']},ctime={info.get('created')!r},mtime={info['mtime']!r}"
    for key in (
        "ETag",
        "etag",
        "generation",
        "version_id",
        "VersionId",
        "Content-MD5",
        "Digest",
        "mtime",
        "LastModified",
        "last_modified",
        "Last-Modified",
        "created",
    ):
        value = info.get(key)
        if value not in (None, ""):
            return f"{key}:{value.isoformat() if hasattr(value, 'isoformat') else value}".replace('"', "")
    return ""


def current_fingerprint(storage: Storage, path: str) -> tuple[int, str]:
    """A shard's (size, version) as the store says now (compared with ``Shard.fingerprint``)."""
    info = storage.info(path)
    return int(info.get("size") or 0), version_of(info)


def unversioned(shards: Sequence[Shard]) -> list[Shard]:
    """Shards whose store gave no version: a rewrite that keeps their size cannot be detected."""
    return [s for s in shards if not s.version]


def warn_unversioned(listing: "Listing") -> None:
    """Change detection cannot rest on a version for these: said, never switched off silently."""
    blind = unversioned(listing.shards)
    if blind:
        logger.warning(
            "%d input shard(s) come from a store that gives no ETag, generation or modification time "
            "(e.g. %s): a rewrite that keeps a shard's size cannot be detected between runs; the "
            "manifest records them as unversioned_shards",
            len(blind),
            strip_uri_credentials(blind[0].uri),
        )


def _list_input(storage: Storage) -> tuple[str, dict[str, Any], bool]:
    """(root, {path: info}, single_file) for one --input, literally.

    A folder/prefix is walked; a file is itself. Only when neither exists and the last path
    component holds ``*``, ``?`` or ``[`` is that component a name pattern, matched against the
    listing of its (literal) parent folder: the path itself is never expanded as a glob.
    """
    path = storage.root
    storage.forget_listings()
    if storage.is_dir(path):
        return path, storage.walk_files(path), False
    if storage.is_file(path):
        return posixpath.dirname(path), {path: storage.info(path)}, True
    parent, name = posixpath.split(path)
    if has_pattern(name) and storage.is_dir(parent):
        listed = dict(storage.files_in(parent))
        return parent, {p: i for p, i in listed.items() if fnmatch.fnmatchcase(posixpath.basename(p), name)}, False
    raise UsageError(f"input not found: {strip_uri_credentials(storage.uri)}")


@dataclass(frozen=True)
class Listing:
    shards: list[Shard]
    ignored: list[str]  # files of unknown format inside listed folders (skipped with --ignore-unknown-files)
    # files under a `_`/`.` name inside listed folders (Spark's and Hadoop's side-file convention:
    # `_SUCCESS`, `_temporary/`, `.crc`): never read, but said and recorded, not skipped in silence
    side_files: list[str] = field(default_factory=list)


def list_shards(
    inputs: Sequence[str],
    storage_options: Mapping[str, Any],
    input_format: str = "auto",
    *,
    ignore_unknown: bool = False,
) -> list[Shard]:
    """The shards of ``list_inputs`` (for callers that record nothing about ignored files)."""
    return list_inputs(inputs, storage_options, input_format, ignore_unknown=ignore_unknown).shards


def list_inputs(
    inputs: Sequence[str],
    storage_options: Mapping[str, Any],
    input_format: str = "auto",
    *,
    ignore_unknown: bool = False,
) -> Listing:
    """Expand folders/prefixes, name patterns and files into a sorted, de-duplicated shard list.

    A file named by an ``--input`` is read whatever its name; inside a listed folder, ``_``/``.``
    side files are skipped. A file reached twice (overlapping inputs, a symlink) is one shard.
    Derived ids (``<relpath>:<row>``) are relative to the inputs' common root, so two inputs that
    both hold ``part-0.jsonl`` cannot collide and the order of ``--input`` flags changes nothing.
    A file of unknown format inside a listed folder is refused by name (exit 2) unless
    ``ignore_unknown``: then it is skipped and listed in ``Listing.ignored`` (the manifest keeps it).
    """
    listed: list[tuple[str, Storage, str, dict[str, Any], bool]] = []
    for uri in inputs:
        storage = Storage(uri, storage_options)
        try:
            root, found, single_file = _list_input(storage)
        except E5EmbedError:
            raise
        except Exception as e:  # before any work: the store's moment (exit 1) or the input's (exit 2)
            raise step_failed(f"cannot list input {strip_uri_credentials(uri)}", e) from e
        listed.append((uri, storage, root, found, single_file))
    id_root = _common_root([root for _, _, root, _, _ in listed])
    shards: dict[str, Shard] = {}
    unknown: list[str] = []
    side: list[str] = []
    for uri, storage, root, found, single_file in listed:
        for p, info in sorted(found.items()):
            if not single_file and _is_side_file(posixpath.relpath(p, root) if root else p):
                side.append(p)
                continue
            fmt, compression = detect_format(p, input_format)
            if fmt is None:
                if single_file:
                    raise UsageError(
                        f"cannot tell the format of {strip_uri_credentials(uri)}; "
                        f"pass --input-format {'|'.join(INPUT_FORMATS[1:])}"
                    )
                unknown.append(p)
                continue
            key = os.path.realpath(p) if storage.is_local else p
            if key in shards and shards[key].path <= p:
                continue  # the same file by another name: one shard, under the first name in sort order
            rel = posixpath.relpath(p, id_root) if id_root else p
            shards[key] = Shard(
                p, rel, int(info.get("size") or 0), fmt, compression, storage.protocol, version_of(info)
            )
    unknown = sorted(set(unknown))
    if unknown and not ignore_unknown:
        raise UsageError(
            f"{len(unknown)} input file(s) of unknown format: {', '.join(unknown[:5])}"
            f"{' …' if len(unknown) > 5 else ''}; pass --input-format to read them as one format, or "
            "--ignore-unknown-files to skip them (they are listed in the manifest)"
        )
    if unknown:
        logger.warning("skipped %d input file(s) of unknown format (--ignore-unknown-files)", len(unknown))
    if side:
        logger.warning(
            "skipped %d file(s) under `_`/`.` names inside the input folders (side files by convention, never "
            "read), e.g. %s; name a file with --input to read it (the manifest lists them: skipped_side_files)",
            len(side),
            escape_controls(strip_uri_credentials(side[0])),
        )
    if not shards:
        raise UsageError(
            f"no input files found in {', '.join(strip_uri_credentials(u) for u in inputs)}"
            + (f" (only {len(side)} side file(s) under `_`/`.` names, e.g. {side[0]})" if side else "")
        )
    return Listing(sorted(shards.values(), key=lambda s: s.path), unknown, sorted(side))


def _common_root(roots: Sequence[str]) -> str:
    """The deepest folder holding every input root ('' when they share none: full paths then)."""
    try:
        return posixpath.commonpath(roots) if roots else ""
    except ValueError:  # absolute and relative (local and object-store paths) mixed
        return ""
