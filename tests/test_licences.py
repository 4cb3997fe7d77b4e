"""Licences: Debian copyright files (DEP-5 and free-form) read right, families and serving filters that never over-allow."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deccm.data.licences import (
    FAMILIES,
    FILTERS,
    INCLUDE_UNKNOWN,
    Grant,
    NotDep5Error,
    allowed,
    attribution,
    family,
    package_licence,
    parse_dep5,
    recognise_freeform,
)

DOC = Path("/usr/share/doc")


def copyright_text(package: str) -> str:
    path = DOC / package / "copyright"
    if not path.is_file():
        pytest.skip(f"{package} is not installed ({path} missing): `make` installs Debian's free-music packages, "
                    f"or apt-get install {package}")
    return path.read_text()


# --------------------------------------------------------------------------- the real installed files


def test_hyperrogue_music_paragraph_overrides_files_star() -> None:
    text = copyright_text("hyperrogue-music")
    assert "Files: *\nCopyright: 2011-2021 Zeno Rogue" in text and "       music/hr-domina-mountain.ogg\nCopyright: Lincoln Domina" in text
    c = parse_dep5(text)
    track = c.licence_for("/usr/share/hyperrogue/music/hr-domina-hunting.ogg")
    assert track == Grant("CC-BY-SA-3.0", "Lincoln Domina", "DEP-5 Files: music/hr-domina-hunting.ogg")
    other = c.licence_for("/usr/share/hyperrogue/hyperrogue.dat")  # only `Files: *` covers it
    assert other is not None and other.licence == "GPL-2+" and other.basis == "DEP-5 Files: *"
    assert "Zeno Rogue" in other.copyright
    # through the package: the same answer
    assert package_licence("hyperrogue-music", "/usr/share/hyperrogue/music/hr-domina-hunting.ogg") == track


def test_ufoai_multiline_files_field() -> None:
    text = copyright_text("ufoai-music")
    assert "Files:\n base/music/David01.ogg\n" in text  # the field's patterns start on the next line
    c = parse_dep5(text)
    para = next(p for p in c.files if "base/music/David01.ogg" in p.patterns)
    assert {"base/music/van_theme.ogg", "base/sound/ambience/minepump03.ogg"} <= set(para.patterns)
    g = c.licence_for("/usr/share/games/ufoai/base/music/David01.ogg")
    assert g is not None and g.licence == "CC-BY-3.0" and "David Reeves (Destructavator)" in g.copyright
    assert "\n" not in g.copyright and "; " in g.copyright  # one line, one statement per holder
    credits = c.licence_for("/usr/share/games/ufoai/base/music/Crystan-Credits.ogg")
    assert credits is not None and credits.licence == "CC-BY-SA-3.0"
    assert c.licence_for("/usr/share/games/ufoai/base/0music.pk3").licence == "GPL-2+"  # type: ignore[union-attr]


def test_warzone2100_files_star() -> None:
    text = copyright_text("warzone2100-music")
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    g = package_licence("warzone2100-music", "/usr/share/games/warzone2100/music/albums/x/menu.opus")
    assert g == Grant("GPL-2+", "1999-2004, Eidos Interactive; 2005-2013, Warzone 2100 Project", "DEP-5 Files: *")


def test_standalone_licence_paragraphs_define_texts_not_files() -> None:
    text = copyright_text("drascula-music")
    c = parse_dep5(text)
    assert text.count("\nFiles: ") == len(c.files) == 2
    assert "You may modify the game as you wish" in c.licences["Drascula-License"]
    g = package_licence("drascula-music", "/usr/share/scummvm/drascula/audio/track1.ogg")
    assert g.licence == "Drascula-License" and family(g.licence) == "other"
    copyright_text("planetblupi-music-ogg")
    blupi = parse_dep5((DOC / "planetblupi-music-ogg" / "copyright").read_text())
    assert set(blupi.licences) == {"Expat", "GPL-3+"} and all(p.licence != "Expat" or p.patterns == ("src/json/*",)
                                                                 for p in blupi.files)
    assert blupi.licences["Expat"].startswith("The MIT License\n\nPermission is hereby granted")
    assert blupi.licence_for("/usr/share/planetblupi/music/music000.ogg").licence == "GPL-3+"  # type: ignore[union-attr]


@pytest.mark.parametrize("package,licence,holder", [
    ("wesnoth-1.16-music", "GPL-2+", "Copyright (C) 2003 - 2009 by David White <dave@whitevine.net>"),
    ("singularity-music", "CC-BY-SA-3.0", "Copyright (C) 2007-2008,2012 Max McCracken"),
    ("nexuiz-music", "GPL-2+", "© 2002 - 2009 Alientrap, Lee Vermeulen <lvermeulen@shaw.ca>"),
])
def test_freeform_files_recognised(package: str, licence: str, holder: str) -> None:
    text = copyright_text(package)
    with pytest.raises(NotDep5Error, match="Format"):
        parse_dep5(text)
    assert recognise_freeform(text) == (licence, holder)
    g = package_licence(package, f"/usr/share/games/{package}/music/a track.ogg")
    assert g == Grant(licence, holder, f"free-form copyright file: recognised {licence}")


def test_wesnoth_sub_path_notes_do_not_count() -> None:
    """The LGPL, Bitstream, MIT and Apache notes after the first dashes line are about fonts and tools, not the music."""
    text = copyright_text("wesnoth-1.16-music")
    main, rest = text.split("-----", 1)
    assert "GNU Library General Public License" in " ".join(rest.split()) and "Apache License" in rest
    assert recognise_freeform(main)[0] == "GPL-2+"
    assert recognise_freeform(rest)[0] == "LGPL-2+"  # the next section alone: src/sdl_ttf/
    assert recognise_freeform(rest.replace("-----", ""))[0] is None  # every note at once: several licences, no claim


def test_asc_dep5_with_licence_text() -> None:
    copyright_text("asc-music")
    g = package_licence("asc-music", "/usr/share/games/asc/music/frontiers.mp3")
    assert g == Grant("GPL-2+", "2002 Michael Kievernagel", "DEP-5 Files: *")


# --------------------------------------------------------------------------- hand-made DEP-5

HEADER = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: test\n\n"
MADE = HEADER + r"""Files: *
Copyright: 2020 Everyone
License: GPL-2+

Files: music/*.ogg
Copyright: 2021 A
           2022   B
License: CC-BY-SA-3.0

Files: music/track-?.ogg
 music/special\*.ogg
Copyright: C
License: CC0-1.0

Files: docs/back\\slash.txt music/q\?.ogg
Copyright: D
License: GPL-2+ and MIT

Files: nolicence/*
Copyright: E

License: CC-BY-SA-3.0
 full text here
 .
 second paragraph

License: Orphan
 a text that no Files paragraph uses
"""


@pytest.mark.parametrize("path,licence,pattern", [
    ("README", "GPL-2+", "*"),
    ("music/a.ogg", "CC-BY-SA-3.0", "music/*.ogg"),
    ("music/deep/er/a.ogg", "CC-BY-SA-3.0", "music/*.ogg"),  # * crosses /
    ("/usr/share/game/music/deep/a.ogg", "CC-BY-SA-3.0", "music/*.ogg"),  # installed: a suffix at a component boundary
    ("music/track-1.ogg", "CC0-1.0", "music/track-?.ogg"),  # a later paragraph wins
    ("music/track-10.ogg", "CC-BY-SA-3.0", "music/*.ogg"),  # ? is exactly one character
    ("music/special*.ogg", "CC0-1.0", r"music/special\*.ogg"),  # \* is a literal star
    ("music/specialX.ogg", "CC-BY-SA-3.0", "music/*.ogg"),
    ("music/q?.ogg", "GPL-2+ and MIT", r"music/q\?.ogg"),  # \? is a literal question mark, combinations as written
    ("music/qx.ogg", "CC-BY-SA-3.0", "music/*.ogg"),
    ("docs/back\\slash.txt", "GPL-2+ and MIT", r"docs/back\\slash.txt"),  # \\ is one backslash
    ("docs/backslash.txt", "GPL-2+", "*"),
    ("music.ogg", "GPL-2+", "*"),  # music/*.ogg needs the slash
])
def test_globs_and_last_match(path: str, licence: str, pattern: str) -> None:
    g = parse_dep5(MADE).licence_for(path)
    assert g is not None and (g.licence, g.basis) == (licence, f"DEP-5 Files: {pattern}")


def test_paragraph_fields() -> None:
    c = parse_dep5(MADE)
    assert len(c.files) == 5  # standalone License paragraphs are not Files paragraphs
    assert c.licences == {"CC-BY-SA-3.0": "full text here\n\nsecond paragraph", "Orphan": "a text that no Files paragraph uses"}
    assert c.licence_for("music/a.ogg").copyright == "2021 A; 2022 B"  # type: ignore[union-attr]
    assert c.files[2].patterns == ("music/track-?.ogg", r"music/special\*.ogg")
    assert c.format.endswith("copyright-format/1.0/")


def test_files_paragraph_without_licence_is_unknown() -> None:
    g = parse_dep5(MADE).licence_for("/srv/x/nolicence/a.wav")
    assert g is not None and g.licence is None and g.copyright == "E" and "no License field" in g.basis
    assert not allowed(g.licence) and family(g.licence) == "unknown"


def test_suffixes_start_at_component_boundaries() -> None:
    c = parse_dep5(HEADER + "Files: music/x.ogg\nCopyright: A\nLicense: MIT\n")
    assert c.licence_for("/usr/share/game/music/x.ogg") is not None
    assert c.licence_for("/usr/share/mymusic/x.ogg") is None  # "usic/x.ogg" is not a component suffix
    assert c.licence_for("/usr/share/game/music/x.ogg.bak") is None
    assert c.licence_for("") is None


def test_not_dep5_and_malformed() -> None:
    for text in ("This package was debianized by someone.\n\nCopyright (C) 2001 X\n",
                 "Format-Specification: http://svn.debian.org/wsvn/dep/web/deps/dep5.mdwn?op=file&rev=135\n\nFiles: *\n"
                 "Copyright: X\nLicense: GPL-2+\n", ""):
        with pytest.raises(NotDep5Error, match="no 'Format:' field naming copyright-format"):
            parse_dep5(text)
    assert issubclass(NotDep5Error, ValueError)
    with pytest.raises(ValueError, match=r"line 4: pattern 'a\\\\b'.*backslash"):
        parse_dep5(HEADER + "Files: a\\b\nLicense: MIT\n")
    with pytest.raises(ValueError, match="line 5: .*neither 'Field: value'"):
        parse_dep5(HEADER + "Files: *\nnot a field\n")


def test_package_licence_edge_cases(tmp_path: Path) -> None:
    assert package_licence("absent", "/x", doc_root=tmp_path) == Grant(None, "", "no copyright file")
    (tmp_path / "combo").mkdir()
    (tmp_path / "combo" / "copyright").write_text(HEADER + "Files: data/*\nCopyright: 2020 Y\nLicense: GPL-2+ and MIT\n")
    assert package_licence("combo", "/usr/share/combo/data/t.ogg", doc_root=tmp_path).licence == "GPL-2+ and MIT"
    miss = package_licence("combo", "/usr/share/combo/other.ogg", doc_root=tmp_path)
    assert miss.licence is None and "no Files paragraph matches" in miss.basis
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "copyright").write_text(HEADER + "Files: a\\x\nLicense: MIT\n")
    with pytest.raises(ValueError, match="broken/copyright: a malformed .*Fix:"):
        package_licence("broken", "/a", doc_root=tmp_path)
    (tmp_path / "free").mkdir()
    (tmp_path / "free" / "copyright").write_text("Copyright (C) 2001 Z\n\nLicensed under the GNU General Public License.\n")
    assert package_licence("free", "/a", doc_root=tmp_path) == Grant(
        None, "Copyright (C) 2001 Z", "free-form copyright file: no single licence recognised")


# --------------------------------------------------------------------------- free-form rules

GPL3 = ("Copyright (C) 2010 Someone\n\nThis program is free software: you can redistribute it under the terms of the\n"
        "GNU General Public License as published by the Free Software Foundation, either\nversion 3 of the License.\n")


def test_freeform_rules() -> None:
    assert recognise_freeform(GPL3) == ("GPL-3", "Copyright (C) 2010 Someone")
    later = GPL3.replace("License.\n", "License, or (at your option)\nany later version.\n")
    assert recognise_freeform(later)[0] == "GPL-3+"
    assert recognise_freeform(later + "\nA copy of the GNU General Public License is in /usr/share/common-licenses.\n")[0] \
        == "GPL-3+"  # an unversioned mention beside a versioned one
    mit = "\nPermission is hereby granted, free of charge, to any person obtaining a copy of this software.\n"
    assert recognise_freeform(GPL3 + mit)[0] is None  # two licences: ambiguous
    assert recognise_freeform(GPL3 + "\n-----\n" + mit)[0] == "GPL-3"  # a sub-path note after the dashes
    assert recognise_freeform(mit)[0] == "MIT"
    assert recognise_freeform(GPL3 + "\nThe Debian packaging is licensed under the\nGNU General Public License, version 2.\n")[0] \
        == "GPL-3"  # covers debian/, not the files
    assert recognise_freeform(GPL3.replace("version 3", "version 2") + GPL3)[0] is None  # two versions
    assert recognise_freeform("Licensed under the GNU General Public License.") == (None, "")  # no version stated
    assert recognise_freeform("Licensed under the GNU Lesser General Public License version 2.1 or any later version.")[0] \
        == "LGPL-2.1+"
    assert recognise_freeform("Nothing here.\n\nReally © 1999 Q\n") == (None, "© 1999 Q")
    cc = "Licensed under the Creative Commons Attribution-NonCommercial-ShareAlike 3.0 Unported licence."
    assert recognise_freeform(cc)[0] == "CC-BY-NC-SA-3.0" and family("CC-BY-NC-SA-3.0") == "other"


# --------------------------------------------------------------------------- families and filters

KNOWN_FAMILIES = {
    "public-domain": ["public-domain", "Public Domain", "CC0-1.0", "CC0 (generated)", "CC0",
                      "work: public domain; encoding: distributed with music21 by permission of its encoder"],
    "cc-by": ["CC-BY-3.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC BY-SA 4.0", "CC-BY-4.0"],
    "gpl": ["GPL-2+", "GPL-3+", "GPL-2", "GPL", "GPLv3", "LGPL-2.1+", "AGPL-3", "GPL-3+-with-bison-exception",
            "GPL-2+ with OpenSSL exception", "GPL-2+ or LGPL-2.1+"],
    "permissive": ["MIT", "Expat", "BSD-2-Clause", "BSD-3-clause-Xiph", "ISC", "Zlib", "Apache-2.0", "MIT-X11"],
    "other": ["Drascula-License", "CC-BY-NC-3.0", "CC-BY-NC-SA-4.0", "CC-BY-ND-3.0", "GPL-2+ and MIT",
              "LGPL-2.1+ and MIT-Brian-Paul", "MPL-2.0", "GAP", "GFDL-1.3"],
    "unknown": [None, "", "  ", "unknown", "Unknown"],
}
NAMES = [n for names in KNOWN_FAMILIES.values() for n in names]


@pytest.mark.parametrize("fam,name", [(f, n) for f, names in KNOWN_FAMILIES.items() for n in names])
def test_family(fam: str, name: str | None) -> None:
    assert family(name) == fam


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(NAMES), st.none(), st.text(max_size=30)), st.sampled_from(sorted(FILTERS)))
def test_a_filter_never_allows_outside_its_family_nor_unknown(licence: str | None, filter_: str) -> None:
    fam = family(licence)
    assert fam in FAMILIES
    if filter_ == INCLUDE_UNKNOWN:
        assert allowed(licence, filter_)  # the explicit opt-in serves everything
        return
    if allowed(licence, filter_):
        assert fam != "unknown" and (filter_ == "any" or fam == filter_)
    elif fam != "unknown" and filter_ in ("any", fam):
        pytest.fail(f"{licence!r} (family {fam}) refused by filter {filter_}")


def test_filters_cover_every_servable_family() -> None:
    assert {f for f in FAMILIES if f not in ("other", "unknown")} <= set(FILTERS)
    assert allowed("Drascula-License", "any") and not any(allowed("Drascula-License", f) for f in FAMILIES if f in FILTERS)
    with pytest.raises(ValueError, match="'gpl3' is unknown. Fix: one of any, public-domain"):
        allowed("GPL-3+", "gpl3")


def test_attribution() -> None:
    assert attribution("Awakening", "Max McCracken", "CC-BY-SA-3.0", "Copyright (C) 2007-2008,2012 Max McCracken") == \
        '"Awakening" by Max McCracken, © 2007-2008,2012 Max McCracken, licence CC-BY-SA-3.0'
    assert attribution("T", "", None, "") == '"T", licence unknown'
    assert attribution("T", "A", "GPL-2+", "© 2002  Alientrap") == '"T" by A, © 2002 Alientrap, licence GPL-2+'
