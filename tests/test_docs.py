"""The documentation: the README stays short and its links lead somewhere, the options page is the one the settings
make, and the docs pages link to files that exist."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _links(page: Path) -> list[Path]:
    """The local files a markdown page links to (images included), resolved from the page's folder."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    return [(page.parent / t).resolve() for t in targets if "://" not in t]


def test_the_readme_is_short_and_every_local_link_exists():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    for page in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _links(page):
            assert target.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {t.name for t in _links(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in linked, f"docs/{page.name} is not linked from the README"


def test_the_options_page_is_up_to_date():
    process = subprocess.run([sys.executable, str(ROOT / "tools" / "write_options.py"), "--check"],
                             capture_output=True, text=True)
    assert process.returncode == 0, process.stderr


def test_the_options_page_lists_every_option_of_every_program():
    from zskt_fast import fewshot, mte, pretrain, reproduce, toy, train

    text = (ROOT / "docs" / "options.md").read_text()
    for program in (train, pretrain, fewshot, reproduce, mte, toy):
        section = text.split(f"## `python -m zskt_fast.{program.__name__.split('.')[-1]}`")[1].split("\n## ")[0]
        for action in program.build_parser()._actions:
            if action.option_strings and action.dest != "help":
                assert f"`{action.option_strings[0]}`" in section, (program.__name__, action.option_strings[0])
