"""The README points only at what a clone has."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_relative_links_and_named_files_exist_in_the_clone():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [link for link in links if not re.match(r"(https?|mailto):|#", link)]
    assert relative, "the README links to files of the repository"
    named = re.findall(r"`([\w.-]+(?:/[\w.-]+)+\.(?:md|py|sh|ya?ml|toml|txt))`", README)
    missing = sorted({path for path in [*relative, *named] if not (REPO_ROOT / path).exists()})
    assert not missing, f"README names files a clone does not have: {missing}"
    assert "shared/" not in README  # the project's shared notes are not part of the repository
