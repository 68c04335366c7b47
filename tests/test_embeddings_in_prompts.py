"""Textual-inversion embeddings used in prompts: same conditioning as diffusers' own loader, in the
infotext as A1111 writes it, and listed by the CLI."""

from __future__ import annotations

import copy

import diffusers
import pytest
import torch
from PIL import Image

from sfumato import infotext
from sfumato.cli import main
from sfumato.models.loader import load_single_file
from sfumato.prompts.embeddings import EmbeddingDatabase
from sfumato.prompts.encode import PromptEncoder, encoder_widths

PROMPT = "a (mystyle:1.0) cat, red"


def write_a1111_embedding(path, vectors: torch.Tensor) -> None:
    torch.save({"string_to_param": {"*": vectors}, "name": path.stem, "step": 100}, path)


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("vectors", [1, 3])
def test_embedding_conditioning_matches_diffusers_textual_inversion(sd1, tmp_path, vectors):
    path = tmp_path / "mystyle.pt"
    write_a1111_embedding(path, torch.randn(vectors, 32, generator=torch.Generator().manual_seed(vectors)))
    database = EmbeddingDatabase.load([tmp_path])
    widths = encoder_widths(sd1)
    encoder = PromptEncoder(
        sd1, lookup_for=lambda tok: database.lookup_table(tok, widths).find_embedding_at_position
    )
    ours = encoder(PROMPT).cross
    assert set(encoder.used_embeddings) == {"mystyle"}

    # Reference: diffusers adds the vectors as new tokens of a copy of the encoder and tokenizer.
    pipe = diffusers.StableDiffusionPipeline(
        vae=sd1.vae,
        text_encoder=copy.deepcopy(sd1.text_encoders[0]),
        tokenizer=copy.deepcopy(sd1.tokenizers[0]),
        unet=sd1.unet,
        scheduler=diffusers.EulerDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_textual_inversion(str(path), token="mystyle")
    reference, _ = pipe.encode_prompt("a mystyle cat, red", "cpu", 1, False)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, PromptEncoder(sd1)(PROMPT).cross)


def test_an_embedding_for_another_family_stays_a_plain_word(sd1, tmp_path):
    write_a1111_embedding(tmp_path / "mystyle.pt", torch.randn(2, 768))  # real SD1 width, not the tiny one
    database = EmbeddingDatabase.load([tmp_path])
    widths = encoder_widths(sd1)
    encoder = PromptEncoder(
        sd1, lookup_for=lambda tok: database.lookup_table(tok, widths).find_embedding_at_position
    )
    assert torch.equal(encoder(PROMPT).cross, PromptEncoder(sd1)(PROMPT).cross)
    assert encoder.used_embeddings == {}


def test_txt2img_records_ti_hashes_and_lists_embeddings(data_dir, capsys):
    (data_dir / "embeddings").mkdir()
    write_a1111_embedding(data_dir / "embeddings" / "mystyle.pt", torch.randn(2, 32))
    (data_dir / "embeddings" / "broken.safetensors").write_bytes(b"nope")
    args = ["--data-dir", str(data_dir), "--steps", "1", "--width", "64", "--height", "64", "--seed", "1"]
    assert main(["txt2img", "a mystyle cat", *args]) == 0
    path = capsys.readouterr().out.strip()
    with Image.open(path) as image:
        params = infotext.parse(image.text["parameters"])
    database = EmbeddingDatabase.load([data_dir / "embeddings"])
    assert params["TI hashes"] == f"mystyle: {database.embeddings['mystyle'].shorthash}"
    assert main(["embeddings", "list", "--data-dir", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "vectors", "family", "hash"]
    assert any(line.startswith("mystyle") and " 2 " in line for line in lines)
    assert any(line.startswith("broken") and "skipped" in line for line in lines)


def _write(fmt: str, folder, widths: dict[str, int]):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(7)
    if fmt == "a1111-pt":
        write_a1111_embedding(folder / "mystyle.pt", torch.randn(2, widths["single"], generator=gen))
    elif fmt == "emb_params":
        save_file(
            {"emb_params": torch.randn(2, widths["single"], generator=gen)},
            str(folder / "mystyle.safetensors"),
        )
    elif fmt == "diffusers-bin":
        torch.save({"<mystyle>": torch.randn(widths["single"], generator=gen)}, folder / "mystyle.bin")
    else:  # SDXL: both encoders
        tensors = {
            "clip_l": torch.randn(2, widths["clip_l"], generator=gen),
            "clip_g": torch.randn(2, widths["clip_g"], generator=gen),
        }
        save_file(tensors, str(folder / "mystyle.safetensors"))


@pytest.mark.parametrize(
    ("variant", "fmt"),
    [
        ("sd1", "a1111-pt"),
        ("sd1", "emb_params"),
        ("sd1", "diffusers-bin"),
        ("sd2-v", "a1111-pt"),
        ("sdxl", "sdxl"),
    ],
)
def test_each_embedding_format_is_used_and_changes_the_conditioning(tiny_models, tmp_path, variant, fmt):
    model = load_single_file(
        tiny_models[variant][0], device=torch.device("cpu"), dtype=torch.float32, prediction="epsilon"
    )
    widths = dict(encoder_widths(model))
    _write(
        fmt,
        tmp_path,
        {
            "single": next(iter(widths.values())),
            "clip_l": widths.get("clip_l"),
            "clip_g": widths.get("open_clip"),
        },
    )
    database = EmbeddingDatabase.load([tmp_path])
    encoder = PromptEncoder(
        model,
        lookup_for=lambda tok: database.lookup_table(tok, encoder_widths(model)).find_embedding_at_position,
    )
    assert not torch.allclose(encoder("a mystyle cat").cross, PromptEncoder(model)("a mystyle cat").cross)
    assert set(encoder.used_embeddings) == {"mystyle"}


def test_an_embedding_for_another_family_is_noted_not_fatal(data_dir, capsys):
    (data_dir / "embeddings").mkdir()
    write_a1111_embedding(data_dir / "embeddings" / "bigstyle.pt", torch.randn(1, 768))
    args = ["--data-dir", str(data_dir), "--steps", "1", "--width", "64", "--height", "64"]
    assert main(["txt2img", "a bigstyle cat", *args]) == 0
    err = capsys.readouterr().err
    assert (
        "embedding 'bigstyle' not used: its vectors are 768 wide, this model's text encoders take 32" in err
    )
