"""A1111 "infotext": the generation-parameters text stored in images and pasted between tools.

Layout (what AUTOMATIC1111's web UI writes and reads, see CONVENTIONS.md "Infotext")::

    <prompt, may span several lines>
    Negative prompt: <negative prompt, may span lines>      (left out when empty)
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ...

`parse` gives the same dict as A1111's ``parse_generation_parameters`` (modules/infotext_utils.py,
v1.10) with its default options, with these deliberate differences:

- every value is a ``str``: A1111 mixes in ints/bools for the defaults it fills in (``Hires resize-1``
  is ``0``, ``Masked area padding`` is ``32``, ``Refiner switch by sampling steps`` is ``False``); its
  paste code casts each value to the widget's type anyway, so we give the ``str()`` of the same value;
- old combined sampler names are split here ("DPM++ 2M Karras" -> ``Sampler`` "DPM++ 2M" and
  ``Schedule type`` "Karras"); A1111 does that split later, in its paste fields, and there turns a
  scheduler equal to the sampler's own default back into "Automatic", which we do not: the explicit
  name is what the image was made with;
- prompt styles are not extracted from the prompt (we have no styles database here);
- inputs on which A1111 raises (``First pass size`` with a non-number size, an emphasis weight such
  as ``(x:.)``) do not raise: that one derived field is just left out;
- the parameters line is scanned in linear time (A1111's regex is quadratic on long lines without
  separators, which lets a crafted image stall a server); the result is the same.

`format` writes exactly what A1111's ``create_infotext`` writes for the same values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping

__all__ = [
    "NEGATIVE_PROMPT_PREFIX",
    "SCHEDULER_NAMES",
    "format",
    "iter_params",
    "parse",
    "quote",
    "split_sampler_scheduler",
    "unquote",
]

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"
# The last line is the parameters line only when it holds at least this many `key: value` entries.
_MIN_PARAM_ENTRIES = 3

# A1111's schedulers (modules/sd_schedulers.py) as (label, name, aliases...), in A1111's order:
# the order matters when splitting a sampler name ending in one of them.
SCHEDULER_NAMES: tuple[tuple[str, ...], ...] = (
    ("Automatic", "automatic"),
    ("Uniform", "uniform"),
    ("Karras", "karras"),
    ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"),
    ("SGM Uniform", "sgm_uniform", "SGMUniform"),
    ("KL Optimal", "kl_optimal"),
    ("Align Your Steps", "align_your_steps"),
    ("Simple", "simple"),
    ("Normal", "normal"),
    ("DDIM", "ddim"),
    ("Beta", "beta"),
)

# A value that is a size ("512x768") is stored as "<key>-1"/"<key>-2" instead of "<key>".
_SIZE_VALUE = re.compile(r"^(\d+)x(\d+)$")

# Defaults A1111 fills in when the key is absent, in the order it does so (before the old hires-fix
# conversion), then those it fills in after it.
_DEFAULTS_BEFORE_HIRES_FIX = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", "32"),
)
_DEFAULTS_AFTER_HIRES_FIX = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", "0"),
    ("Schedule min sigma", "0"),
    ("Schedule rho", "0"),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


# --- quoting ---------------------------------------------------------------------------------------


def quote(value: object) -> str:
    """A value as A1111 writes it: JSON-quoted when it holds ``,`` ``:`` or a newline, else as is.

    Those three characters would otherwise end the entry (``,``), look like a key (``:``) or end the
    parameters line (newline).
    """
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(value, ensure_ascii=False, default=str)


def unquote(text: str) -> str:
    """Undo `quote`: a value in double quotes is read as a JSON string; anything else is kept."""
    if len(text) < 1 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


# --- the parameters line ---------------------------------------------------------------------------


def _is_word(ch: str) -> bool:
    """Python regex ``\\w`` for one character (letters and digits of any script, and ``_``)."""
    return ch.isalnum() or ch == "_"


def _is_key_char(ch: str) -> bool:
    return ch in " -/" or _is_word(ch)


def iter_params(line: str) -> Iterator[tuple[str, str]]:
    """Yield the raw ``(key, value)`` entries of a parameters line, in order, as A1111 finds them.

    A1111 scans with ``\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)`` (findall): a key
    is a word character followed by at least one word character, space, ``-`` or ``/``; the value is
    either a JSON-ish quoted string directly followed by ``,`` or the end, or everything up to the next
    ``,``. Text that does not fit is skipped. This is a hand-written scanner with the same result in
    linear time; values are returned still quoted (see `unquote`).
    """
    n = len(line)

    def at_end(j: int) -> bool:  # regex `$`: the end, or just before a final newline
        return j == n or (j == n - 1 and line[j] == "\n")

    pos = 0
    while pos < n:
        q = pos
        while q < n and line[q].isspace():
            q += 1
        if q == n:
            return
        if not _is_word(line[q]):
            pos = q + 1
            continue
        e = q + 1
        while e < n and _is_key_char(line[e]):
            e += 1
        if e - q < 2 or e == n or line[e] != ":":
            # Any start inside this key run fails the same way, except starts in its trailing spaces,
            # whose whitespace skip may run on past `e` (into a tab, say): retry from there.
            t = e
            while t > q + 1 and line[t - 1] == " ":
                t -= 1
            pos = max(pos + 1, t)
            continue
        key = line[q:e]
        v = e + 1
        while v < n and line[v].isspace():
            v += 1
        if v < n and line[v] == '"':
            i = v + 1
            while i < n:
                ch = line[i]
                if ch == "\\":
                    if i + 1 < n and line[i + 1] != "\n":
                        i += 2
                        continue
                    break
                if ch == '"':
                    break
                i += 1
            if i < n and line[i] == '"' and i > v + 1:
                if i + 1 < n and line[i + 1] == ",":
                    yield key, line[v : i + 1]
                    pos = i + 2
                    continue
                if at_end(i + 1):
                    yield key, line[v : i + 1]
                    pos = n
                    continue
        comma = line.find(",", v)
        if comma == -1:
            yield key, line[v:]
            pos = n
        else:
            yield key, line[v:comma]
            pos = comma + 1


# --- parse -----------------------------------------------------------------------------------------


def _append_line(text: str, line: str) -> str:
    # A1111 adds the newline only once something is there, so leading empty lines vanish.
    return line if text == "" else text + "\n" + line


def parse(text: str) -> dict[str, str]:
    """Parse an infotext into A1111's dict: "Prompt", "Negative prompt", the parameters, defaults.

    Never raises: whatever the text, the result is a dict of strings (an unparsable text is all
    prompt). Unknown keys are kept as they are.
    """
    if not isinstance(text, str):
        text = str(text)
    lines = text.strip().split("\n")
    entries = list(iter_params(lines[-1]))
    if len(entries) >= _MIN_PARAM_ENTRIES:
        lines.pop()
    else:
        entries = []

    prompt = ""
    negative = ""
    in_negative = False
    for raw_line in lines:
        line = raw_line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        if in_negative:
            negative = _append_line(negative, line)
        else:
            prompt = _append_line(prompt, line)

    res: dict[str, str] = {}
    for key, raw_value in entries:
        if not raw_value:
            continue  # A1111 fails on an empty value (and drops the entry)
        value = unquote(raw_value) if raw_value[0] == '"' and raw_value[-1] == '"' else raw_value
        size = _SIZE_VALUE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value

    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    _fill_defaults(res, prompt, negative)
    _split_combined_samplers(res)
    return res


def _fill_defaults(res: dict[str, str], prompt: str, negative: str) -> None:
    """Add the values A1111 assumes for keys an infotext leaves out (older versions wrote less)."""
    res.setdefault("Clip skip", "1")  # a missing Clip skip means the default, 1

    hypernet = res.get("Hypernet")
    if hypernet is not None:  # very old infotexts: the hypernetwork becomes a prompt tag
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"

    if "Hires resize-1" not in res:
        res["Hires resize-1"] = "0"
        res["Hires resize-2"] = "0"
    for key, value in _DEFAULTS_BEFORE_HIRES_FIX:
        res.setdefault(key, value)

    _restore_old_hires_fix(res)

    for key, value in _DEFAULTS_AFTER_HIRES_FIX:
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = "False"

    if "Emphasis" not in res and (_uses_emphasis(prompt) or _uses_emphasis(negative)):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", "False")

    _version_backcompat(res)


def _restore_old_hires_fix(res: dict[str, str]) -> None:
    """Infotexts from before 2023-01 wrote the final size plus "First pass size"; turn that into
    today's base size + "Hires resize" (0x0 meant "about 512x512 pixels in the final aspect")."""
    if "First pass size-1" not in res or "First pass size-2" not in res:
        return
    try:
        first_w, first_h = int(res["First pass size-1"]), int(res["First pass size-2"])
        width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
        if first_w == 0 or first_h == 0:
            scale = math.sqrt(512 * 512 / (width * height))
            first_w = math.ceil(scale * width / 64) * 64
            first_h = math.ceil(scale * height / 64) * 64
    except (ValueError, ZeroDivisionError, OverflowError):
        return  # A1111 raises here; we keep the sizes as written
    res["Size-1"], res["Size-2"] = str(first_w), str(first_h)
    res["Hires resize-1"], res["Hires resize-2"] = str(width), str(height)


def split_sampler_scheduler(sampler: str) -> tuple[str, str | None]:
    """Split an old combined sampler name: "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras").

    Before v1.9 A1111 had one sampler entry per scheduler; a name ending in a scheduler's label, name
    or alias loses that suffix, checked in A1111's scheduler order. Returns the scheduler label, or
    None when the name has no such suffix.
    """
    found = None
    for label, *others in SCHEDULER_NAMES:
        for option in (label, *others):
            if sampler.endswith(" " + option):
                sampler = sampler[: -(len(option) + 1)]
                found = label
                break
    return sampler, found


def _split_combined_samplers(res: dict[str, str]) -> None:
    for sampler_key, scheduler_key in (
        ("Sampler", "Schedule type"),
        ("Hires sampler", "Hires schedule type"),
    ):
        value = res.get(sampler_key)
        if value is None:
            continue
        sampler, scheduler = split_sampler_scheduler(value)
        if scheduler is not None:
            res[sampler_key] = sampler
            res[scheduler_key] = scheduler


# --- emphasis: does the prompt use (x), [x] or (x:w)? ----------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]            # escaped bracket or backslash
    | \\                    # a lone backslash
    | [(\[]                 # opening bracket
    | :\s*([+-]?[.\d]+)\s*\)  # explicit weight closing a round bracket
    | [)\]]                 # closing bracket
    | [^\\()\[\]:]+         # plain text
    | :
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# Beyond this many bracket x chunk multiplications the exact emulation is too slow to be worth it.
_EMPHASIS_WORK_LIMIT = 2_000_000


def _uses_emphasis(text: str) -> bool:
    """Whether A1111's prompt-attention parser gives some chunk a weight other than 1.

    A1111 then records "Emphasis: Original" for infotexts that do not name the emphasis mode.
    Emulates its float arithmetic so that e.g. ``([x])`` gives the same answer.
    """
    chunks: list[list] = []  # [text, weight]
    round_open: list[int] = []
    square_open: list[int] = []
    work = 0

    def multiply(start: int, factor: float) -> None:
        nonlocal work
        work += len(chunks) - start
        if work > _EMPHASIS_WORK_LIMIT:
            raise OverflowError
        for chunk in chunks[start:]:
            chunk[1] *= factor

    try:
        for m in _ATTENTION_TOKEN.finditer(text):
            token, weight = m.group(0), m.group(1)
            if token.startswith("\\"):
                chunks.append([token[1:], 1.0])
            elif token == "(":
                round_open.append(len(chunks))
            elif token == "[":
                square_open.append(len(chunks))
            elif weight is not None and round_open:
                multiply(round_open.pop(), float(weight))
            elif token == ")" and round_open:
                multiply(round_open.pop(), 1.1)
            elif token == "]" and square_open:
                multiply(square_open.pop(), 1 / 1.1)
            else:
                for i, part in enumerate(_BREAK.split(token)):
                    if i > 0:
                        chunks.append(["BREAK", -1])
                    chunks.append([part, 1.0])
        for start in round_open:
            multiply(start, 1.1)
        for start in square_open:
            multiply(start, 1 / 1.1)
    except ValueError:
        return False  # a weight like "." that A1111 cannot read either (it raises)
    except OverflowError:
        return any(ch in text for ch in "([")  # pathological nesting: approximate

    # A1111 merges neighbours of equal weight before its check (a merged "BREAK" is no longer one).
    merged: list[tuple[list[str], float]] = []
    for part, weight in chunks:
        if merged and merged[-1][1] == weight:
            merged[-1][0].append(part)
        else:
            merged.append(([part], weight))
    return any(weight != 1.0 and parts != ["BREAK"] for parts, weight in merged)


# --- version-dependent compatibility flags ---------------------------------------------------------

_VERSION = re.compile(
    r"""^v?(?P<release>\d+(?:\.\d+)*)
    (?:[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>\d+)?)?
    (?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d+)?)?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d+)?)?
    (?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$""",
    re.VERBOSE | re.IGNORECASE | re.ASCII,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_LOWEST, _HIGHEST = (0,), (2,)


def _version_key(text: str | None) -> tuple | None:
    """A sortable key for A1111's "Version" value (PEP 440 ordering, as A1111 uses `packaging`).

    Like A1111, "v1.7.0-225-gabcdef" is cut to "v1.7.0-225" (225 commits after 1.7.0, a post-release);
    strings that are no PEP 440 version (Forge's "f2.0.1v1.10.1-...") give None.
    """
    if text is None:
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    v = _VERSION.match(text.strip())
    if v is None:
        return None
    release = [int(x) for x in v["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    has_post = v["post_n1"] is not None or v["post_l"] is not None
    has_dev = v["dev_l"] is not None
    if v["pre_l"] is not None:
        pre: tuple = (1, _PRE_RANK[v["pre_l"].lower()], int(v["pre_n"] or 0))
    elif has_dev and not has_post:
        pre = _LOWEST  # 1.0.dev1 sorts before 1.0a1
    else:
        pre = _HIGHEST
    post = (1, int(v["post_n1"] or v["post_n2"] or 0)) if has_post else _LOWEST
    dev = (1, int(v["dev_n"] or 0)) if has_dev else _HIGHEST
    return (tuple(release), pre, post, dev)


_V160 = _version_key("1.6.0")
_V170_TSNR = _version_key("v1.7.0-225")
_V180 = _version_key("1.8.0")


def _version_backcompat(res: dict[str, str]) -> None:
    """Flags A1111 turns on to reproduce images made by older versions (its auto_backcompat)."""
    ver = _version_key(res.get("Version"))
    if ver is None:
        return
    if ver < _V160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = "True"
    if ver < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = "True"
    if ver < _V170_TSNR:
        res["Downcast alphas_cumprod"] = "True"
    if ver < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = "True"


# --- format ----------------------------------------------------------------------------------------


def format(prompt: str, negative_prompt: str = "", params: Mapping[str, object] | None = None) -> str:
    """Write an infotext exactly as A1111's ``create_infotext`` does.

    Entries are joined by ", "; None values are dropped; a value equal to its key is written as the
    bare key (A1111's convention for flags); values holding ``,`` ``:`` or a newline are JSON-quoted.
    The "Negative prompt:" line is left out when the negative prompt is empty.
    """
    entries = [
        key if key == value else f"{key}: {quote(value)}"
        for key, value in (params or {}).items()
        if value is not None
    ]
    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{', '.join(entries)}".strip()
