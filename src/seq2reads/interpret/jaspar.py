"""JASPAR CORE vertebrates, non-redundant, from pyjaspar's offline SQLite releases.

JASPAR's "non-redundant" set is the latest version of each matrix (``MA0035.5`` but not
``MA0035.4``): pyjaspar's ``fetch_motifs(collection="CORE", tax_group=["vertebrates"],
all_versions=False)``. Older versions stay reachable by their full ID through :func:`lookup`.

Examples
--------
>>> db = load_jaspar("JASPAR2024")                      # doctest: +SKIP
>>> m = lookup(db, "GATA1"); m.matrix_id, m.consensus   # doctest: +SKIP
('MA0035.5', 'AGATAAG')
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field

import numpy as np

from seq2reads.errors import UserError


@dataclass(frozen=True)
class Motif:
    """One JASPAR matrix.

    ``ppm`` is float64 (4, w): per-position probabilities of A, C, G, T (columns sum to 1).
    """

    matrix_id: str
    name: str
    ppm: np.ndarray = field(repr=False)
    consensus: str
    tf_family: str
    tf_class: str

    @property
    def base_id(self) -> str:
        return self.matrix_id.split(".")[0]


@dataclass(frozen=True)
class MotifDB:
    """The non-redundant CORE vertebrate matrices of one release (``motifs`` in JASPAR order)."""

    release: str
    motifs: tuple[Motif, ...]

    def __len__(self) -> int:
        return len(self.motifs)

    @property
    def ids(self) -> list[str]:
        return [m.matrix_id for m in self.motifs]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.motifs]


def releases() -> list[str]:
    """JASPAR releases shipped with pyjaspar."""
    from pyjaspar import jaspar_releases

    return sorted(jaspar_releases)


def _to_motif(m) -> Motif:
    counts = np.array([m.counts[b] for b in "ACGT"], dtype=np.float64)
    ppm = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1e-12)
    consensus = "".join("ACGT"[i] for i in ppm.argmax(axis=0))
    return Motif(m.matrix_id, str(m.name), ppm, consensus,
                 "; ".join(m.tf_family or []), "; ".join(m.tf_class or []))


# A small per-process cache keyed on the release: reading ~900 matrices from SQLite takes ~2 s and
# the motif, marginalisation and benchmark steps all ask for the same release. The database files
# are read-only, so a cached copy can never go stale.
@functools.lru_cache(maxsize=2)
def load_jaspar(release: str = "JASPAR2024") -> MotifDB:
    """CORE vertebrates non-redundant matrices of a pyjaspar release (offline).

    Raises
    ------
    UserError
        A release pyjaspar does not ship (lists the available ones).
    """
    if release not in releases():
        close = difflib.get_close_matches(release, releases(), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown JASPAR release '{release}' (interpret.motif_db); available: "
                        f"{', '.join(releases())}.{hint}")
    from pyjaspar import jaspardb

    db = jaspardb(release=release)
    ms = db.fetch_motifs(collection="CORE", tax_group=["vertebrates"], all_versions=False)
    return MotifDB(release, tuple(_to_motif(m) for m in ms))


def lookup(db: MotifDB, key: str) -> Motif:
    """A motif by matrix ID (``MA0035.4``, or ``MA0035`` for the latest version) or TF name.

    TF names match case-insensitively; the first (JASPAR order) matrix of that name wins. A full ID
    of an older version is fetched from the release itself.

    Raises
    ------
    UserError
        Unknown ID or name, with the closest names and IDs of the release as suggestions.
    """
    k = key.strip()
    for m in db.motifs:
        if m.matrix_id == k or m.base_id == k:
            return m
    for m in db.motifs:
        if m.name.upper() == k.upper():
            return m
    if "." in k:  # an older version of a matrix in the set
        from pyjaspar import jaspardb

        base = k.split(".")[0]
        if any(m.base_id == base for m in db.motifs):
            import warnings

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pyjaspar warns before failing; we raise our own error
                    old = jaspardb(release=db.release).fetch_motif_by_id(k)
            except Exception:  # pyjaspar raises assorted errors for a version that does not exist
                old = None
            if old is not None:
                return _to_motif(old)
    choices = db.names + db.ids
    close = difflib.get_close_matches(k, choices, n=3, cutoff=0.5)
    close += [c for c in difflib.get_close_matches(k.upper(), [c.upper() for c in choices], n=3, cutoff=0.5)
              if c not in close]
    close = list(dict.fromkeys(close))
    hint = f" Did you mean {', '.join(close[:3])}?" if close else " Give a JASPAR matrix ID such as MA0035 or a TF name."
    raise UserError(f"motif '{key}' is not in {db.release} CORE vertebrates.{hint}")


def family_of(db: MotifDB, matrix_id: str) -> str:
    """TF family of a matrix ID ('' when unknown)."""
    base = matrix_id.split(".")[0]
    for m in db.motifs:
        if m.matrix_id == matrix_id or m.base_id == base:
            return m.tf_family
    return ""
