"""The demo model's tokenizer: the real CLIP BPE (the one SD 1.x uses), built offline.

OpenAI's CLIP ships its BPE as ``bpe_simple_vocab_16e6.txt.gz``; the open_clip_torch wheel carries the
same file. CLIP's published recipe turns it into a 49,408-entry vocabulary (256 byte symbols, the same
with ``</w>``, 48,894 merges, two special tokens) and 48,894 merge rules. The built files are committed
in the model folder, so nothing needs the wheel at run time.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
MAX_LENGTH = 77  # SD 1.x's context length


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """Build CLIP's vocabulary (token -> id) and merge rules ("a b" lines) from the gzipped BPE file."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # CLIP keeps the first 48,894 merges, skipping the header
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [b + "</w>" for b in byte_symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def find_bpe_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate ``bpe_simple_vocab_16e6.txt.gz``: ``explicit``, ``$IMAGESITE_CLIP_BPE``, an installed
    open_clip, or a wheel fetched with ``pip download --no-deps`` (PyPI only, 1.5 MB). ``None`` if none."""
    for cand in (explicit, os.environ.get("IMAGESITE_CLIP_BPE")):
        if cand and Path(cand).is_file():
            return Path(cand)
    try:  # an installed open_clip carries the file beside its tokenizer
        import open_clip  # type: ignore[import-not-found]
        p = Path(open_clip.__file__).parent / BPE_FILENAME
        if p.is_file():
            return p
    except ImportError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="imagesite-bpe-"))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        OPEN_CLIP_WHEEL, "-d", str(tmp)], check=True, timeout=300)
    except (subprocess.SubprocessError, OSError):
        return None
    for wheel in glob.glob(str(tmp / "*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            member = next((m for m in zf.namelist() if m.endswith(BPE_FILENAME)), None)
            if member:
                out = tmp / BPE_FILENAME
                out.write_bytes(zf.read(member))
                return out
    return None


def build_tokenizer(bpe_gz: Path) -> CLIPTokenizer:
    """A CLIPTokenizer (max length 77) from CLIP's BPE file; tokenizes exactly like OpenAI CLIP."""
    vocab, merges = vocab_and_merges(bpe_gz)
    # transformers 5: the constructor takes the vocab/merges objects; vocab_file= is silently ignored.
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_LENGTH)


def save_tokenizer(tok: CLIPTokenizer, out_dir: Path) -> None:
    """Save ``tok`` to ``out_dir`` as vocab.json + merges.txt + tokenizer_config.json: SD 1.x's layout,
    which transformers 4 and 5 both load. (transformers 5's save_pretrained writes only a 3.6 MB
    tokenizer.json; the two plain files hold the same in 1.5 MB, so tokenizer.json is dropped.)"""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    (out_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (out_dir / "tokenizer.json").unlink(missing_ok=True)


def load_or_build_tokenizer(fallback_dir: Path | None, bpe_gz: str | None = None) -> CLIPTokenizer:
    """Build the tokenizer from CLIP's BPE file if it can be found, else load the committed one from
    ``fallback_dir`` (the same files, built earlier). Raises ``FileNotFoundError`` if neither exists."""
    path = find_bpe_file(bpe_gz)
    if path is not None:
        return build_tokenizer(path)
    if fallback_dir is not None and (fallback_dir / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(fallback_dir)
    raise FileNotFoundError(f"no {BPE_FILENAME} found and no committed tokenizer to fall back on")
