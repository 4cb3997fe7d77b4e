"""Which music21 corpus pieces the demo catalog uses, grouped into six honest genre groups.

A group is named for what its pieces are (era, style, forces), taken from the music21
corpus directories and their metadata, not for a commercial genre they are not. The
groups are ordered from most to least popular on the demo platform: that order is the
planted genre popularity the uploaders' preferences are skewed toward.

Licensing: every work used is in the public domain (composed before 1925, or
traditional). The *encodings* belong to their encoders and are distributed with music21
by permission (music21 ``corpus/license.txt``); a track's ``licence`` quotes the
encoding's own copyright line when the file has one. Left out on purpose: the Essen
folksongs (their encoders permit non-commercial use only), the lead sheets (Irving
Berlin's is "All Rights Reserved"), Schoenberg and Webern (20th-century works), demos and
theory exercises (fragments), Josquin (voices stored as separate ABC tunes), and the
multi-tune ABC books (O'Neill, Aird, miscFolk, Nottingham: slow to parse, not needed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# most → least popular (index = genre id in the dataset)
GENRES = ("folk-dance", "classical-era", "romantic", "chorale", "renaissance", "medieval")

GENRE_DESCRIPTIONS = {
    "folk-dance": "fiddle tunes (reels, jigs, hornpipes, strathspeys, clogs) from Ryan's Mammoth Collection (Boston, 1883)",
    "classical-era": "string-quartet movements by Haydn, Mozart and Beethoven, a Mozart sonata exposition and a C.P.E. Bach "
                     "sonata movement (c. 1760-1826)",
    "romantic": "19th-century song, piano and chamber music (Schubert, R. and C. Schumann, Chopin, Weber, Verdi) and "
                "turn-of-the-century pieces (Joplin, Beach, J. R. Johnson, Lili'uokalani)",
    "chorale": "J. S. Bach's four-part chorale harmonisations",
    "renaissance": "Palestrina mass movements, Monteverdi madrigals (Books 3-5) and Lusitano (16th - early 17th century)",
    "medieval": "14th-century Italian polyphony (trecento: Landini, Jacopo da Bologna, Ciconia, Luca and anonymous works)",
}

ENCODING_LICENCE = ("distributed with music21 by permission of its encoder (music21 corpus/license.txt; "
                    "some encodings restrict commercial use)")


@dataclass(frozen=True)
class Source:
    """One music21 corpus directory: which files, which group, who wrote them."""

    directory: str
    genre: str
    pattern: str = "*"
    composer: str | None = None  # None: a collection, take the composer from each file's metadata
    title_from: str = "metadata"  # "metadata", "filename" (titles are file or part names) or "both" (section names)
    anonymous: str = "anonymous"  # artist when a collection's file names no composer


SOURCES = (
    Source("ryansMammoth", "folk-dance", "*.abc", anonymous="traditional"),
    Source("haydn", "classical-era", "**/*.mxl", "Joseph Haydn", "filename"),
    Source("mozart", "classical-era", "**/*.mxl", "Wolfgang Amadeus Mozart", "filename"),
    Source("beethoven", "classical-era", "**/*.mxl", "Ludwig van Beethoven", "filename"),
    Source("cpebach", "classical-era", "*.mxl", "Carl Philipp Emanuel Bach"),
    Source("schubert", "romantic", "*.xml", "Franz Schubert"),
    Source("schumann_robert", "romantic", "**/*", "Robert Schumann", "filename"),
    Source("schumann_clara", "romantic", "**/*", "Clara Schumann", "filename"),
    Source("chopin", "romantic", "*.krn", "Frederic Chopin"),
    Source("weber", "romantic", "*.mxl", "Carl Maria von Weber"),
    Source("verdi", "romantic", "*.mxl", "Giuseppe Verdi", "filename"),
    Source("joplin", "romantic", "*.mxl", "Scott Joplin", "filename"),
    Source("beach", "romantic", "*.musicxml", "Amy Beach"),
    Source("johnson_j_r", "romantic", "*.mxl", "J. Rosamond Johnson"),
    Source("liliuokalani", "romantic", "*.mxl", "Queen Lili'uokalani"),
    Source("bach", "chorale", "bwv*.mxl", "Johann Sebastian Bach", "filename"),
    Source("palestrina", "renaissance", "*.krn", "Giovanni Pierluigi da Palestrina", "both"),
    Source("monteverdi", "renaissance", "*.mxl", "Claudio Monteverdi", "filename"),
    Source("lusitano", "renaissance", "*.mxl", "Vicente Lusitano"),
    Source("trecento", "medieval", "*.xml"),
    Source("ciconia", "medieval", "*.xml", "Johannes Ciconia"),
    Source("luca", "medieval", "*.xml", "D. Luca"),
)


@dataclass(frozen=True)
class Piece:
    """A candidate corpus file: where it is and what group it belongs to."""

    path: Path  # absolute, inside the installed music21 corpus
    rel: str  # music21 corpus path, e.g. "bach/bwv297.mxl"
    genre: str
    source: Source


def corpus_root() -> Path:
    """The installed music21 core corpus directory."""
    from music21 import common

    return Path(common.getCorpusFilePath())


def candidates(root: Path | None = None) -> dict[str, list[Piece]]:
    """Every usable file per genre, sorted by corpus path (the seed shuffles later)."""
    root = root or corpus_root()
    out: dict[str, list[Piece]] = {g: [] for g in GENRES}
    for src in SOURCES:
        for p in sorted((root / src.directory).glob(src.pattern)):
            if p.is_file() and p.suffix in (".mxl", ".xml", ".musicxml", ".krn", ".abc"):
                out[src.genre].append(Piece(p, p.relative_to(root).as_posix(), src.genre, src))
    return out


def parse_size(piece: Piece) -> int:
    """Bytes of notation music21 must parse: a proxy for parse time (``.mxl`` is zipped about 10:1)."""
    return piece.path.stat().st_size * (10 if piece.path.suffix == ".mxl" else 1)


def select(quotas: dict[str, int], rng: np.random.Generator, spare: float = 0.15,
           max_bytes: int | None = None) -> list[Piece]:
    """Shuffle each group's files and take its quota plus some spares (a file can fail to parse).

    ``max_bytes`` skips files whose :func:`parse_size` is larger: whole quartets in one file
    take music21 over 10 s, and the ``tiny`` size keeps only quick ones.
    """
    pool = candidates()
    picked: list[Piece] = []
    for genre in GENRES:
        files = [p for p in pool[genre] if max_bytes is None or parse_size(p) <= max_bytes]
        order = rng.permutation(len(files))
        want = quotas.get(genre, 0)
        n = min(len(files), want + max(2, int(np.ceil(spare * want))))
        picked.extend(files[i] for i in order[:n])
    return picked


_EXT = re.compile(r"\.(mxl|xml|musicxml|krn|abc|mus)$", re.I)


def _title_from_path(rel: str) -> str:
    """A readable title from a corpus path: ``haydn/opus1no1/movement3.mxl`` → ``Op. 1 No. 1, movement 3``."""
    parts = [_EXT.sub("", s) for s in rel.split("/")[1:]]
    text = ", ".join(parts)
    text = re.sub(r"madrigal\.(\d+)\.(\d+)", r"Madrigal, Book \1 No. \2", text)
    text = re.sub(r"^bwv(.+)$", r"Chorale BWV \1", text)
    text = re.sub(r"opus(\d+)no(\d+)", r"Op. \1 No. \2", text)
    text = re.sub(r"opus(\d+)", r"Op. \1", text)
    text = re.sub(r"(^|, )k(\d+)", r"\1K. \2", text)
    text = re.sub(r"op(\d+)n(\d+)", r"Op. \1 No. \2", text)
    text = re.sub(r"movement(\d+)", r"movement \1", text)
    text = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text.replace("_", " "))
    return text[:1].upper() + text[1:]


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def describe(piece: Piece, title: str | None, composer: str | None, copyright_: str | None) -> dict[str, str]:
    """title / artist / source / licence for ``tracks.csv`` from the parsed file's metadata."""
    t = _clean(title)
    if t.isupper():
        t = t.title()
    if piece.source.title_from == "filename" or not t or _EXT.search(t):
        t = _title_from_path(piece.rel)
    elif piece.source.title_from == "both":
        t = f"{_title_from_path(piece.rel)}: {t}"
    artist = piece.source.composer or _clean(composer) or piece.source.anonymous
    rights = _clean(copyright_)
    stated = f"{rights}; " if rights and rights not in ("©", "Copyright ©") else ""
    licence = f"work: public domain; encoding: {stated}{ENCODING_LICENCE}"
    return {"title": t, "artist": artist, "source": f"music21 corpus: {piece.rel}", "licence": licence}
