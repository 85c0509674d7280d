"""The access-policy file: the issue's example loads as written, and every mistake is one line naming the entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.policy import PolicyError, load_policy, parse_policy_text

ISSUE_EXAMPLE = """
roles:
  reader:
    tables:
      allow: ["*"]                 # patterns: table, schema.table, schema.*, *
      deny: ["hr.*", "dbo.Payroll"]
    columns:
      deny: ["dbo.Employees.Salary", "*.ssn", "crm.contacts.phone"]   # [schema.]table.column, * wildcards
    max_rows: 200                  # optional caps, never above the global ones
    timeout_seconds: 10
"""


def test_the_issue_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ISSUE_EXAMPLE, encoding="utf-8")
    policy = load_policy(path, max_rows=1000, timeout_seconds=30)
    reader = policy.role("reader")
    assert policy.source == str(path)
    assert [str(p) for p in reader.deny_tables] == ["hr.*", "dbo.Payroll"]
    assert [str(p) for p in reader.deny_columns] == ["dbo.Employees.Salary", "*.ssn", "crm.contacts.phone"]
    assert (reader.max_rows, reader.timeout_seconds) == (200, 10.0)
    # matching is case-insensitive; a pattern without a schema matches every schema
    assert not reader.may_read_table("HR", "anything")
    assert not reader.may_read_table("dbo", "PAYROLL")
    assert reader.may_read_table("sales", "payroll")
    assert reader.column_denied("dbo", "employees", "SALARY")
    assert reader.column_denied("crm", "people", "SSN")
    assert not reader.column_denied("sales", "employees", "salary")
    # roles without an entry, and the role lookup's case
    assert policy.role("READER") is reader
    assert not policy.role("writer").restricts and reader.restricts


def test_wildcards_inside_a_part_and_schemaless_tables() -> None:
    policy = parse_policy_text('roles: {r: {tables: {allow: ["sales.*", "tmp_*"], deny: ["sales.*_audit"]}}}')
    role = policy.role("r")
    assert role.may_read_table("sales", "orders") and role.may_read_table("x", "tmp_1")
    assert not role.may_read_table("sales", "orders_audit") and not role.may_read_table("dbo", "orders")
    # SQLite tables have no schema: schema-qualified patterns see them as `main`
    main = parse_policy_text('roles: {r: {tables: {deny: ["main.secrets"]}, columns: {deny: ["main.*.pin"]}}}').role(
        "r"
    )
    assert not main.may_read_table(None, "secrets") and main.column_denied(None, "cards", "pin")


def test_an_empty_role_entry_and_an_empty_allow_list() -> None:
    policy = parse_policy_text("roles:\n  reader:\n  nobody:\n    tables: {allow: []}\n")
    assert not policy.role("reader").restricts
    assert not policy.role("nobody").may_read_table("dbo", "orders")
    assert policy.role("nobody").table_denial("dbo", "orders") == "not in the tables this role may read"


BAD: list[tuple[str, str]] = [
    ("", "policy: the file must be a mapping with a `roles` key, not nothing"),
    ("- a\n- b\n", "policy: the file must be a mapping with a `roles` key, not a list"),
    ("role: {}\n", "policy: role: unknown key; the top level takes roles"),
    ("roles: []\n", "policy: roles: must be a mapping of role names to their policy"),
    ("roles: {}\n", "policy: roles: must be a mapping of role names to their policy"),
    ("roles: {'bad name': {}}\n", "policy: roles.bad name: a role name is letters, digits, _ . or - (at most 64)"),
    (
        "roles: {reader: [1]}\n",
        "policy: roles.reader: must be a mapping with tables, columns, max_rows, timeout_seconds, not a list",
    ),
    (
        "roles: {reader: {table: {}}}\n",
        "policy: roles.reader.table: unknown key; roles.reader takes tables, columns, max_rows, timeout_seconds",
    ),
    (
        "roles: {reader: {tables: {allows: []}}}\n",
        "policy: roles.reader.tables.allows: unknown key; roles.reader.tables takes allow, deny",
    ),
    (
        "roles: {reader: {tables: [a]}}\n",
        "policy: roles.reader.tables: must be a mapping with allow and/or deny, not a list",
    ),
    (
        "roles: {reader: {tables: {deny: hr.*}}}\n",
        'policy: roles.reader.tables.deny: must be a list of patterns (["..."]), not "hr.*" (text)',
    ),
    ("roles: {reader: {tables: {deny: [1]}}}\n", "policy: roles.reader.tables.deny[0]: must be a text pattern, not 1"),
    (
        "roles: {reader: {tables: {deny: ['a', 'hr..x']}}}\n",
        'policy: roles.reader.tables.deny[1]: "hr..x" has an empty part; write table, schema.table, schema.* or *',
    ),
    (
        "roles: {reader: {tables: {deny: ['']}}}\n",
        "policy: roles.reader.tables.deny[0]: is empty; write table, schema.table, schema.* or *",
    ),
    (
        "roles: {reader: {tables: {allow: ['db.dbo.t']}}}\n",
        'policy: roles.reader.tables.allow[0]: "db.dbo.t" has 3 parts; a table pattern is table, schema.table',
    ),
    (
        "roles: {reader: {tables: {deny: ['[dbo].[t]']}}}\n",
        'policy: roles.reader.tables.deny[0]: "[dbo].[t]" contains []; write names without quotes or brackets',
    ),
    (
        "roles: {reader: {columns: {deny: [ssn]}}}\n",
        'policy: roles.reader.columns.deny[0]: "ssn" names no table; write table.column or *.ssn for every table',
    ),
    (
        "roles: {reader: {columns: {deny: [a.b.c.d]}}}\n",
        'policy: roles.reader.columns.deny[0]: "a.b.c.d" has 4 parts; a column pattern is [schema.]table.column',
    ),
    (
        "roles: {reader: {columns: {allow: [a.b]}}}\n",
        "policy: roles.reader.columns.allow: unknown key; roles.reader.columns takes deny",
    ),
    ("roles: {reader: {columns: [a.b]}}\n", "policy: roles.reader.columns: must be a mapping with deny, not a list"),
    ("roles: {reader: {max_rows: -1}}\n", "policy: roles.reader.max_rows: must be above 0, not -1"),
    ("roles: {reader: {max_rows: 0}}\n", "policy: roles.reader.max_rows: must be above 0, not 0"),
    ("roles: {reader: {max_rows: 2.5}}\n", "policy: roles.reader.max_rows: must be a whole number, not 2.5"),
    (
        "roles: {reader: {max_rows: yes}}\n",
        "policy: roles.reader.max_rows: must be a whole number, not true (a boolean)",
    ),
    (
        "roles: {reader: {timeout_seconds: '10'}}\n",
        'policy: roles.reader.timeout_seconds: must be a number of seconds, not "10" (text)',
    ),
    ("roles: {reader: {timeout_seconds: -0.5}}\n", "policy: roles.reader.timeout_seconds: must be above 0, not -0.5"),
    ("roles: {reader: {timeout_seconds: .inf}}\n", "policy: roles.reader.timeout_seconds: must be above 0, not inf"),
    ("roles: {Reader: {}, reader: {}}\n", "policy: roles.reader: is given twice (role names are case-insensitive)"),
    ("roles:\n  reader: {}\n  reader: {}\n", "policy: line 3: 'reader' is given twice"),
    ("roles: {reader: {tables: {deny: [a}}\n", "policy: not valid YAML: "),
    ("roles: !!python/object:os.system {}\n", "policy: not valid YAML: "),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_entry_is_one_line_naming_it(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy_text(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_caps_may_not_exceed_the_global_ones() -> None:
    with pytest.raises(
        PolicyError, match=r"^policy: roles.reader.max_rows: 5000 is above the global MAX_ROWS \(1000\)"
    ):
        parse_policy_text("roles: {reader: {max_rows: 5000}}", max_rows=1000)
    with pytest.raises(PolicyError, match=r"roles.r.timeout_seconds: 60 is above the global QUERY_TIMEOUT_SECONDS"):
        parse_policy_text("roles: {r: {timeout_seconds: 60}}", timeout_seconds=30.0)
    assert parse_policy_text("roles: {r: {max_rows: 1000}}", max_rows=1000).role("r").max_rows == 1000


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=r"nope.yaml: no such file$"):
        load_policy(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("roles:\n  reader:\n    tables:\n      deny: [\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(bad)
    assert str(caught.value).startswith(f"{bad}: not valid YAML: ") and "line " in str(caught.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match=r"binary.yaml: cannot be read \(UnicodeDecodeError\)$"):
        load_policy(binary)


def test_the_example_in_docs_policy_md_loads() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "policy.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", docs, re.DOTALL)
    assert example is not None
    policy = parse_policy_text(example.group(1), max_rows=1000, timeout_seconds=30)
    assert set(policy.roles) == {"reader", "analyst", "writer"}
    assert not policy.role("analyst").may_read_table("dbo", "Orders")
    assert policy.role("analyst").column_denied("dbo", "SalariesView", "anything")
