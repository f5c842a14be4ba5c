"""The documentation: generated parts in step with the code, citations that resolve, no
pointer outside the repository, and the API pages build offline."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpcflow.app.config import config_reference

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = [p for p in (*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("launch/*"),
                          *ROOT.rglob("hpcflow/**/*.py"), *ROOT.glob("configs/**/*.yaml"),
                          *ROOT.glob("perf/*.md"), *ROOT.glob("perf/*.py"), ROOT / "Makefile")
              if p.is_file()]


def test_config_reference_is_generated_from_the_code():
    """docs/config.md is what `make docs` writes; edit hpcflow/app/config.py, then run it."""
    assert (ROOT / "docs" / "config.md").read_text() == config_reference()


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"\.\./shared|shared/|(PHYSICS|ALGORITHMS|CONTRACTS|ENVIRONMENT|"
                         r"ARCHITECTURE|STYLE)\.md")
    hits = [f"{p.relative_to(ROOT)}:{i + 1}" for p in TEXT_FILES
            for i, line in enumerate(p.read_text(errors="replace").splitlines())
            if pattern.search(line)]
    assert hits == []


def test_doc_citations_name_existing_sections():
    """Every `docs/<file>.md, "<heading>"` cited in code or docs is a heading of that file."""
    cite = re.compile(r'docs/([\w-]+\.md)[,\s(]+"([^"]+)"')
    bad = []
    for p in TEXT_FILES:
        for name, heading in cite.findall(p.read_text(errors="replace")):
            target = ROOT / "docs" / name
            headings = {h.strip() for h in re.findall(r"^#+\s+(.*)$", target.read_text(),
                                                      re.M)} if target.exists() else set()
            if heading not in headings:
                bad.append(f"{p.relative_to(ROOT)}: docs/{name}, {heading!r}")
    assert bad == []


def test_readme_links_resolve_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)", text)
    missing = [lnk for lnk in links if not lnk.startswith("http") and not (ROOT / lnk).exists()]
    assert missing == []


def test_api_pages_build_offline(tmp_path):
    """`make docs` runs pdoc on the package; the pages reference no network resource."""
    pytest.importorskip("pdoc")
    import pkgutil

    import hpcflow

    modules = ["hpcflow"] + [m.name for m in pkgutil.walk_packages(hpcflow.__path__, "hpcflow.")
                             if m.name != "hpcflow.__main__"]  # as in the Makefile
    res = subprocess.run([sys.executable, "-m", "pdoc", "--docformat", "restructuredtext",
                          "-o", str(tmp_path), *modules], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for page in ("hpcflow.html", "hpcflow/lattice/groups.html", "hpcflow/app/config.html"):
        assert (tmp_path / page).exists(), page
    remote = [p.name for p in tmp_path.rglob("*.html")
              if re.search(r'src="https?://|<link[^>]*href="https?://', p.read_text())]
    assert remote == []
