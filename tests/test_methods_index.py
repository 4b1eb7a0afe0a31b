"""docs/methods.md stays true: the paths its implemented rows cite exist, it lists every paper
method (>= 27 rows) and every registered reproduction has a row."""
import os
import re

from jaxdiff import reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INDEX = os.path.join(ROOT, "docs", "methods.md")
PATH_COLUMNS = ("code", "config", "test", "reproduction")
MIN_PAPER_ROWS = 27


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> dict[str, list[dict]]:
    """{section heading: rows as {column: cell}} for every markdown table of ``text``."""
    out, section, header, rows = {}, None, None, None
    for line in text.splitlines() + [""]:
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("|"):
            cells = _cells(line)
            if header is None:
                header, rows = cells, []
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(dict(zip(header, cells)))
        elif header is not None:
            out[section] = rows
            header = rows = None
    return out


def cited_paths(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def implemented(row: dict) -> bool:
    return not row["code"].lower().startswith("not yet implemented")


def all_rows() -> list[dict]:
    with open(INDEX) as f:
        return [row for rows in tables(f.read()).values() for row in rows
                if "code" in row and "reproduction" in row]


def test_index_lists_every_paper_method():
    with open(INDEX) as f:
        papers = tables(f.read())["Paper methods"]
    assert len(papers) >= MIN_PAPER_ROWS, len(papers)
    for row in papers:
        for column in ("paper", "family", "code", "the paper's claim", "our number"):
            assert row.get(column), (row.get("paper"), column)
    assert [int(r["#"]) for r in papers] == list(range(1, len(papers) + 1))
    assert any(implemented(r) for r in papers)


def test_paths_of_implemented_rows_exist():
    checked = 0
    for row in filter(implemented, all_rows()):
        for column in PATH_COLUMNS:
            for path in cited_paths(row[column]):
                assert os.path.exists(os.path.join(ROOT, path)), (row["paper"], column, path)
                checked += 1
    assert checked >= 5, checked


def test_every_registered_reproduction_has_a_row():
    reproduce.discover()
    cited = {p for row in all_rows() for p in cited_paths(row["reproduction"])}
    for name in reproduce.REPRODUCTIONS:
        assert f"repro/{name}.py" in cited, name
    for path in cited:  # and every cited reproduction module registers its name
        name = os.path.splitext(os.path.basename(path))[0]
        assert path.startswith("repro/") and name in reproduce.REPRODUCTIONS, path


def test_unimplemented_rows_name_their_intended_location():
    for row in all_rows():
        if not implemented(row):
            assert "intended" in row["code"] and cited_paths(row["code"]), row["paper"]
            assert row["our number"] == "-", row["paper"]
