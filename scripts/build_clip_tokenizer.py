"""Build the CLIP tokenizer files (vocab.json, merges.txt) shipped as package data.

Why: SD checkpoints carry no tokenizer, and we cannot fetch one from a hub. The CLIP BPE merges ship
inside the `open_clip_torch` wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`); this script turns them into
the transformers `CLIPTokenizer` files. The result is byte-identical to openai/clip-vit-large-patch14's.

Usage (open_clip_torch only needs to be importable or given as a wheel/gz path; install it with --no-deps):
    python scripts/build_clip_tokenizer.py [PATH_TO_bpe_simple_vocab_16e6.txt.gz | WHEEL]
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import zipfile
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "src/sfumato/models/data/clip_tokenizer"
BPE_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table (as the BPE vocabulary uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_bpe_gz(source: str | None) -> bytes:
    if source is None:
        import open_clip  # optional, only for this build step

        return (Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(BPE_NAME)
    return Path(source).read_bytes()


def build(gz_bytes: bytes) -> tuple[dict[str, int], str]:
    lines = gzip.GzipFile(fileobj=io.BytesIO(gz_bytes)).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(pair) for pair in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {token: i for i, token in enumerate(vocab)}, merges_txt


def main() -> None:
    vocab, merges_txt = build(read_bpe_gz(sys.argv[1] if len(sys.argv) > 1 else None))
    assert len(vocab) == 49408, len(vocab)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT_DIR / "merges.txt").write_text(merges_txt, encoding="utf-8")
    print(f"wrote {OUT_DIR}")


if __name__ == "__main__":
    main()
