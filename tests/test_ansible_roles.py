"""Each Ansible role carries a README, and the variables and tags it names exist in the role.

A README that mentions a renamed or removed variable would send an operator looking for a knob that no
longer exists; the argument spec is the source of truth (Ansible validates plays against it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[1] / "ansible" / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "meta" / "argument_specs.yml").is_file())


def _options(role: str) -> set[str]:
    spec = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    return set(spec["argument_specs"]["main"]["options"])


def _tags(role: str) -> set[str]:
    found: set[str] = set()
    for tasks in (ROLES_DIR / role / "tasks").glob("*.yml"):
        for line in re.findall(r"^\s*tags:\s*\[([^\]]*)\]", tasks.read_text(), re.MULTILINE):
            found.update(tag.strip() for tag in line.split(","))
    return found


def test_every_role_is_checked() -> None:
    assert {"app", "nginx", "certbot", "firewall", "logrotate", "monitoring", "redis"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_role_readme_names_only_real_variables(role: str) -> None:
    readme = ROLES_DIR / role / "README.md"
    assert readme.is_file(), f"ansible/roles/{role} has no README.md"
    text = readme.read_text()
    assert "meta/argument_specs.yml" in text, "the README should point at the full variable list"
    assert "## Example play" in text
    prefix = f"{role}_"
    named = {m for m in re.findall(r"`([a-z][a-z0-9_]*)`", text) if m.startswith(prefix)}
    assert named, f"the README documents none of the {prefix}* variables"
    unknown = named - _options(role) - _tags(role)
    assert not unknown, f"README names variables or tags the role does not have: {sorted(unknown)}"
