"""What licence a file has, and which licence family it belongs to.

The recorded-music catalog comes from Debian's free-music packages (issue 22); each says under
which licence its files are distributed in ``/usr/share/doc/<package>/copyright``. A track
is only worth suggesting if the person can use it, so every track carries its licence from
that file to the suggestion, and serving filters on it (``deccm.serve``):

* :func:`parse_dep5` reads machine-readable copyright files (copyright-format 1.0, "DEP-5");
  :meth:`Copyright.licence_for` answers for one file, the last matching ``Files`` paragraph
  winning, as the format says.
* :func:`recognise_freeform` reads the older free-form files with a few documented keyword
  rules, and names a licence only when exactly one is clearly stated.
* :func:`package_licence` is either one, for one installed file of a package.
* :func:`family`, :data:`FILTERS`, :func:`allowed`: which licences a serving filter lets
  through. A track of unknown licence is never served unless asked for by name
  (``include-unknown``).
* :func:`attribution`: the one-line credit shown with a suggestion.

Installed paths, not source paths: DEP-5 patterns are relative to the *source* tree, but
packages install files elsewhere (``music/x.ogg`` of hyperrogue's source becomes
``/usr/share/hyperrogue/music/x.ogg``). Our adaptation: a pattern matches a path when it
matches the path or any suffix of it that starts at a path component boundary
(``music/x.ogg``, ``x.ogg``). ``Files: *`` still matches everything, and a later, more
specific paragraph still overrides it.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc")


@dataclass(frozen=True)
class Grant:
    """The licence of one file and how we know it."""

    licence: str | None  # the short name as written ("GPL-2+", "CC-BY-SA-3.0", "GPL-2+ and MIT"); None = unknown
    copyright: str  # the copyright statement, one line ("" if none)
    basis: str  # where the answer comes from, e.g. "DEP-5 Files: music/x.ogg", "no copyright file"


class NotDep5Error(ValueError):
    """The text is not a machine-readable copyright file; read it with :func:`recognise_freeform` instead."""


@dataclass(frozen=True)
class FilesParagraph:
    """One ``Files`` paragraph: its glob patterns and what they grant."""

    patterns: tuple[str, ...]
    copyright: str
    licence: str | None  # None when the paragraph has no License field
    line: int  # 1-based line of its Files field


@dataclass(frozen=True)
class Copyright:
    """A parsed DEP-5 file: its Files paragraphs in order, and the texts of its standalone License paragraphs."""

    format: str
    files: tuple[FilesParagraph, ...]
    licences: dict[str, str]  # short name -> licence text, from License paragraphs without Files

    def licence_for(self, path: str) -> Grant | None:
        """The grant of the last Files paragraph matching ``path`` (installed paths match by suffix, see the module
        doc); None when no paragraph matches."""
        for para in reversed(self.files):
            hit = next((p for p in para.patterns if _matches(p, path)), None)
            if hit is not None:
                basis = f"DEP-5 Files: {hit}" + ("" if para.licence else " (the paragraph has no License field)")
                return Grant(para.licence, para.copyright, basis)
        return None


# --------------------------------------------------------------------------- DEP-5


def parse_dep5(text: str) -> Copyright:
    """Parse a copyright-format 1.0 file.

    Paragraphs are separated by blank lines; a line starting with whitespace continues the
    field above it (a lone ``.`` is an empty line of text). ``Files`` is a whitespace-
    separated list of patterns over any number of lines; ``Copyright`` lines (one statement
    each) are joined with "; "; a ``License`` field's first line is the short name and the
    rest its text. A paragraph with ``License`` and no ``Files`` only defines a text.

    Raises :class:`NotDep5Error` when the first paragraph has no ``Format:`` naming
    copyright-format (so the caller can fall back to :func:`recognise_freeform`), and
    ``ValueError`` naming the line for a file that claims the format but breaks it.
    """
    first = re.split(r"\n[ \t]*\n", text.strip("\n"), maxsplit=1)[0]
    fmt = re.search(r"^format:[ \t]*(\S*)", first, re.I | re.M)
    if fmt is None or "copyright-format" not in fmt.group(1):
        raise NotDep5Error("not a machine-readable copyright file: its first paragraph has no 'Format:' field naming "
                           "copyright-format (https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/)")
    files, licences = [], {}
    for fields in _paragraphs(text)[1:]:
        name, licence_text = _licence(fields["license"][1]) if "license" in fields else (None, "")
        if "files" in fields:
            line, value = fields["files"]
            patterns = tuple(value.split())
            if not patterns:
                raise ValueError(f"line {line}: a Files field with no pattern")
            for p in patterns:
                try:
                    _glob(p)
                except ValueError as e:
                    raise ValueError(f"line {line}: {e}") from None
            files.append(FilesParagraph(patterns, _copyright(fields.get("copyright", (0, ""))[1]), name, line))
        elif name is not None:
            licences[name] = licence_text
    return Copyright(fmt.group(1), tuple(files), licences)


def _paragraphs(text: str) -> list[dict[str, tuple[int, str]]]:
    """deb822 paragraphs: lower-cased field name -> (line, value with its continuation lines)."""
    out: list[dict[str, tuple[int, str]]] = []
    fields: dict[str, tuple[int, str]] = {}
    name = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if fields:
                out.append(fields)
            fields, name = {}, None
        elif line[0] in " \t":
            if name is None:
                raise ValueError(f"line {n}: a continuation line (it starts with whitespace) with no field above it")
            fields[name] = (fields[name][0], f"{fields[name][1]}\n{line}")
        elif not line.startswith("#"):  # deb822 comment lines carry nothing
            key, sep, value = line.partition(":")
            if not sep or not key or key != key.strip() or " " in key:
                raise ValueError(f"line {n}: {line[:60]!r} is neither 'Field: value' nor a continuation line")
            name = key.lower()
            fields[name] = (n, value)
    if fields:
        out.append(fields)
    return out


def _copyright(value: str) -> str:
    """One line: each statement (a line of the field) whitespace-normalised, joined with '; '."""
    lines = (" ".join(line.split()) for line in value.splitlines())
    return "; ".join(line for line in lines if line and line != ".")


def _licence(value: str) -> tuple[str | None, str]:
    """(short name or None when the first line is empty, text)."""
    first, _, rest = value.partition("\n")
    text = "\n".join("" if line.strip() == "." else line[1:] for line in rest.splitlines())
    return " ".join(first.split()) or None, text


@functools.lru_cache(maxsize=None)
def _glob(pattern: str) -> re.Pattern[str]:
    """A DEP-5 pattern as a regex: ``*`` any characters (``/`` included), ``?`` one, ``\\*``, ``\\?``, ``\\\\`` literal."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if nxt not in ("*", "?", "\\"):
                got = repr(nxt) if nxt else "the end of the pattern"
                raise ValueError(f"pattern {pattern!r}: a backslash must be followed by *, ? or \\, not {got} "
                                 "(DEP-5 escapes)")
            out.append(re.escape(nxt))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _matches(pattern: str, path: str) -> bool:
    """Whether ``pattern`` matches ``path`` or one of its suffixes starting at a component boundary (module doc)."""
    parts = [p for p in path.split("/") if p]
    rx = _glob(pattern)
    return any(rx.fullmatch("/".join(parts[i:])) for i in range(len(parts)))


# --------------------------------------------------------------------------- free-form files

_SEPARATOR = re.compile(r"^\s*-{3,}\s*$", re.M)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_GNU = re.compile(r"GNU (Affero |Lesser |Library )?General Public License", re.I)
_GNU_KIND = {"affero ": "AGPL", "lesser ": "LGPL", "library ": "LGPL", "": "GPL"}
_CC_NAME = re.compile(r"Attribution((?:[- ](?:NonCommercial|NoDerivs|NoDerivatives|ShareAlike))*) (\d\.\d)", re.I)
_CC_ELEMENTS = re.compile(r'"License Elements" means [^.]*?this License: (Attribution(?:, ?[A-Za-z-]+)*)\.', re.I)
_CC_CODE = {"noncommercial": "NC", "noderivs": "ND", "noderivatives": "ND", "sharealike": "SA"}
_COPYRIGHT_LINE = re.compile(r"(?:copyright\s*(?:\(c\)|©)|©).*", re.I)


def recognise_freeform(text: str) -> tuple[str | None, str]:
    """(licence short name or None, copyright line) of a free-form copyright file.

    Rules, in order:

    1. Only the first section counts: Debian's free-form files put notes about particular
       sub-paths (``src/sdl_ttf/ is …``) after a line of dashes. Paragraphs about the
       "Debian packaging" are dropped too: they cover ``debian/``, not the installed files.
    2. Licences are recognised by their long names only: "GNU [Lesser|Library|Affero] General
       Public License" (the version from "version N" in the same sentence, "+" when it also
       says "any later version" or "or (at your option)"); Creative Commons by its title
       ("Attribution-ShareAlike 3.0") or, for the 3.0 legal code without a title, by "CCPL"
       with its "License Elements" and the 3.0 term "Adaptation"; "Permission is hereby
       granted, free of charge" (MIT); "Redistribution and use in source and binary forms"
       (BSD-2/3-Clause); "Apache License, Version 2.0"; CC0; "placed in / released into the
       public domain".
    3. A licence is claimed only when exactly one is found. A mention without a version
       (the GPL's "a copy of the GNU General Public License") counts only beside a versioned
       mention of the same licence; otherwise the answer is None.

    The copyright line is the first ``Copyright (C) …`` or ``©`` statement, from that mark on.
    """
    main = _SEPARATOR.split(text, maxsplit=1)[0]
    kept = [p for p in re.split(r"\n\s*\n", main) if "debian packaging" not in " ".join(p.lower().split())]
    flat = " ".join(" ".join(kept).split())
    found: dict[str, set[str | None]] = {}
    for kind, name in _mentions(flat):
        found.setdefault(kind, set()).add(name)
    named = {kind: {n for n in names if n} for kind, names in found.items()}
    licence = None
    if len(named) == 1:
        (names,) = named.values()
        licence = next(iter(names)) if len(names) == 1 else None
    m = _COPYRIGHT_LINE.search("\n".join(kept))
    return licence, " ".join(m.group(0).split()) if m else ""


def _mentions(flat: str) -> list[tuple[str, str | None]]:
    """(licence kind, full short name or None when the version is not stated) for each licence mention in ``flat``."""
    out: list[tuple[str, str | None]] = []
    for m in _GNU.finditer(flat):
        kind = _GNU_KIND[(m.group(1) or "").lower()]
        starts = [e.end() for e in _SENTENCE_END.finditer(flat, 0, m.start())]
        end = _SENTENCE_END.search(flat, m.end())
        sentence = flat[starts[-1] if starts else 0:end.start() if end else len(flat)]
        version = re.search(r"version (\d+(?:\.\d+)?)", sentence, re.I)
        later = re.search(r"any later version|or \(at your option\)", sentence, re.I)
        out.append((kind, f"{kind}-{version.group(1)}{'+' if later else ''}" if version else None))
    if re.search(r"Creative Commons", flat, re.I):
        for m in _CC_NAME.finditer(flat):
            codes = "".join(f"-{_CC_CODE[e.lower()]}" for e in re.findall(r"[A-Za-z]+", m.group(1)))
            out.append(("CC", f"CC-BY{codes}-{m.group(2)}"))
        elements = _CC_ELEMENTS.search(flat)
        if elements and "CCPL" in flat:
            codes = [_CC_CODE.get(e.strip().lower()) for e in elements.group(1).split(",")[1:]]
            known = None not in codes and '"Adaptation" means' in flat
            out.append(("CC", f"CC-BY{''.join(f'-{c}' for c in codes)}-3.0" if known else None))
    for pattern, kind, name in (
            (r"\bCC0\b|Creative Commons Zero", "CC0", "CC0-1.0"),
            (r"(?:placed|released|dedicated) (?:in|into|to) the public domain", "public-domain", "public-domain"),
            (r"Permission is hereby granted, free of charge", "MIT", "MIT"),
            (r"Apache License,? Version 2\.0", "Apache", "Apache-2.0")):
        if re.search(pattern, flat, re.I):
            out.append((kind, name))
    if re.search(r"Redistribution and use in source and binary forms", flat, re.I):
        out.append(("BSD", "BSD-3-Clause" if re.search(r"Neither the name", flat, re.I) else "BSD-2-Clause"))
    return out


def package_licence(package: str, installed_path: str, doc_root: Path = DOC_ROOT) -> Grant:
    """The licence of ``installed_path``, a file of Debian package ``package``, from ``<doc_root>/<package>/copyright``:
    DEP-5 when the file is machine-readable, else :func:`recognise_freeform` (which covers the whole package)."""
    path = Path(doc_root) / package / "copyright"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return Grant(None, "", "no copyright file")
    try:
        grant = parse_dep5(text).licence_for(installed_path)
    except NotDep5Error:
        licence, holder = recognise_freeform(text)
        return Grant(licence, holder, f"free-form copyright file: recognised {licence}" if licence
                     else "free-form copyright file: no single licence recognised")
    except ValueError as e:
        raise ValueError(f"{path}: a malformed machine-readable copyright file ({e}). Fix: state this package's track "
                         "licences by hand in tracks.csv, and report the file to the package.") from None
    return grant or Grant(None, "", f"DEP-5: no Files paragraph matches {installed_path}")


# --------------------------------------------------------------------------- families and filters

FAMILIES = ("public-domain", "cc-by", "gpl", "permissive", "other", "unknown")
INCLUDE_UNKNOWN = "include-unknown"
FILTERS: dict[str, str] = {
    "any": "every known licence (a track of unknown licence is never served)",
    "public-domain": "public domain and CC0",
    "cc-by": "CC-BY family (CC-BY, CC-BY-SA; not NonCommercial or NoDerivs)",
    "gpl": "GPL family (GPL, LGPL, AGPL, any version, with exceptions)",
    "permissive": "permissive (MIT/Expat, BSD, ISC, zlib, Apache)",
    INCLUDE_UNKNOWN: "every track, those of unknown licence too (benchmarks and private catalogs without licences)",
}


def family(licence: str | None) -> str:
    """The family (one of :data:`FAMILIES`) of a licence short name.

    CC-BY-NC and CC-BY-ND are "other": NonCommercial is not free, and a NoDerivs track cannot
    be synchronised with a video (CC 3.0 calls that an Adaptation). A combination ("GPL-2+ and
    MIT", "CC-BY-SA-3.0 or GPL-2+") is in a family only when all its parts are, else "other".
    The demo corpus's "work: public domain; encoding: …" is public-domain.
    """
    name = " ".join((licence or "").split())
    if not name or name.lower() == "unknown":
        return "unknown"
    if name.lower().startswith("work: public domain"):
        return "public-domain"
    kinds = {_family_of_one(part) for part in re.split(r",?\s+(?:and|or)\s+", name, flags=re.I)}
    return kinds.pop() if len(kinds) == 1 else "other"


def _family_of_one(name: str) -> str:
    low = name.lower().replace(" ", "-")
    if re.match(r"(public-domain|pd(?![a-z])|cc0)", low):
        return "public-domain"
    cc = re.match(r"cc-by((?:-(?:sa|nc|nd))*)(?![a-z])", low)
    if cc:
        return "other" if re.search(r"-n[cd]", cc.group(1)) else "cc-by"
    if re.match(r"[al]?gpl(?:v?\d|(?![a-z]))", low):
        return "gpl"
    if re.match(r"(mit|expat|bsd|isc|zlib|apache)(?![a-z])", low):
        return "permissive"
    return "other"


def check_filter(filter_: str) -> str:
    """``filter_`` if it names a licence filter (a key of :data:`FILTERS`), else a ValueError naming the choices."""
    if filter_ not in FILTERS:
        raise ValueError(f"licence filter {filter_!r} is unknown. Fix: one of {', '.join(FILTERS)}.")
    return filter_


def allowed(licence: str | None, filter_: str = "any") -> bool:
    """Whether a track of ``licence`` may be served under filter ``filter_`` (a key of :data:`FILTERS`).

    A licence of unknown family is allowed only by ``include-unknown``, the explicit opt-in;
    "any" allows every known licence; every other filter allows its own family only.
    """
    if check_filter(filter_) == INCLUDE_UNKNOWN:
        return True
    fam = family(licence)
    return fam != "unknown" and filter_ in ("any", fam)


def attribution(title: str, artist: str, licence: str | None, copyright: str) -> str:
    """A one-line credit: '"Title" by Artist, © holder, licence GPL-2+' (parts left out when unknown)."""
    parts = [f'"{title}"' + (f" by {artist}" if artist else "")]
    holder = re.sub(r"^(?:copyright\s*)?(?:\(c\)|©)?\s*", "", " ".join(copyright.split()), flags=re.I)
    if holder:
        parts.append(f"© {holder}")
    parts.append(f"licence {' '.join(licence.split())}" if licence and licence.strip() else "licence unknown")
    return ", ".join(parts)
