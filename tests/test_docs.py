"""The repository stands alone: its documents link only to files it holds."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_readme_links_stay_inside_the_repository():
    """Every relative link of the README and docs/ names a file of this repository."""
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO_ROOT) and path.exists(), f"{doc.name}: {target}"
