"""Real English text that every Python installation ships: the standard library's docstrings.

Used for the bundled sample corpus (``jobs/make_sample_corpus.py``) and the benchmark corpus,
so neither needs a download.
"""

from __future__ import annotations

import importlib
import inspect
import re

MODULES = [
    "gzip",
    "zlib",
    "bz2",
    "lzma",
    "zipfile",
    "tarfile",
    "json",
    "csv",
    "sqlite3",
    "hashlib",
    "hmac",
    "secrets",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "datetime",
    "calendar",
    "collections",
    "heapq",
    "bisect",
    "itertools",
    "functools",
    "operator",
    "pathlib",
    "shutil",
    "tempfile",
    "glob",
    "fnmatch",
    "os",
    "io",
    "subprocess",
    "threading",
    "multiprocessing",
    "concurrent.futures",
    "asyncio",
    "socket",
    "ssl",
    "select",
    "http.client",
    "urllib.request",
    "urllib.parse",
    "email",
    "smtplib",
    "base64",
    "binascii",
    "struct",
    "codecs",
    "unicodedata",
    "string",
    "re",
    "textwrap",
    "difflib",
    "pprint",
    "logging",
    "argparse",
    "getopt",
    "unittest",
    "doctest",
    "pdb",
    "timeit",
    "trace",
    "tracemalloc",
    "gc",
    "inspect",
    "ast",
    "dis",
    "tokenize",
    "keyword",
    "typing",
    "dataclasses",
    "enum",
    "abc",
    "contextlib",
    "weakref",
    "copy",
    "pickle",
    "shelve",
    "dbm",
    "queue",
    "sched",
    "signal",
    "mmap",
    "array",
    "math",
    "cmath",
    "numbers",
    "uuid",
    "ipaddress",
    "xml.etree.ElementTree",
    "html",
    "html.parser",
    "webbrowser",
    "wave",
    "colorsys",
    "locale",
    "gettext",
    "platform",
    "sysconfig",
    "site",
]


def passages(limit: int) -> list[tuple[str, str]]:
    """(module name, paragraph) pairs, de-duplicated, in a stable order."""
    out: list[tuple[str, str]] = []
    for name in MODULES:
        mod = importlib.import_module(name)
        objs = [mod] + [v for _, v in sorted(vars(mod).items()) if inspect.isclass(v) or inspect.isfunction(v)]
        for obj in objs:
            doc = inspect.getdoc(obj) or ""
            for para in re.split(r"\n\s*\n", doc):
                para = " ".join(para.split())
                if len(para) >= 120 and not para.startswith((">>>", "...")):
                    out.append((name, para))
    seen, unique = set(), []
    for title, text in out:
        if text not in seen:
            seen.add(text)
            unique.append((title, text))
    return unique[:limit]
