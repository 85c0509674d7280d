"""The access-policy check on real sqlglot trees (the guard's own parse) in SQLite, PostgreSQL and T-SQL.

The policy denies a schema (hr.*), a table (payroll) and columns (employees.salary, *.ssn). Every statement
in REFUSED reaches denied data in its own way and must be refused naming what it touched; every statement in
ALLOWED reads only permitted data and must pass. The SQLite statements also run on a real SQLite database
with the same tables (stdlib sqlite3, with hr attached), so each is a statement an engine accepts, and the
SQLite catalog the check uses is read from that database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from app.db import guard
from app.policy import (
    CatalogTable,
    InMemoryCatalog,
    check_statement,
    effective_caps,
    parse_policy_text,
    tables_read,
    visible_columns,
    visible_tables,
)
from app.policy.check import Catalog

POLICY = parse_policy_text(
    """
roles:
  reader:
    tables:
      allow: ["*"]
      deny: ["hr.*", "payroll"]
    columns:
      deny: ["employees.salary", "*.ssn", "salaries.salary"]  # a view is named in the policy like a table
  analyst:
    tables:
      allow: ["orders", "dbo.customers", "public.customers", "depart*"]
    max_rows: 50
    timeout_seconds: 5
""",
    source="test-policy",
)
READER = POLICY.role("reader")
ANALYST = POLICY.role("analyst")

SQLITE_DDL = """
CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, salary REAL, dept_id INTEGER, manager_id INTEGER);
CREATE TABLE payroll (employee_id INTEGER, amount REAL, paid_on TEXT);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, ssn TEXT, email TEXT);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, placed_on TEXT);
CREATE TABLE departments (id INTEGER PRIMARY KEY, name TEXT, budget REAL);
CREATE VIEW employee_directory AS SELECT name, dept_id FROM employees;
CREATE VIEW salaries AS SELECT name, salary FROM employees;
CREATE TABLE hr.reviews (employee_id INTEGER, score INTEGER, notes TEXT);
INSERT INTO employees VALUES (1, 'Ada', 100000, 1, NULL), (2, 'Bob', 50000, 1, 1);
INSERT INTO payroll VALUES (1, 8000, '2026-11-30');
INSERT INTO customers VALUES (1, 'Cy', '123-45-6789', 'cy@example.com');
INSERT INTO orders VALUES (1, 1, 12.5, '2026-11-01');
INSERT INTO departments VALUES (1, 'R&D', 1e6);
INSERT INTO hr.reviews VALUES (1, 5, 'great');
"""

_COLUMNS = {
    "employees": ("id", "name", "salary", "dept_id", "manager_id"),
    "payroll": ("employee_id", "amount", "paid_on"),
    "customers": ("id", "name", "ssn", "email"),
    "orders": ("id", "customer_id", "total", "placed_on"),
    "departments": ("id", "name", "budget"),
    "employee_directory": ("name", "dept_id"),
    "salaries": ("name", "salary"),
}


VIEWS = {"employee_directory", "salaries"}


def _server_catalog(default_schema: str, capitalise: bool) -> InMemoryCatalog:
    """The same tables in a database with schemas; T-SQL's catalog spells them in mixed case."""

    def spell(name: str) -> str:
        return "".join(p.capitalize() for p in name.split("_")) if capitalise else name

    tables = [
        CatalogTable(
            default_schema,
            spell(t),
            tuple(spell(c) for c in cols),
            "view" if t in {"employee_directory", "salaries"} else "table",
        )
        for t, cols in _COLUMNS.items()
    ]
    tables.append(CatalogTable("hr", spell("reviews"), tuple(spell(c) for c in ("employee_id", "score", "notes"))))
    # A second orders table in another schema: an unqualified `orders` means the default schema's.
    tables.append(CatalogTable("sales", spell("orders"), tuple(spell(c) for c in ("id", "region"))))
    return InMemoryCatalog(tables, default_schema)


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("ATTACH DATABASE ':memory:' AS hr")
    conn.executescript(SQLITE_DDL)
    yield conn
    conn.close()


def _sqlite_catalog(conn: sqlite3.Connection) -> InMemoryCatalog:
    """Read from the real database as the SQLite dialect does: main tables have no schema."""
    tables = []
    for schema in ("main", "hr"):
        rows = conn.execute(f"SELECT name, type FROM {schema}.sqlite_master WHERE type IN ('table', 'view')")
        for name, kind in rows.fetchall():
            columns = tuple(r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?, ?)", (name, schema)))
            tables.append(CatalogTable(None if schema == "main" else schema, name, columns, kind))
    return InMemoryCatalog(tables, None)


@pytest.fixture(scope="module")
def catalogs(sqlite_db: sqlite3.Connection) -> dict[str, Catalog]:
    return {
        "sqlite": _sqlite_catalog(sqlite_db),
        "postgres": _server_catalog("public", capitalise=False),
        "tsql": _server_catalog("dbo", capitalise=True),
    }


def _tree(sql: str, dialect: str) -> guard.exp.Expression:
    verdict = guard.check(sql, dialect)
    assert verdict.allowed, f"the guard refused a test statement: {verdict.message}"
    assert verdict.tree is not None
    return verdict.tree


# (dialect, statement, a name the refusal must mention)
REFUSED: list[tuple[str, str, str]] = [
    # --- a denied schema -----------------------------------------------------------------------------
    ("sqlite", "SELECT score FROM hr.reviews", "hr.reviews"),
    ("postgres", "SELECT score FROM hr.reviews", "hr.reviews"),
    ("tsql", "SELECT Score FROM [hr].[Reviews]", "hr.Reviews"),
    ("tsql", "SELECT TOP 5 r.Notes FROM HR.Reviews AS r WITH (NOLOCK)", "hr.Reviews"),
    ("postgres", 'SELECT "score" FROM "hr"."reviews"', "hr.reviews"),
    ("postgres", "SELECT Score FROM HR.Reviews", "hr.reviews"),
    ("postgres", "SELECT name FROM employees WHERE id IN (SELECT employee_id FROM hr.reviews WHERE score > 4)", "hr"),
    (
        "tsql",
        "SELECT e.Name FROM dbo.Employees e WHERE EXISTS (SELECT 1 FROM hr.Reviews r WHERE r.EmployeeId = e.Id)",
        "hr.Reviews",
    ),
    ("sqlite", "SELECT name FROM employees UNION SELECT notes FROM hr.reviews", "hr.reviews"),
    ("postgres", "WITH r AS (SELECT * FROM hr.reviews) SELECT count(*) FROM r", "hr.reviews"),
    (
        "tsql",
        "SELECT * FROM dbo.Employees e CROSS APPLY (SELECT TOP 1 Score FROM hr.Reviews r WHERE r.EmployeeId = e.Id) x",
        "hr.Reviews",
    ),
    ("tsql", "SELECT Score FROM shop.hr.Reviews", "hr.Reviews"),  # three-part name: the database part is ignored
    # --- a denied table, in any schema -----------------------------------------------------------------
    ("sqlite", "SELECT amount FROM payroll", "payroll"),
    ("sqlite", "SELECT count(*) FROM payroll", "payroll"),
    ("postgres", "SELECT p.amount FROM public.payroll p", "public.payroll"),
    ("tsql", "SELECT SUM(Amount) FROM dbo.Payroll", "dbo.Payroll"),
    ("tsql", "SELECT Amount FROM PAYROLL", "dbo.Payroll"),
    ("sqlite", "SELECT e.name FROM employees e JOIN payroll p ON p.employee_id = e.id", "payroll"),
    (
        "postgres",
        "SELECT name FROM employees e CROSS JOIN LATERAL (SELECT amount FROM payroll WHERE employee_id = e.id) x",
        "payroll",
    ),
    ("sqlite", "SELECT name, (SELECT max(amount) FROM payroll) AS top_pay FROM employees", "payroll"),
    ("postgres", "SELECT * FROM (SELECT employee_id FROM payroll) AS d", "payroll"),
    ("tsql", "WITH p AS (SELECT EmployeeId FROM Payroll) SELECT * FROM p", "dbo.Payroll"),
    ("sqlite", "SELECT 1 WHERE EXISTS (SELECT 1 FROM payroll WHERE amount > 1000)", "payroll"),
    # a CTE named like an allowed table does not hide the denied table inside it
    ("sqlite", "WITH employees AS (SELECT employee_id AS id FROM payroll) SELECT id FROM employees", "payroll"),
    # without RECURSIVE, a CTE's body naming itself or a later CTE reads the real table (PostgreSQL)
    ("postgres", "WITH payroll AS (SELECT * FROM payroll) SELECT * FROM payroll", "public.payroll"),
    ("postgres", "WITH employees AS (SELECT * FROM employees) SELECT name FROM employees", "leave out salary"),
    ("postgres", "WITH a AS (SELECT * FROM payroll), payroll AS (SELECT 1 AS x) SELECT * FROM a", "public.payroll"),
    ("postgres", "SELECT * FROM (WITH payroll AS (SELECT 1 AS a) SELECT * FROM payroll) d, payroll", "public.payroll"),
    # --- a denied column, named -------------------------------------------------------------------------
    ("sqlite", "SELECT salary FROM employees", "employees.salary"),
    ("sqlite", "SELECT e.salary FROM employees AS e", "employees.salary"),
    ("sqlite", "SELECT main.employees.salary FROM main.employees", "employees.salary"),
    ("postgres", "SELECT public.employees.salary FROM public.employees", "public.employees.salary"),
    ("tsql", "SELECT [Salary] FROM dbo.Employees", "dbo.Employees.Salary"),
    ("tsql", "SELECT SALARY FROM EMPLOYEES", "dbo.Employees.Salary"),
    ("postgres", 'SELECT "salary" FROM employees', "salary"),
    ("sqlite", "SELECT name FROM employees WHERE salary > 90000", "employees.salary"),
    ("sqlite", "SELECT name FROM employees ORDER BY salary DESC", "employees.salary"),
    ("postgres", "SELECT dept_id FROM employees GROUP BY dept_id HAVING avg(salary) > 10", "salary"),
    ("postgres", "SELECT dept_id, salary FROM employees GROUP BY dept_id, salary", "salary"),
    ("tsql", "SELECT d.Name FROM dbo.Departments d JOIN dbo.Employees e ON e.DeptId = d.Id AND e.Salary > 0", "Salary"),
    ("sqlite", "SELECT upper(cast(salary AS TEXT)) FROM employees", "salary"),
    ("postgres", "SELECT coalesce(nullif(e.salary, 0), 1) FROM employees e", "salary"),
    ("tsql", "SELECT CASE WHEN Salary > 1 THEN 'rich' ELSE 'not' END FROM dbo.Employees", "Salary"),
    ("sqlite", "SELECT name FROM customers WHERE ssn LIKE '123%'", "customers.ssn"),
    (
        "postgres",
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn = 'x')",
        "customers.ssn",
    ),
    (
        "tsql",
        "SELECT o.Id FROM Orders o WHERE EXISTS (SELECT 1 FROM Customers c WHERE c.Id = o.CustomerId AND c.Ssn = 'x')",
        "Ssn",
    ),
    ("postgres", "SELECT rank() OVER (ORDER BY salary) FROM employees", "salary"),
    ("sqlite", "SELECT group_concat(salary) FROM employees", "salary"),
    ("tsql", "SELECT STRING_AGG(CAST(Salary AS varchar(20)), ',') FROM dbo.Employees", "Salary"),
    ("sqlite", "SELECT name FROM customers UNION SELECT ssn FROM customers", "ssn"),
    ("tsql", "SELECT j.[value] FROM dbo.Employees e CROSS APPLY OPENJSON(CAST(e.Salary AS nvarchar(20))) j", "Salary"),
    # aliases and derived tables do not launder a denied column
    ("sqlite", "SELECT pay FROM (SELECT salary AS pay FROM employees)", "employees.salary"),
    ("postgres", "WITH x AS (SELECT salary AS s FROM employees) SELECT s FROM x", "salary"),
    ("postgres", "SELECT d.s FROM (SELECT e.salary s FROM employees e) d", "salary"),
    ("sqlite", "SELECT name AS n FROM employees ORDER BY salary", "salary"),
    # correlated: the unqualified column binds to the outer table
    (
        "sqlite",
        "SELECT name FROM employees WHERE EXISTS (SELECT 1 FROM departments d WHERE d.id = dept_id AND salary > 1)",
        "employees.salary",
    ),
    # unqualified and ambiguous: it could be the denied one, so it is refused (fail closed)
    ("sqlite", "SELECT salary FROM employees, departments", "employees.salary"),
    ("tsql", "SELECT Ssn FROM dbo.Orders o JOIN dbo.Customers c ON c.Id = o.CustomerId", "Ssn"),
    # comparing by name reads the column too
    ("sqlite", "SELECT a.name FROM employees a JOIN employees b USING (salary)", "salary"),
    ("postgres", "SELECT a.name FROM employees a NATURAL JOIN employees b", "salary"),
    # --- SELECT * and its relatives ---------------------------------------------------------------------
    ("sqlite", "SELECT * FROM employees", "leave out salary"),
    ("postgres", "SELECT * FROM customers", "leave out ssn"),
    ("tsql", "SELECT TOP 10 * FROM dbo.Employees", "leave out Salary"),
    ("sqlite", "SELECT e.* FROM employees e JOIN departments d ON d.id = e.dept_id", "leave out salary"),
    ("tsql", "SELECT c.* FROM dbo.Orders o JOIN dbo.Customers c ON c.Id = o.CustomerId", "leave out Ssn"),
    ("postgres", "SELECT * FROM orders o, customers c WHERE c.id = o.customer_id", "leave out ssn"),
    ("sqlite", "SELECT * FROM (SELECT * FROM employees) AS t", "leave out salary"),
    ("postgres", "WITH all_emps AS (SELECT * FROM employees) SELECT name FROM all_emps", "leave out salary"),
    ("postgres", "SELECT row_to_json(e) FROM employees e", "leave out salary"),
    ("postgres", "SELECT to_jsonb(c) FROM customers c", "leave out ssn"),
    ("postgres", "SELECT count(e.*) FROM employees e", "leave out salary"),
    ("tsql", "SELECT * FROM dbo.Customers FOR JSON AUTO", "leave out Ssn"),
    # more ways to reach a column: renamed by a table alias, scalar subqueries, clauses, PostgreSQL shorthands
    ("postgres", "SELECT c FROM employees AS e(a, b, c)", "public.employees.salary"),
    ("postgres", "SELECT name AS salary FROM employees ORDER BY salary + 0", "salary"),
    ("postgres", "SELECT (SELECT salary) FROM employees", "salary"),
    ("postgres", "TABLE employees", "leave out salary"),
    ("postgres", "SELECT (e).salary FROM employees e", "salary"),
    ("postgres", "SELECT jsonb_agg(to_jsonb(e) - 'salary') FROM employees e", "leave out salary"),
    ("postgres", "SELECT DISTINCT ON (salary) name FROM employees", "salary"),
    ("postgres", "SELECT count(*) FILTER (WHERE salary > 1) FROM employees", "salary"),
    ("postgres", "SELECT string_agg(name, ',' ORDER BY salary) FROM employees", "salary"),
    ("postgres", "SELECT name FROM employees e, LATERAL unnest(ARRAY[e.salary]) u", "salary"),
    ("tsql", "SELECT v FROM dbo.Employees UNPIVOT (v FOR c IN (Salary, Name)) u", "Salary"),
    ("tsql", "SELECT TOP (SELECT COUNT(Salary) FROM Employees) Id FROM Orders", "Salary"),
    ("tsql", "SELECT (SELECT e.* FOR JSON PATH) FROM dbo.Employees e", "leave out Salary"),
    ("sqlite", "SELECT * FROM orders UNION ALL SELECT id, name, salary, dept_id FROM employees", "salary"),
    ("sqlite", "VALUES ((SELECT salary FROM employees LIMIT 1))", "employees.salary"),
    ("postgres", "SELECT ARRAY(SELECT salary FROM employees)", "salary"),
    ("postgres", "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY salary) FROM employees", "salary"),
    ("tsql", "SELECT x = Salary FROM dbo.Employees", "Salary"),  # T-SQL's alias = expression
    # a view is checked by its own name and columns
    ("sqlite", "SELECT salary FROM salaries", "salaries.salary"),
    ("tsql", "SELECT * FROM dbo.Salaries", "leave out Salary"),
]

ALLOWED: list[tuple[str, str]] = [
    ("sqlite", "SELECT name, dept_id FROM employees"),
    ("sqlite", "SELECT count(*) FROM employees"),
    ("sqlite", "SELECT main.employees.name FROM main.employees"),
    ("sqlite", "SELECT e.name, d.name FROM employees e JOIN departments d ON d.id = e.dept_id"),
    ("sqlite", "SELECT * FROM orders"),
    ("sqlite", "SELECT o.*, c.name FROM orders o JOIN customers c ON c.id = o.customer_id"),
    ("sqlite", "SELECT * FROM employee_directory"),
    ("sqlite", "SELECT name FROM salaries"),
    ("sqlite", "WITH payroll AS (SELECT 1 AS amount) SELECT amount FROM payroll"),  # a CTE, not the table
    ("sqlite", "SELECT name AS salary FROM departments ORDER BY salary"),
    ("sqlite", "SELECT salary FROM (SELECT budget AS salary FROM departments)"),
    ("sqlite", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT i FROM n"),
    ("sqlite", "SELECT name FROM employees WHERE dept_id IN (SELECT id FROM departments WHERE budget > 10)"),
    ("sqlite", "SELECT * FROM (SELECT name, dept_id FROM employees) AS d"),
    ("postgres", "SELECT name FROM employees e WHERE EXISTS (SELECT 1 FROM orders o WHERE o.id = e.id)"),
    (
        "postgres",
        "SELECT c.name, count(o.id) FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.name",
    ),
    ("postgres", "SELECT * FROM generate_series(1, 3) AS g(n)"),
    ("postgres", "SELECT row_to_json(o) FROM orders o"),
    ("postgres", "SELECT region FROM sales.orders"),
    ("postgres", "SELECT name, rank() OVER (PARTITION BY dept_id ORDER BY name) FROM employees"),
    ("postgres", "SELECT 1"),
    ("postgres", "VALUES ((SELECT name FROM employees LIMIT 1))"),
    ("postgres", "SELECT name FROM employees e WHERE EXISTS (SELECT * FROM customers c WHERE c.id = e.id)"),
    ("postgres", "SELECT a, b FROM employees AS e(a, b)"),  # renamed id and name
    ("postgres", "SELECT name AS salary FROM employees ORDER BY salary"),  # the alias, not the column
    ("postgres", "SELECT name FROM employees ORDER BY name FETCH FIRST 1 ROWS ONLY"),
    ("postgres", "SELECT name FROM employees UNION ALL SELECT name FROM customers"),
    ("tsql", "SELECT TOP 10 Name, DeptId FROM dbo.Employees WITH (NOLOCK) ORDER BY Name"),
    (
        "tsql",
        "SELECT e.Name, x.Total FROM Employees e CROSS APPLY (SELECT TOP 1 o.Total FROM Orders o WHERE o.Id = e.Id) x",
    ),
    ("tsql", "SELECT Name FROM dbo.Customers FOR JSON PATH"),
    ("tsql", "WITH n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5) SELECT i FROM n"),  # recursion
    ("tsql", "SELECT o.Id, c.Name FROM dbo.Orders o JOIN dbo.Customers c ON c.Id = o.CustomerId WHERE o.Total > 10"),
    ("tsql", "SELECT COUNT(*) FROM dbo.Employees WHERE EXISTS (SELECT * FROM dbo.Orders)"),
    ("tsql", "SELECT * FROM dbo.EmployeeDirectory"),
    ("tsql", "SELECT Region, COUNT(*) FROM sales.Orders GROUP BY Region"),
    ("tsql", "SELECT e.Name FROM Employees e WHERE e.Id IN (SELECT ManagerId FROM Employees)"),
    ("tsql", "WITH d AS (SELECT Id, Name FROM dbo.Departments) SELECT d.* FROM d"),
    ("tsql", "SELECT c.Name, c.Email FROM dbo.Customers c WHERE c.Id IN (SELECT CustomerId FROM dbo.Orders)"),
]


@pytest.mark.parametrize(("dialect", "sql", "named"), REFUSED)
def test_reaching_denied_data_is_refused_naming_it(
    catalogs: dict[str, Catalog], sqlite_db: sqlite3.Connection, dialect: str, sql: str, named: str
) -> None:
    if dialect == "sqlite":
        sqlite_db.execute(sql).fetchall()  # a real statement an engine runs: it would reach the data
    decision = check_statement(_tree(sql, dialect), catalogs[dialect], READER)
    assert not decision.allowed
    assert decision.message is not None and decision.message.startswith("Refused by the access policy")
    assert named.lower() in decision.message.lower(), decision.message


@pytest.mark.parametrize(("dialect", "sql"), ALLOWED)
def test_permitted_statements_pass(
    catalogs: dict[str, Catalog], sqlite_db: sqlite3.Connection, dialect: str, sql: str
) -> None:
    if dialect == "sqlite":
        sqlite_db.execute(sql).fetchall()
    decision = check_statement(_tree(sql, dialect), catalogs[dialect], READER)
    assert decision.allowed, decision.message
    assert decision.message is None


def test_the_done_when_counts_hold() -> None:
    assert len(REFUSED) >= 40 and len(ALLOWED) >= 20
    assert {d for d, _, _ in REFUSED} == {d for d, _ in ALLOWED} == {"sqlite", "postgres", "tsql"}


def test_select_star_names_the_table_and_the_columns_to_leave_out(catalogs: dict[str, Catalog]) -> None:
    decision = check_statement(_tree("SELECT * FROM dbo.Employees", "tsql"), catalogs["tsql"], READER)
    assert decision.message == (
        "Refused by the access policy: * over dbo.Employees includes columns role reader may not see; "
        "list the columns you need and leave out Salary."
    )
    assert decision.denied_columns == ("dbo.Employees.Salary",)


def test_denied_table_names_the_pattern(catalogs: dict[str, Catalog]) -> None:
    decision = check_statement(_tree("SELECT * FROM hr.reviews", "postgres"), catalogs["postgres"], READER)
    assert decision.denied_tables == ("hr.reviews",)
    assert 'hr.reviews (denied by "hr.*")' in (decision.message or "")


def test_ambiguous_unqualified_column_says_to_qualify_it(catalogs: dict[str, Catalog]) -> None:
    # customers.name is fine, but `ssn`... and `name` exists in both; the denied one is what matters
    sql = "SELECT id FROM customers, orders WHERE id = 1"
    assert check_statement(_tree(sql, "sqlite"), catalogs["sqlite"], READER).allowed
    both = InMemoryCatalog(
        [CatalogTable(None, "employees", ("id", "salary")), CatalogTable(None, "bonuses", ("id", "salary"))]
    )
    decision = check_statement(_tree("SELECT salary FROM employees, bonuses", "sqlite"), both, READER)
    assert not decision.allowed
    assert "employees.salary" in (decision.message or "") and "qualify it" in (decision.message or "")
    qualified = check_statement(_tree("SELECT b.salary FROM employees e, bonuses b", "sqlite"), both, READER)
    assert qualified.allowed, qualified.message


def test_allow_list_role_reads_only_what_it_names(catalogs: dict[str, Catalog]) -> None:
    pg = catalogs["postgres"]
    assert check_statement(
        _tree("SELECT o.total, c.ssn FROM orders o JOIN customers c ON true", "postgres"), pg, ANALYST
    ).allowed
    assert check_statement(_tree("SELECT name FROM departments", "postgres"), pg, ANALYST).allowed
    refused = check_statement(_tree("SELECT name FROM employees", "postgres"), pg, ANALYST)
    assert not refused.allowed
    assert "public.employees (not in the tables this role may read)" in (refused.message or "")


def test_unknown_tables_are_judged_by_their_written_name(catalogs: dict[str, Catalog]) -> None:
    pg = catalogs["postgres"]
    # a table the catalog does not list (created since, or a system view): unqualified means the default schema
    assert not check_statement(_tree("SELECT 1 FROM hr.new_table", "postgres"), pg, READER).allowed
    assert check_statement(_tree("SELECT tablename FROM pg_tables", "postgres"), pg, READER).allowed
    # its columns are unknown, so * over it cannot be proven free of *.ssn
    star = check_statement(_tree("SELECT * FROM pg_tables", "postgres"), pg, READER)
    assert not star.allowed and "columns are not in the catalog" in (star.message or "")
    assert not check_statement(_tree("SELECT ssn FROM new_people", "postgres"), pg, READER).allowed


def test_an_unrestricted_role_and_an_unnamed_role_pass_everything(catalogs: dict[str, Catalog]) -> None:
    writer = POLICY.role("writer")
    assert not writer.restricts
    for sql, dialect in [("SELECT * FROM hr.reviews", "postgres"), ("SELECT * FROM dbo.Employees", "tsql")]:
        assert check_statement(_tree(sql, dialect), catalogs[dialect], writer).allowed


def test_tables_read_names_every_table_for_the_audit(catalogs: dict[str, Catalog]) -> None:
    sql = "WITH x AS (SELECT id FROM orders) SELECT c.name FROM customers c JOIN x ON x.id = c.id"
    assert set(tables_read(_tree(sql, "postgres"), catalogs["postgres"])) == {"public.orders", "public.customers"}
    decision = check_statement(_tree(sql, "postgres"), catalogs["postgres"], READER)
    assert set(decision.tables) == {"public.orders", "public.customers"}  # the CTE x is no table


def test_filtering_helpers(catalogs: dict[str, Catalog]) -> None:
    tsql = catalogs["tsql"]
    names = [t.qualified_name for t in visible_tables(READER, tsql.tables())]
    assert "dbo.Employees" in names and "dbo.Payroll" not in names and "hr.Reviews" not in names
    employees = tsql.resolve("dbo", "employees")[0]
    assert visible_columns(READER, employees, list(employees.columns or ())) == ["Id", "Name", "DeptId", "ManagerId"]
    # `orders` has no schema, so it allows dbo.Orders and sales.Orders
    analyst_tables = [t.qualified_name for t in visible_tables(ANALYST, tsql.tables())]
    assert analyst_tables == ["dbo.Customers", "dbo.Orders", "dbo.Departments", "sales.Orders"]
    caps = effective_caps(ANALYST, 1000, 30.0)
    assert (caps.max_rows, caps.timeout_seconds) == (50, 5.0)
    assert effective_caps(ANALYST, 20, 2.0).max_rows == 20  # never above the global cap
    reader_caps = effective_caps(READER, 1000, 30.0)
    assert (reader_caps.max_rows, reader_caps.timeout_seconds) == (1000, 30.0)


def test_a_check_failure_refuses_instead_of_raising(catalogs: dict[str, Catalog]) -> None:
    class Broken:
        default_schema = None

        def tables(self) -> list[CatalogTable]:
            return []

        def resolve(self, schema: str | None, name: str) -> list[CatalogTable]:
            raise RuntimeError("catalog went away")

    decision = check_statement(_tree("SELECT 1 FROM orders", "sqlite"), Broken(), READER)
    assert not decision.allowed and "could not be checked" in (decision.message or "")


def test_a_statement_without_a_tree_passes_only_for_an_unrestricted_role(catalogs: dict[str, Catalog]) -> None:
    sql = "SELECT Name FROM dbo.Employees OPTION (USE HINT ('DISABLE_OPTIMIZER_ROWGOAL'))"
    verdict = guard.check(sql, "tsql")
    assert verdict.allowed and verdict.rewritten and verdict.tree is None
    refused = check_statement(verdict.tree, catalogs["tsql"], READER)
    assert not refused.allowed and "only be checked after a rewrite" in (refused.message or "")
    assert check_statement(verdict.tree, catalogs["tsql"], POLICY.role("writer")).allowed


def test_the_shared_guard_tree_is_not_changed(catalogs: dict[str, Catalog]) -> None:
    tree = _tree(
        "WITH x AS (SELECT * FROM employees) SELECT e.*, x.name FROM employees e JOIN x ON x.id = e.id", "postgres"
    )
    before = repr(tree)
    check_statement(tree, catalogs["postgres"], READER)
    assert repr(tree) == before


def test_a_renamed_column_of_an_ambiguous_table_is_refused() -> None:
    # `people` is in two schemas and neither is the default: the rename cannot be placed on one of them
    two = InMemoryCatalog(
        [CatalogTable("a", "people", ("id", "ssn")), CatalogTable("b", "people", ("id", "name"))], default_schema=None
    )
    decision = check_statement(_tree("SELECT x FROM people AS p(x, y)", "postgres"), two, READER)
    assert not decision.allowed
    assert "x renames a column of a.people that cannot be placed" in (decision.message or "")


def test_star_over_a_table_whose_columns_are_unknown() -> None:
    unknown = InMemoryCatalog(
        [CatalogTable("public", "people", None), CatalogTable("public", "orders", None)], "public"
    )
    refused = check_statement(_tree("SELECT * FROM people", "postgres"), unknown, READER)
    assert not refused.allowed and "columns are not in the catalog" in (refused.message or "")
    # no column pattern names `orders` except *.ssn, which names every table
    assert not check_statement(_tree("SELECT ssn FROM orders", "postgres"), unknown, READER).allowed
    assert check_statement(_tree("SELECT id FROM orders", "postgres"), unknown, READER).allowed
