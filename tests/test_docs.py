"""The documentation: README.md and docs/ (built with mkdocs). The site builds with no warnings, every
results file the pages cite exists, every results file is cited, and every benchmark table names its
command, machine and date."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A results file named anywhere in the text: "benchmarks/results/NAME.json" (code or link).
CITED = re.compile(r"benchmarks/results/([\w.-]+\.json)")
# A relative Markdown link target in README.md: [text](target) not starting with a scheme or "#".
README_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)(?:#[^)]*)?\)")


def cited_results():
    return {name: page.name for page in PAGES for name in CITED.findall(page.read_text(encoding="utf-8"))}


def test_mkdocs_builds_the_site_strictly(tmp_path):
    mkdocs = pytest.importorskip("mkdocs", reason="mkdocs is not installed (make test installs it: "
                                                  "pip install 'mkdocs>=1.6'); the docs build is not checked")
    if tuple(int(p) for p in re.findall(r"\d+", mkdocs.__version__)[:2]) < (1, 6):
        pytest.skip(f"mkdocs {mkdocs.__version__} is too old for mkdocs.yml's anchor validation (needs >= 1.6)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    pages = {"index.html"} | {f"{p.stem}/index.html" for p in (ROOT / "docs").glob("*.md") if p.stem != "index"}
    assert pages <= built, f"pages missing from the site: {sorted(pages - built)}"


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", config, flags=re.M))
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_every_cited_results_file_exists():
    cited = cited_results()
    assert cited, "no page cites benchmarks/results/*.json"
    missing = [f"{name} (cited in {page})" for name, page in cited.items() if not (RESULTS / name).is_file()]
    assert not missing, "cited results files that do not exist: " + ", ".join(missing)


def test_every_results_file_is_cited_in_the_benchmarks_page():
    cited = set(CITED.findall((ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")))
    uncited = sorted(p.name for p in RESULTS.glob("*.json") if p.name not in cited)
    assert not uncited, "results files docs/benchmarks.md does not cite: " + ", ".join(uncited)


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = README_LINK.findall(text)
    assert any(t.startswith("docs/") for t in targets), "README.md links to no page under docs/"
    missing = sorted({t for t in targets if not (ROOT / t).exists()})
    assert not missing, "README.md links to files that do not exist: " + ", ".join(missing)


def test_readme_headline_results_link_their_json():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Headline results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| result")]
    assert rows, "README.md has no headline results table"
    unlinked = [row for row in rows if not CITED.search(row)]
    assert not unlinked, "headline results without a link to their JSON:\n" + "\n".join(unlinked)


def test_every_benchmark_section_names_command_machine_and_date():
    sections = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8").split("\n## ")[1:]
    assert len(sections) > 5
    incomplete = []
    for section in sections:
        title = section.splitlines()[0]
        if title.startswith("GPU"):
            continue  # filled from the GPU run's results file
        for word in ("Command", "Machine", "Date"):
            if word not in section:
                incomplete.append(f"{title}: no {word}")
        if not re.search(r"Machine:?\s[^.]*(AVX|NEON|SVE|NVIDIA)", section):
            incomplete.append(f"{title}: the machine does not name its instruction set or GPU")
        if "|---" in section and not re.search(r"\d{4}-\d{2}-\d{2}", section):
            incomplete.append(f"{title}: no date")
    assert not incomplete, "\n".join(incomplete)
