"""Every published number in resviz.reference against a verbatim copy of its source table (tests/sources/)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from resviz import reference

SOURCES = Path(__file__).parent / "sources"


def _he_rows() -> dict[int, tuple[float, str, float | None, float | None]]:
    """{depth: (params M, printed error, mean, std)} of Table 6's ResNet rows."""
    rows = {}
    for line in (SOURCES / "he2015_table6.txt").read_text().splitlines():
        m = re.match(r"ResNet\s+(\d+)\s+([\d.]+)M\s+([\d.]+)(?:\s+\(([\d.]+)±([\d.]+)\))?$", line.strip())
        if m:
            depth, params, err, mean, std = m.groups()
            rows[int(depth)] = (float(params), float(err), float(mean) if mean else None, float(std) if std else None)
    return rows


def _akamaster_rows() -> dict[int, tuple[float, float]]:
    """{depth: (params M, "this impl." error)} of the README table (bold cells)."""
    rows = {}
    for line in (SOURCES / "akamaster_readme_table.md").read_text().splitlines():
        m = re.match(r"\|ResNet(\d+)\s*\|\s*\d+\s*\|\s*([\d.]+)M\s*\|\s*[\d.]+%\|\s*\*\*([\d.]+)%\*\*\|", line)
        if m:
            rows[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return rows


def test_he_table6_matches_the_paper_row_by_row():
    rows = _he_rows()
    assert sorted(rows) == [p.depth for p in reference.HE_TABLE6] == [20, 32, 44, 56, 110, 1202]
    for p in reference.HE_TABLE6:
        params, err, mean, std = rows[p.depth]
        assert (p.params_m, p.error, p.mean, p.std) == (params, err, mean, std), p


def test_resnet110_is_labelled_best_of_five_with_the_mean():
    caption = (SOURCES / "he2015_table6.txt").read_text()
    assert 'run it 5 times and show "best (mean±std)"' in caption
    r110 = next(p for p in reference.HE_TABLE6 if p.depth == 110)
    assert (r110.statistic, r110.runs) == ("best of 5 runs", 5)
    assert r110.label == "ResNet-110: 6.43 % (best of 5 runs; mean 6.61 ± 0.16)"
    others = [p for p in reference.HE_TABLE6 if p.depth != 110]
    assert all(p.mean is None and p.runs == 1 for p in others)


def test_akamaster_matches_the_readme_including_1202():
    rows = _akamaster_rows()
    assert rows[1202] == (19.4, 6.18)
    assert reference.published_errors(reference.AKAMASTER) == {d: e for d, (_, e) in rows.items()}
    assert {p.depth: p.params_m for p in reference.AKAMASTER_TABLE} == {d: m for d, (m, _) in rows.items()}


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="source='nope' is unknown; use one of"):
        reference.published_errors("nope")
