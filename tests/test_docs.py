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


def test_readme_layout_names_every_module():
    """The README's Layout section names every module of the library, the kernels package and
    the experiment scripts, so a newcomer's map matches the tree."""
    text = (REPO_ROOT / "README.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Dependencies")]
    missing = []
    for folder, pattern in (("metabolism", "*.py"), ("kernels", "*.py"), ("experiments", "*.py")):
        for f in sorted((REPO_ROOT / folder).glob(pattern)):
            name = f.name if folder == "experiments" else f.stem
            if name != "__init__" and f"`{name}`" not in layout:
                missing.append(f"{folder}/{f.name}")
    assert not missing, f"README Layout does not name {missing}"
