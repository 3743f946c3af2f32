"""docs/recipes.md is generated from the recipe schema: it must be what the schema gives today."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_recipe_reference_is_current() -> None:
    out = subprocess.run([sys.executable, "docs/gen_recipes.py", "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_every_recipe_key_is_documented() -> None:
    sys.path.insert(0, str(REPO / "docs"))
    from gen_recipes import rows

    undocumented = [key for key, _, _, doc in rows(__import__("kaggle_kit.recipe").recipe.Recipe)
                    if not doc]
    assert not undocumented, f"add a comment next to these fields in kaggle_kit/recipe.py: {undocumented}"
