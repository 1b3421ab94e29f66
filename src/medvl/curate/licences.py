"""Licence strings as the literature writes them → SPDX ids, and allow-list matching.

Inputs say the same licence many ways: PMC's file lists ("CC BY", "CC BY-NC-SA", "CC0",
"NO-CC CODE"), Unpaywall/MedICaT ("cc-by", "cc-by-nc-nd", "pd", "implied-oa"), URLs
("https://creativecommons.org/licenses/by/4.0/"), free text ("CC BY 4.0"). `normalise_licence`
maps each to one id:

- a Creative Commons licence with a version → its SPDX id (`CC-BY-4.0`, `CC-BY-NC-SA-3.0`);
- without a version (PMC never gives one) → `LicenseRef-CC-BY`, `LicenseRef-CC-BY-NC-ND`, ...
  (SPDX's form for a licence the list has no id for: the version is unknown, not guessed);
- CC0 → `CC0-1.0`; public domain → `LicenseRef-public-domain`; PMC's "NO-CC CODE" (in the open
  access subset without a CC licence) → `LicenseRef-PMC-NO-CC-CODE`;
- missing → `unknown`; anything else → `LicenseRef-<slug of the text>`.

`licence_allowed(id, allow)`: an allow entry matches an id exactly or as its family, the id without
version and `LicenseRef-` prefix — `CC-BY` admits `CC-BY-4.0`, `CC-BY-2.0` and `LicenseRef-CC-BY`,
but not `CC-BY-NC-4.0`; `CC0` admits `CC0-1.0`.
"""

from __future__ import annotations

import re

__all__ = ["UNKNOWN", "normalise_licence", "licence_family", "licence_allowed"]

UNKNOWN = "unknown"
_PARTS = ("by", "nc", "sa", "nd")
_CC = re.compile(
    r"^(?:https?://)?(?:www\.)?(?:creativecommons\.org/licenses/)?(?:creative[\s_-]*commons[\s_-]*)?"
    r"(?:cc[\s_-]*)?(?P<parts>by(?:[\s_/-]*(?:nc|sa|nd))*)"
    r"(?:[\s_/-]*(?:v(?:ersion)?\s*)?(?P<version>\d(?:\.\d)?))?(?:[\s_/-]*(?:igo|legalcode|deed\.\w+))*/?$"
)
_CC0 = re.compile(
    r"^(?:https?://)?(?:www\.)?(?:creativecommons\.org/publicdomain/zero/(?:1\.0)?/?|cc[\s_-]*(?:0|zero)"
    r"(?:[\s_-]*1\.0)?)(?:/legalcode)?/?$"
)
_SPECIAL = {
    "no-cc code": "LicenseRef-PMC-NO-CC-CODE",
    "pd": "LicenseRef-public-domain",
    "public domain": "LicenseRef-public-domain",
    "public-domain": "LicenseRef-public-domain",
}
_VERSION = re.compile(r"-\d\.\d$")


def normalise_licence(text: str | None) -> str:
    """The SPDX id (or `LicenseRef-...`, or `unknown`) of a licence string; see the module docstring."""
    if text is None or not str(text).strip():
        return UNKNOWN
    raw = " ".join(str(text).split())
    key = raw.lower()
    if key in _SPECIAL:
        return _SPECIAL[key]
    if key in (UNKNOWN, "none", "null", "n/a"):
        return UNKNOWN
    if _CC0.match(key):
        return "CC0-1.0"
    match = _CC.match(key)
    if match:
        parts = [p for p in _PARTS if re.search(rf"(?<![a-z]){p}(?![a-z])", match["parts"])]
        family = "CC-" + "-".join(p.upper() for p in parts)
        version = match["version"]
        if version is None:
            return f"LicenseRef-{family}"
        return f"{family}-{version if '.' in version else version + '.0'}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", raw).strip("-")[:48]
    return f"LicenseRef-{slug}"


def licence_family(licence_id: str) -> str:
    """`CC-BY-NC-4.0` → `CC-BY-NC`; `LicenseRef-CC-BY` → `CC-BY`; `CC0-1.0` → `CC0`."""
    family = licence_id.removeprefix("LicenseRef-")
    return _VERSION.sub("", family)


def licence_allowed(licence_id: str, allow: list[str]) -> bool:
    """True when an entry of `allow` names `licence_id` exactly or as its family."""
    family = licence_family(licence_id)
    return any(entry == licence_id or entry == family for entry in allow)
