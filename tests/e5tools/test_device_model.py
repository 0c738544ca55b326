"""The real weights that travel to a GPU machine: the packed folder encodes the texts it was packed for
as MiniLM does (up to float16 rounding of the weights), and a text with other tokens does not (the
rows it needs were zeroed), so the check can tell the two apart."""

import json
import tarfile

import numpy as np
import pytest

from e5tools import device_model
from e5tools.demo import offline_model_path
from e5tools.reference import reference_embeddings

KEPT = ["how much protein should a female eat", "summit define", "the highest point of a mountain"]
OTHER = ["zebrafish xylophone quokka marimba"]  # none of these words' pieces are in KEPT


def _embed(path: str, texts: list[str]) -> np.ndarray:
    return np.asarray(reference_embeddings(path, ["passage: " + t for t in texts], 512, device="cpu")[0])


@pytest.mark.rehearsal
def test_a_packed_model_is_minilm_for_its_texts_and_only_for_them(tmp_path, monkeypatch):
    monkeypatch.setattr(device_model, "_texts", lambda: list(KEPT))
    packed = tmp_path / "minilm.tar.xz"
    info = device_model.pack(str(packed), preset=0)
    assert 0 < info["rows_kept"] < 200 and info["rows"] == 30522
    assert info["bytes"] < 30 * 2**20  # the point: it fits beside Ray's bundle in one 64 MiB call
    with tarfile.open(packed) as tar:
        assert json.loads(tar.extractfile("minilm/slim.json").read())["rows_kept"] == info["rows_kept"]
    folder = device_model.unpack(str(packed), str(tmp_path / "unpacked"))

    full, slim = _embed(offline_model_path(), KEPT + OTHER), _embed(folder, KEPT + OTHER)
    cosines = (full * slim).sum(1)
    assert cosines[: len(KEPT)].min() > 0.9999  # float16 rounding only
    assert cosines[len(KEPT) :].max() < 0.99  # zeroed rows: another vector


@pytest.mark.unit
def test_the_command_line_refuses_what_it_does_not_know(capsys):
    assert device_model.main(["unpack", "only-one"]) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.unit
def test_the_offline_model_is_the_unpacked_folder_where_one_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("E5_EMBED_OFFLINE_MODEL", raising=False)
    assert offline_model_path().endswith("model") and offline_model_path() != str(tmp_path)  # the wheel's
    monkeypatch.setenv("E5_EMBED_OFFLINE_MODEL", str(tmp_path))  # a GPU machine: what `unpack` printed
    assert offline_model_path() == str(tmp_path)
