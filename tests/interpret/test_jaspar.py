"""JASPAR access through pyjaspar's offline release files."""

import numpy as np
import pytest

from seq2reads.errors import UserError
from seq2reads.interpret.jaspar import load_jaspar, lookup


def test_release_is_core_vertebrates_non_redundant():
    db = load_jaspar("JASPAR2024")
    assert 500 < len(db) < 2000
    bases = [m.base_id for m in db.motifs]
    assert len(bases) == len(set(bases)), "non-redundant: one version per matrix"
    for m in db.motifs[:50]:
        assert m.ppm.shape[0] == 4 and np.allclose(m.ppm.sum(0), 1.0)
        assert len(m.consensus) == m.ppm.shape[1]


def test_lookup_by_id_base_id_and_name():
    db = load_jaspar("JASPAR2024")
    latest = lookup(db, "MA0035")
    assert latest.name == "GATA1" and latest.matrix_id.startswith("MA0035.")
    assert lookup(db, "gata1").matrix_id == latest.matrix_id
    assert lookup(db, latest.matrix_id) is latest
    older = lookup(db, "MA0035.4")  # an older version is fetched from the release
    assert older.matrix_id == "MA0035.4" and older.name == "GATA1"
    assert "GATA" in latest.tf_family


def test_unknown_motif_suggests_close_names():
    db = load_jaspar("JASPAR2024")
    with pytest.raises(UserError, match="GATA9.*not in JASPAR2024.*Did you mean.*GATA"):
        lookup(db, "GATA9")


def test_unknown_release():
    with pytest.raises(UserError, match="JASPAR2023.*available"):
        load_jaspar("JASPAR2023")
