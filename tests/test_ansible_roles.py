"""Each Ansible role carries a README, and the variables and tags it names exist in the role.

A README that mentions a renamed or removed variable would send an operator looking for a knob that no
longer exists; the argument spec is the source of truth (Ansible validates plays against it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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


# -- the scale-out decisions, evaluated by Ansible's own templating (no hosts needed) -------------------

ANSIBLE_DIR = ROLES_DIR.parent


def _render(expression: str, layers: list[dict[str, Any]]) -> Any:
    """`expression` with Ansible's Templar over `layers` (later ones win, like inventory over defaults)."""
    template = pytest.importorskip("ansible.template")
    from ansible.parsing.dataloader import DataLoader

    def trusted(value: Any) -> Any:  # YAML from this repository: its strings are templates, as Ansible reads them
        if isinstance(value, str):
            return template.trust_as_template(value)
        if isinstance(value, dict):
            return {k: trusted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [trusted(v) for v in value]
        return value

    variables: dict[str, Any] = {}
    for layer in layers:
        variables.update(trusted(layer))
    templar = template.Templar(loader=DataLoader(), variables=variables)
    return templar.template(template.trust_as_template(expression))


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _site_decision(**inventory: Any) -> tuple[bool, str]:
    layers = [_yaml(ANSIBLE_DIR / "vars" / "scale_out.yml"), inventory]
    return (
        _render("{{ mssql_mcp_local_redis | bool }}", layers),
        _render("{{ mssql_mcp_local_redis_url }}", layers),
    )


def test_site_installs_redis_for_several_workers_unless_a_redis_is_given() -> None:
    four_vcpus = {"ansible_facts": {"processor_vcpus": 4}}
    assert _site_decision(**four_vcpus, redis_password="p a/ss") == (True, "redis://:p%20a%2Fss@127.0.0.1:6379/0")
    assert _site_decision(ansible_facts={"processor_vcpus": 1}) == (False, "")
    assert _site_decision(**four_vcpus, app_workers=1) == (False, "")
    assert _site_decision(**four_vcpus, mssql_mcp_workers=1) == (False, "")
    assert _site_decision(**four_vcpus, app_redis_url="rediss://:x@10.0.0.3:6378/0") == (False, "")
    assert _site_decision(**four_vcpus, mssql_mcp_redis_url="rediss://:x@10.0.0.3:6378/0") == (False, "")
    assert _site_decision(ansible_facts={"processor_vcpus": 1}, redis_install=True)[0] is True
    assert _site_decision(ansible_facts={"processor_vcpus": 1}, app_workers=3, redis_port=6380)[1].endswith(":6380/0")


def _failed_app_checks(hosts: int = 1, **inventory: Any) -> list[str]:
    """Names of the app role's scale-out preflight checks that fail (site.yml's variables included)."""
    role = ROLES_DIR / "app"
    role_vars = _yaml(role / "vars" / "main.yml")
    layers = [
        _yaml(ANSIBLE_DIR / "vars" / "scale_out.yml"),
        _yaml(role / "defaults" / "main.yml"),
        {"ansible_facts": {"processor_vcpus": 2}, "groups": {"mssql_mcp": [f"vm{i}" for i in range(hosts)]}},
        inventory,
        {k: role_vars[k] for k in ("__app_redis_url", "__app_scale_out_checks")},
    ]
    checks = _render("{{ __app_scale_out_checks }}", layers)
    # Each `ok` renders to a boolean (or its text, "True"/"False", for a folded multi-line expression).
    return [check["name"] for check in checks if str(check["ok"]).strip() != "True"]


def test_app_role_default_is_one_worker_per_vcpu_with_the_local_redis() -> None:
    layers = [
        _yaml(ANSIBLE_DIR / "vars" / "scale_out.yml"),
        _yaml(ROLES_DIR / "app" / "defaults" / "main.yml"),
        {"ansible_facts": {"processor_vcpus": 3}, "redis_password": "pw"},
        {"__app_redis_url": _yaml(ROLES_DIR / "app" / "vars" / "main.yml")["__app_redis_url"]},
    ]
    assert _render("{{ app_workers | int }}", layers) == 3
    assert _render("{{ __app_redis_url }}", layers) == "redis://:pw@127.0.0.1:6379/0"


def test_app_role_preflight_names_what_a_scale_out_lacks() -> None:
    base_url = {"app_public_base_url": "https://mcp.example.com"}
    # One VM, one worker per vCPU and the Redis site.yml installs: fine with a public URL, refused without.
    assert _failed_app_checks(redis_password="pw", **base_url) == []
    assert _failed_app_checks(redis_password="pw") == ["a shared store needs one public URL"]
    assert _failed_app_checks(app_workers=1) == []
    # The role alone (no site.yml variables) with several workers and no Redis.
    assert "workers need Redis" in _failed_app_checks(mssql_mcp_local_redis_url="", app_workers=2, **base_url)
    # Two VMs: PostgreSQL, one public URL, one state key and a Redis both reach.
    shared = {
        "app_redis_url": "rediss://:x@10.0.0.3:6378/0",
        "app_state_database_url": "postgresql://u:p@10.0.0.5/mcp_state",
        "app_state_encryption_key": "k" * 40,
    }
    assert _failed_app_checks(hosts=2, **shared, **base_url) == []
    assert _failed_app_checks(hosts=2, **{**shared, "app_state_database_url": ""}, **base_url) == [
        "several hosts need PostgreSQL"
    ]
    assert _failed_app_checks(hosts=2, **shared) == [
        "several hosts need one public URL",
        "a shared store needs one public URL",
    ]
    assert _failed_app_checks(hosts=2, **{**shared, "app_state_encryption_key": ""}, **base_url) == [
        "several hosts need one state key"
    ]
    assert _failed_app_checks(hosts=2, **{**shared, "app_redis_url": "redis://:x@127.0.0.1:6379/0"}, **base_url) == [
        "several hosts need a shared Redis"
    ]
