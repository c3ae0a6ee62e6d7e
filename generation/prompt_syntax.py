"""AUTOMATIC1111's prompt syntax, parsed without torch (the web validates prompts with it).

What people paste from civitai and A1111 infotexts:
- attention: `(word:1.3)` multiplies by 1.3, `(word)` by 1.1, `[word]` divides by 1.1; nesting
  multiplies; `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters;
- `BREAK` ends the current 75-token chunk (generation.prompt_embeds starts a new one);
- extra networks: `<lora:name:0.8>`, `<lora:name>` (weight 1), `<lora:name:0.8:0.5>` (text encoder
  0.8, UNet 0.5), `te=`/`unet=` named weights; `<lyco:...>` is an alias of `<lora:...>` as in A1111.

The reference is A1111's `modules/prompt_parser.py` (`parse_prompt_attention`) and
`modules/extra_networks.py` (`parse_prompt`); its documented examples are our tests. Deviations, on
purpose: a weight that A1111 would crash on (`(x:1.2.3)`) is literal text here and `check_prompt`
reports it; `BREAK` inside brackets is still a break (A1111 multiplies its marker and then encodes
the word "BREAK"); a lone backslash before another character vanishes, as in A1111. Not handled yet:
prompt editing `[a:b:0.5]` and alternation `[a|b]` (`check_prompt` reports them), `AND`, comment lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# The piece `parse_prompt_attention` returns for a BREAK (A1111's own marker).
BREAK = ("BREAK", -1.0)

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
# One lexical item of the attention grammar. A weight that merely looks numeric (`:1.2.3)`) does not
# match `weight`; its colon then falls to `colon` and stays literal text.
_ATTENTION_TOKEN = re.compile(
    rf"""
      \\(?P<escaped>[()\[\]\\])      # \( \) \[ \] \\ : the character itself
    | (?P<backslash>\\)              # any other backslash: dropped
    | (?P<open>[(\[])
    | :(?P<weight>{_NUMBER})\)        # closes a round bracket with an explicit weight
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.VERBOSE,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")
# What A1111's regex accepts as a weight before it calls float() on it (and crashes if that fails).
_WEIGHT_LIKE = re.compile(r":([+-]?[.\d]+)\)")

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = frozenset({"lora", "lyco"})


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) pieces with A1111's semantics.

    Unclosed brackets apply their multiplier to the rest of the prompt, unmatched closing brackets
    are literal text, neighbouring pieces of equal weight merge, an empty prompt is [("", 1.0)], and
    each BREAK is the piece `BREAK`. Weights multiply in the order the brackets close (so the floats
    equal A1111's to the last bit)."""
    pieces: list[list] = []  # [text, weight, is_break]
    round_opened: list[int] = []  # index into pieces where each open bracket started
    square_opened: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= multiplier

    for match in _ATTENTION_TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "escaped":
            pieces.append([match.group("escaped"), 1.0, False])
        elif kind == "backslash":
            continue
        elif kind == "open":
            (round_opened if match.group() == "(" else square_opened).append(len(pieces))
        elif kind == "weight" and round_opened:
            multiply_from(round_opened.pop(), float(match.group("weight")))
        elif kind == "close" and match.group() == ")" and round_opened:
            multiply_from(round_opened.pop(), ROUND_MULTIPLIER)
        elif kind == "close" and match.group() == "]" and square_opened:
            multiply_from(square_opened.pop(), SQUARE_MULTIPLIER)
        else:  # plain text, a lone colon, or a closing bracket with nothing open
            for i, part in enumerate(_BREAK_SPLIT.split(match.group())):
                if i:
                    pieces.append([BREAK[0], BREAK[1], True])
                pieces.append([part, 1.0, False])

    for start in round_opened:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_opened:
        multiply_from(start, SQUARE_MULTIPLIER)

    merged: list[list] = []
    for piece in pieces:
        if merged and not piece[2] and not merged[-1][2] and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w, _ in merged] or [("", 1.0)]


def is_break(piece: tuple[str, float]) -> bool:
    """True for the BREAK marker among `parse_prompt_attention`'s pieces."""
    return tuple(piece) == BREAK


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:name:weight>` of a prompt: `weight` is A1111's text-encoder multiplier and the
    UNet's too unless `unet_weight` says otherwise (`<lora:name:te:unet>` or `unet=`)."""

    name: str
    weight: float = 1.0
    unet_weight: float | None = None

    def __post_init__(self) -> None:
        if self.unet_weight is None:
            object.__setattr__(self, "unet_weight", self.weight)

    @property
    def tag(self) -> str:
        """The tag as A1111 writes it (what a PNG's `parameters` should carry)."""
        tail = "" if self.unet_weight == self.weight else f":{_format_weight(self.unet_weight)}"
        return f"<lora:{self.name}:{_format_weight(self.weight)}{tail}>"


def _format_weight(value: float) -> str:
    return f"{value:g}"


def _scan_extra_networks(text: str) -> tuple[str, list[LoraTag], list[str]]:
    """Remove every `<kind:args>` tag as A1111 does; return the text left, the LoRA tags and the
    problems (bad weights, empty names, kinds we cannot apply)."""
    tags: list[LoraTag] = []
    problems: list[str] = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2)
        whole = match.group()
        if kind.lower() not in LORA_KINDS:
            problems.append(f"{whole}: <{kind}:…> tags are not supported here (only <lora:name:weight>).")
            return ""
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in args.split(":"):
            key, eq, value = item.partition("=")
            if eq:
                named[key.strip()] = value
            else:
                positional.append(item)
        name = positional[0].strip() if positional else ""
        if not name:
            problems.append(f"{whole}: the LoRA has no name.")
            return ""
        try:
            weight = float(positional[1]) if len(positional) > 1 else 1.0
            weight = float(named.get("te", weight))
            unet = float(positional[2]) if len(positional) > 2 else weight
            unet = float(named.get("unet", unet))
        except ValueError:
            problems.append(f"{whole}: the LoRA weight is not a number (write e.g. <lora:{name}:0.8>).")
            return ""
        unknown = sorted(set(named) - {"te", "unet"}) + (["a fourth value"] if len(positional) > 3 else [])
        if unknown:
            problems.append(f"{whole}: {', '.join(unknown)} is not supported (name, weight and UNet weight only).")
            return ""
        if not all(abs(w) <= 100 for w in (weight, unet)) or weight != weight or unet != unet:
            problems.append(f"{whole}: the LoRA weight must be between -100 and 100.")
            return ""
        tags.append(LoraTag(name, weight, unet))
        return ""

    return _EXTRA_NETWORK.sub(take, text), tags, problems


def extract_lora_tags(text: str) -> tuple[str, list[LoraTag]]:
    """`("a <lora:ink:0.8> cat")` → `("a  cat", [LoraTag("ink", 0.8)])`: the prompt without its
    extra-network tags (all kinds are removed, as A1111 does) and the LoRA tags in order. Tags with
    problems are dropped here; `check_prompt` reports them."""
    remaining, tags, _ = _scan_extra_networks(text)
    return remaining, tags


_SCHEDULED = re.compile(rf"\[[^\[\]]*:\s*{_NUMBER}\s*\]")
_ALTERNATE = re.compile(r"\[[^\[\]]*\|[^\[\]]*\]")
_ESCAPE = re.compile(r"\\.")


def check_prompt(text: str) -> list[str]:
    """Human-readable problems that would make the prompt mean something other than its author
    intended (empty when it is fine). Unbalanced brackets and `(x:abc)` are not problems: A1111
    reads them (the latter as literal text) and so do we."""
    remaining, _, problems = _scan_extra_networks(text)
    for match in _WEIGHT_LIKE.finditer(remaining):
        if not re.fullmatch(_NUMBER, match.group(1)):
            problems.append(f"“{match.group(1)}” in “{match.group()}” is not a number (write e.g. (word:1.2)).")
    plain = _ESCAPE.sub("_", remaining)
    if _SCHEDULED.search(plain) or _ALTERNATE.search(plain):
        problems.append(
            "Prompt editing ([from:to:when], [word:when]) and alternation ([a|b]) are not supported; "
            "escape the brackets (\\[ \\]) to mean them literally."
        )
    return problems
