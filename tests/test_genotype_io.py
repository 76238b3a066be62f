"""Genotype files (issue 28 item 8): a text in DARTS' notation says which space it is (DARTS and the published
BNAS code both write normal=/reduce=), never guessed, and a genotype file of the wrong shape is named in the
error."""

from __future__ import annotations

import json

import pytest

from bnas.cli import main
from bnas.errors import GenotypeError
from bnas.genotype import Genotype, from_darts_text, get_genotype

# DARTS' own notation (genotypes.py of the DARTS code): DARTS_V2
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def test_darts_text_is_a_darts_genotype(tmp_path, capsys):
    with pytest.raises(GenotypeError, match="does not say its space"):
        from_darts_text(DARTS_V2_TEXT)
    assert from_darts_text(DARTS_V2_TEXT, space="darts") == get_genotype("DARTS_V2")
    (tmp_path / "bare.txt").write_text(DARTS_V2_TEXT + "\n")
    with pytest.raises(GenotypeError, match=f"{tmp_path / 'bare.txt'}.*space='darts'"):
        get_genotype(str(tmp_path / "bare.txt"))
    (tmp_path / "darts.txt").write_text(DARTS_V2_TEXT[:-1] + ", space='darts')\n")
    assert get_genotype(str(tmp_path / "darts.txt")) == get_genotype("DARTS_V2")
    assert main(["genotype", "show", str(tmp_path / "darts.txt")]) == 0
    out = capsys.readouterr().out
    assert "(darts space)" in out and "normal cell" in out


def test_a_text_says_when_it_is_a_bcnn_genotype(tmp_path):
    """The published BNAS code writes its BCNN cells in DARTS' notation (normal = conv, reduce = enh): such a
    text says space='bcnn' (or names its cells conv/enh, as `to_darts_text` writes them), or the caller does."""
    clr = get_genotype("BNASv2_CLR_v1")
    published = Genotype(clr.first, clr.second, "darts").to_darts_text()  # normal=..., reduce=...
    with pytest.raises(GenotypeError, match="space='bcnn'"):
        from_darts_text(published)
    assert from_darts_text(published, space="bcnn") == clr
    assert from_darts_text(published[:-1] + ", space='bcnn')") == clr
    assert clr.to_darts_text().startswith("Genotype(conv=") and from_darts_text(clr.to_darts_text()) == clr
    (tmp_path / "clr.txt").write_text(published[:-1] + ", space='bcnn')")
    assert get_genotype(str(tmp_path / "clr.txt")) == clr
    with pytest.raises(GenotypeError, match="bcnn genotype"):
        from_darts_text(clr.to_darts_text(), space="darts")


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"space": "bcnn", "conv": {"edges": [["sep_conv_3x3", 0]]}, "enh": {"edges": []}}),
        json.dumps({"space": "bcnn", "conv": {"edges": "sep_conv_3x3"}}),
        json.dumps([1, 2, 3]),
    ],
    ids=["odd-edges", "missing-cell", "not-an-object"],
)
def test_a_wrong_shaped_genotype_file_is_named(tmp_path, content, capsys):
    path = tmp_path / "found" / "genotype.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(GenotypeError, match=str(path)):
        get_genotype(str(path))
    with pytest.raises(GenotypeError, match=str(path)):
        get_genotype(str(path.parent))  # a run directory
    assert main(["genotype", "show", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_a_wrong_shaped_text_genotype_is_named(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("Genotype(normal=[('sep_conv_3x3', 0)], reduce=oops)")
    with pytest.raises(GenotypeError, match=str(path)):
        get_genotype(str(path))
