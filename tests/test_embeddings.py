"""Textual-inversion embeddings: every file format users have, A1111's naming, hashing and token lookup.

Files are built in tmp_path with the real widths (an embedding is a few vectors, so they stay tiny).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from sfumato.models.hashes import HashCache, addnet_hash
from sfumato.models.loader import clip_tokenizer
from sfumato.prompts.embeddings import Embedding, EmbeddingDatabase

SD1 = [("clip_l", 768)]
SD2 = [("open_clip", 1024)]
SDXL = [("clip_l", 768), ("open_clip", 1280)]


def vecs(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def write_a1111_pt(path: Path, vec: torch.Tensor, **extra: object) -> Path:
    """The layout A1111's Embedding.save writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": path.stem, "step": 120}
    torch.save({**data, "sd_checkpoint": "6ce0161689", "sd_checkpoint_name": "v1-5", **extra}, path)
    return path


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def only(db: EmbeddingDatabase) -> Embedding:
    assert not db.skipped, db.skipped
    (embedding,) = db.loaded
    return embedding


def test_a1111_pt(tmp_path: Path) -> None:
    vec = vecs(4, 768).requires_grad_()
    write_a1111_pt(tmp_path / "style.pt", vec)
    e = only(EmbeddingDatabase.load([tmp_path]))
    assert (e.name, e.vectors, e.family, e.step, e.sd_checkpoint_name) == ("style", 4, "sd1", 120, "v1-5")
    assert e.path == tmp_path / "style.pt"
    assert torch.equal(e.for_encoder("clip_l", 768), vec.detach())
    assert e.for_encoder("clip_l", 768).dtype == torch.float32


def test_emb_params_safetensors_and_half_precision(tmp_path: Path) -> None:
    vec = vecs(2, 1024).half()
    write_safetensors(tmp_path / "sd2thing.safetensors", {"emb_params": vec})
    e = only(EmbeddingDatabase.load([tmp_path]))
    assert (e.vectors, e.family, e.shape) == (2, "sd2", 1024)
    assert torch.equal(e.for_encoder("open_clip", 1024), vec.float())
    assert e.for_encoder("clip_l", 768) is None


def test_diffusers_concept_bin_with_one_vector(tmp_path: Path) -> None:
    """`learned_embeds.bin`: {token: tensor[dim]}; the stem, not the stored token, is the trigger."""
    vec = vecs(1, 768)[0]
    torch.save({"<cat-toy>": vec}, tmp_path / "cat-toy.bin")
    e = only(EmbeddingDatabase.load([tmp_path]))
    assert (e.name, e.vectors, e.family) == ("cat-toy", 1, "sd1")
    assert torch.equal(e.for_encoder("clip_l", 768), vec.unsqueeze(0))


def test_one_dimensional_string_to_param_is_one_vector(tmp_path: Path) -> None:
    write_a1111_pt(tmp_path / "one.pt", vecs(1, 768)[0])
    assert only(EmbeddingDatabase.load([tmp_path])).vectors == 1


def test_sdxl_clip_l_and_clip_g(tmp_path: Path) -> None:
    clip_l, clip_g = vecs(3, 768, 1), vecs(3, 1280, 2)
    write_safetensors(tmp_path / "negativeXL.safetensors", {"clip_l": clip_l, "clip_g": clip_g})
    e = only(EmbeddingDatabase.load([tmp_path]))
    assert (e.vectors, e.family, e.shape) == (3, "sdxl", 2048)
    assert torch.equal(e.for_encoder("clip_l", 768), clip_l)
    assert torch.equal(e.for_encoder("open_clip", 1280), clip_g)
    assert torch.equal(e.vectors_by_width[1280], clip_g)
    assert e.for_encoder("open_clip", 1024) is None
    assert e.fits(SDXL)
    # A1111 skips an SDXL embedding on SD1 (shape 2048 != 768) even though its clip_l half is 768 wide
    assert not e.fits(SD1)
    assert not e.fits(SD2)


@pytest.mark.parametrize(("width", "fits"), [(768, ["sd1"]), (1024, ["sd2"]), (1280, [])])
def test_a_width_that_does_not_fit(tmp_path: Path, width: int, fits: list[str]) -> None:
    write_safetensors(tmp_path / "plain.safetensors", {"emb_params": vecs(2, width)})
    e = only(EmbeddingDatabase.load([tmp_path]))
    assert [name for name, enc in (("sd1", SD1), ("sd2", SD2), ("sdxl", SDXL)) if e.fits(enc)] == fits
    assert (e.for_encoder("clip_l", 768) is None) == (width != 768)
    assert (e.for_encoder("open_clip", 1024) is None) == (width != 1024)
    with pytest.raises(ValueError, match="kind"):
        e.for_encoder("t5", width)


def test_subfolders_and_several_folders(tmp_path: Path) -> None:
    a1111, comfy = tmp_path / "embeddings", tmp_path / "models" / "embeddings"
    write_a1111_pt(a1111 / "top.pt", vecs(1, 768))
    write_a1111_pt(a1111 / "sdxl" / "deep" / "nested.pt", vecs(1, 768))
    write_safetensors(comfy / "comfy.safetensors", {"emb_params": vecs(1, 768)})
    (a1111 / "notes.txt").write_text("not an embedding, not a skip either")
    (a1111 / "top.preview.png").write_bytes(b"")
    db = EmbeddingDatabase.load([a1111, tmp_path / "missing", comfy, a1111])
    assert sorted(db.embeddings) == ["comfy", "nested", "top"]
    assert len(db.loaded) == 3  # a folder listed twice is read once
    assert db.skipped == {}


def test_duplicate_names_last_loaded_wins(tmp_path: Path) -> None:
    """A1111 registers files in os.walk order (a folder's files before its subfolders); a later file
    of the same name replaces the earlier one, unless it does not fit the model and is skipped."""
    first, second = tmp_path / "a", tmp_path / "b"
    top = write_a1111_pt(first / "dup.pt", vecs(1, 768))
    nested = write_safetensors(first / "sub" / "dup.safetensors", {"emb_params": vecs(2, 768)})
    later = write_safetensors(second / "dup.safetensors", {"clip_l": vecs(1, 768), "clip_g": vecs(1, 1280)})
    db = EmbeddingDatabase.load([first, second])
    assert [e.path for e in db.loaded] == [top, nested, later]
    assert db.embeddings["dup"].path == later
    assert db.usable(SD1)["dup"].path == nested
    assert db.usable(SDXL)["dup"].path == later
    assert db.usable(SD2) == {}
    notes = {row["path"]: row["note"] for row in db.rows()}
    assert notes[str(later)] == ""
    assert str(later) in notes[str(top)]


class _Payload:
    """A pickle that would create a folder when unpickled by a full unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_malicious_pickle_is_skipped_and_never_run(tmp_path: Path, suffix: str) -> None:
    folder, marker = tmp_path / "embeddings", tmp_path / "pwned"
    folder.mkdir()
    torch.save({"string_to_param": {"*": _Payload(marker)}, "name": "evil"}, folder / f"evil{suffix}")
    write_a1111_pt(folder / "good.pt", vecs(1, 768))
    db = EmbeddingDatabase.load([folder])
    assert not marker.exists()
    assert list(db.embeddings) == ["good"]
    assert "needs code" in db.skipped[str(folder / f"evil{suffix}")]


def test_broken_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    full = write_safetensors(tmp_path / "full.safetensors", {"emb_params": vecs(8, 768)})
    (tmp_path / "truncated.safetensors").write_bytes(full.read_bytes()[:-100])
    full.unlink()
    noise = bytes(hashlib.sha256(str(i).encode()).digest()[0] for i in range(4096))
    (tmp_path / "noise.safetensors").write_bytes(noise)
    (tmp_path / "noise.pt").write_bytes(noise)
    (tmp_path / "noise.png").write_bytes(noise)
    (tmp_path / "empty.pt").write_bytes(b"")
    write_a1111_pt(
        tmp_path / "two-terms.pt", vecs(1, 768), string_to_param={"*": vecs(1, 768), "x": vecs(1, 768)}
    )
    write_safetensors(tmp_path / "checkpoint.safetensors", {"a.weight": vecs(2, 2), "b.weight": vecs(2, 2)})
    torch.save({"step": 3, "name": "x"}, tmp_path / "no-tensor.pt")
    torch.save(vecs(2, 768), tmp_path / "bare-tensor.pt")
    torch.save({"emb": torch.ones(2, 768, dtype=torch.int64)}, tmp_path / "ints.pt")
    torch.save({"emb": torch.zeros(1, 2, 768)}, tmp_path / "three-d.pt")

    db = EmbeddingDatabase.load([tmp_path])
    assert db.loaded == []
    reasons = {Path(path).name: reason for path, reason in db.skipped.items()}
    assert set(reasons) == {
        "truncated.safetensors",
        "noise.safetensors",
        "noise.pt",
        "noise.png",
        "empty.pt",
        "two-terms.pt",
        "checkpoint.safetensors",
        "no-tensor.pt",
        "bare-tensor.pt",
        "ints.pt",
        "three-d.pt",
    }
    assert "truncated" in reasons["truncated.safetensors"]
    assert reasons["empty.pt"] == "empty file"
    assert "one term" in reasons["two-terms.pt"]
    assert "not an embedding" in reasons["checkpoint.safetensors"]
    assert "not an embedding" in reasons["bare-tensor.pt"]
    assert "[n, width]" in reasons["three-d.pt"]
    assert "floats" in reasons["ints.pt"]
    assert "corrupt" in reasons["noise.pt"]
    assert "needs code" not in reasons["noise.pt"]
    assert all(reason and str(tmp_path) not in reason for reason in reasons.values())
    skipped_rows = [row for row in db.rows() if row["note"].startswith("skipped: ")]
    assert len(skipped_rows) == len(reasons)


def test_png_embedding_from_a1111_training(tmp_path: Path) -> None:
    """A1111 saves a trained embedding's preview with the data as base64 JSON in `sd-ti-embedding`."""
    vec = vecs(2, 768)
    data = {"string_to_param": {"*": {"TORCHTENSOR": vec.tolist()}}, "name": "trained", "step": 500}
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    Image.new("RGB", (8, 8)).save(tmp_path / "trained-500.png", pnginfo=info)
    Image.new("RGB", (8, 8)).save(tmp_path / "just-a-picture.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "trained-500.preview.png", pnginfo=info)
    e = only(EmbeddingDatabase.load([tmp_path]))
    assert (e.name, e.vectors, e.step) == ("trained", 2, 500)
    assert torch.allclose(e.for_encoder("clip_l", 768), vec)


def test_shorthash_is_a1111_ti_hash(tmp_path: Path) -> None:
    """A1111: `hashes.sha256(filename, "textual_inversion/" + name)[0:12]`, the whole file's sha256
    (not the addnet hash of the tensor data that LoRA uses)."""
    st = write_safetensors(tmp_path / "a.safetensors", {"emb_params": vecs(2, 768)})
    pt = write_a1111_pt(tmp_path / "b.pt", vecs(2, 768))
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    db = EmbeddingDatabase.load([tmp_path], hash_cache=cache)
    for path in (st, pt):
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        e = next(e for e in db.loaded if e.path == path)
        assert (e.sha256, e.shorthash) == (expected, expected[:12])
    assert db.embeddings["a"].shorthash != addnet_hash(st)
    assert str(st.resolve()) in json.loads(cache.cache_file.read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer(False)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_lookup_finds_multi_token_names_longest_first(tmp_path: Path, tokenizer) -> None:
    for name in ("my-style", "my-style-v2", "badhandv4"):
        write_a1111_pt(tmp_path / f"{name}.pt", vecs(1, 768))
    table = EmbeddingDatabase.load([tmp_path]).lookup_table(tokenizer, SD1)
    tokens = ids(tokenizer, "a BadHandV4, my-style-v2 x my-style my")
    found = {}
    for position in range(len(tokens)):
        embedding, length = table.find_embedding_at_position(tokens, position)
        if embedding is not None:
            found[position] = (embedding.name, length)
    start_v2 = 6  # "a", then badhandv4's 4 tokens, then ","
    assert tokens[1:5] == ids(tokenizer, "badhandv4")
    assert found[1] == ("badhandv4", 4)
    assert found[start_v2] == ("my-style-v2", len(ids(tokenizer, "my-style-v2")))
    tail = len(tokens) - 1 - len(ids(tokenizer, "my-style"))
    assert found[tail] == ("my-style", 3)
    assert tokens[-1] not in found  # "my" alone is a prefix of names, not a name
    assert table.find_embedding_at_position(tokens, len(tokens) - 1) == (None, None)
    assert table.find_embedding_at_position(tokens, 2) == (None, None)  # inside a name


def test_lookup_is_cached_per_tokenizer_and_honours_fit(tmp_path: Path, tokenizer) -> None:
    write_a1111_pt(tmp_path / "sd1emb.pt", vecs(1, 768))
    write_safetensors(tmp_path / "xlemb.safetensors", {"clip_l": vecs(2, 768), "clip_g": vecs(2, 1280)})
    db = EmbeddingDatabase.load([tmp_path])
    sd1 = db.lookup_table(tokenizer, SD1)
    assert db.lookup_table(tokenizer, SD1) is sd1
    assert db.lookup_table(clip_tokenizer(True), SD1) is not sd1
    assert list(sd1.embeddings) == ["sd1emb"]
    assert list(db.lookup_table(tokenizer, SDXL).embeddings) == ["xlemb"]
    assert list(db.lookup_table(tokenizer).embeddings) == ["sd1emb", "xlemb"]
    tokens = ids(tokenizer, "xlemb")
    assert sd1.find_embedding_at_position(tokens, 0) == (None, None)


def test_rows(tmp_path: Path) -> None:
    pt = write_a1111_pt(tmp_path / "Zeta.pt", vecs(3, 768))
    write_safetensors(tmp_path / "alpha.safetensors", {"clip_l": vecs(1, 768), "clip_g": vecs(1, 1280)})
    (tmp_path / "broken.pt").write_bytes(b"not a pickle")
    rows = EmbeddingDatabase.load([tmp_path]).rows()
    assert [(r["name"], r["vectors"], r["family"]) for r in rows] == [
        ("alpha", 1, "sdxl"),
        ("Zeta", 3, "sd1"),
        ("broken", None, None),
    ]
    assert rows[1]["shorthash"] == hashlib.sha256(pt.read_bytes()).hexdigest()[:12]
    assert rows[1]["path"] == str(pt)
    assert rows[2]["note"].startswith("skipped: ")
