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


# One sentence per script (several without spaces: Chinese, Japanese, Thai), for the multilingual tests.
# The texts the GPU checks hold the product to the model card with (the gpu test tier, the real
# weights carried to a GPU machine: e5tools.device_model keeps their tokens): short and long,
# queries and passages, accents and CJK, and one past 512 tokens.
PARITY_TEXTS = [
    "how much protein should a female eat",
    "summit define",
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day.",
    "Definition of summit for English Language Learners: the highest point of a mountain.",
    "long words " * 200,
    "ünïcödé 東京 text",
]

MULTILINGUAL_SENTENCES = [
    "The quick brown fox jumps over the lazy dog, and then it naps in the afternoon sun.",
    "Der schnelle braune Fuchs springt über den faulen Hund; später schläft er im Garten.",
    "Быстрая коричневая лиса прыгает через ленивую собаку и убегает в лес.",
    "敏捷的棕色狐狸跳过了懒狗。我们今天去公园散步吧，天气很好。",  # no spaces
    "素早い茶色の狐がのろまな犬を飛び越える。今日はとても良い天気です。",  # no spaces
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจแล้ววิ่งหนีไป",  # Thai: no spaces
    "الثعلب البني السريع يقفز فوق الكلب الكسول ثم يركض بعيدا",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है और भाग जाती है",
    "Ο γρήγορος καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
]
