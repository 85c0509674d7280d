"""Access policy (issue 14): which tables and columns each role may read, checked on the parsed statement.

- `model`: the typed policy (`AccessPolicy`, `RolePolicy`, patterns, `Caps`) and the filtering helpers
  `visible_tables`, `visible_columns`, `effective_caps` for the catalog tools and search;
- `loader`: ACCESS_POLICY_FILE (YAML) → `AccessPolicy`, or a one-line `PolicyError` naming the bad entry;
- `check`: `check_statement(tree, catalog, role)` → `Decision` (allowed, or a refusal naming what was denied).

The package needs no database and imports nothing from the rest of the app: docs/policy.md has the format.
"""

from .check import Catalog, CatalogTable, Decision, InMemoryCatalog, check_statement, tables_read
from .loader import PolicyError, load_policy, parse_policy, parse_policy_text
from .model import (
    UNRESTRICTED,
    AccessPolicy,
    Caps,
    ColumnPattern,
    RolePolicy,
    TablePattern,
    effective_caps,
    visible_columns,
    visible_tables,
)

__all__ = [
    "UNRESTRICTED",
    "AccessPolicy",
    "Caps",
    "Catalog",
    "CatalogTable",
    "ColumnPattern",
    "Decision",
    "InMemoryCatalog",
    "PolicyError",
    "RolePolicy",
    "TablePattern",
    "check_statement",
    "effective_caps",
    "load_policy",
    "parse_policy",
    "parse_policy_text",
    "tables_read",
    "visible_columns",
    "visible_tables",
]
