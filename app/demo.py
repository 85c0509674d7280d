"""Embedded demo database: a small, realistic shop in one SQLite file.

Built deterministically (seeded random, fixed dates) so tests and screenshots see the same rows on
every machine. The build writes a private temp file next to the target and links it into place only
when it is complete and consistent, so a killed build never leaves a half-written database and two
concurrent builders never clobber each other.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

SEED = 20240601
# Fixed "today" of the shop: the data must not depend on when it is built.
EPOCH = datetime(2024, 6, 30, 18, 0, 0)

COUNTS = {"categories": 10, "suppliers": 12, "products": 120, "customers": 400, "orders": 1500}

SCHEMA = """
CREATE TABLE categories (
    category_id   INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    description   TEXT
);
CREATE TABLE suppliers (
    supplier_id   INTEGER PRIMARY KEY,
    company_name  TEXT NOT NULL,
    contact_email TEXT,
    country       TEXT NOT NULL
);
CREATE TABLE products (
    product_id     INTEGER PRIMARY KEY,
    sku            VARCHAR(16) NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    category_id    INTEGER NOT NULL REFERENCES categories (category_id),
    supplier_id    INTEGER REFERENCES suppliers (supplier_id),
    unit_price     NUMERIC(10, 2) NOT NULL CHECK (unit_price >= 0),
    units_in_stock INTEGER NOT NULL DEFAULT 0,
    weight_kg      REAL,
    discontinued   BOOLEAN NOT NULL DEFAULT 0,
    thumbnail      BLOB,
    added_on       DATE NOT NULL
);
CREATE TABLE customers (
    customer_id    INTEGER PRIMARY KEY,
    first_name     TEXT NOT NULL,
    last_name      TEXT NOT NULL,
    email          TEXT NOT NULL UNIQUE,
    phone          TEXT,
    city           TEXT NOT NULL,
    country        TEXT NOT NULL,
    signup_date    DATE NOT NULL,
    loyalty_points INTEGER NOT NULL DEFAULT 0,
    is_active      BOOLEAN NOT NULL DEFAULT 1
);
CREATE TABLE orders (
    order_id       INTEGER PRIMARY KEY,
    customer_id    INTEGER NOT NULL REFERENCES customers (customer_id),
    ordered_at     DATETIME NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'returned')),
    shipped_at     DATETIME,
    shipping_fee   NUMERIC(8, 2) NOT NULL DEFAULT 0,
    ship_city      TEXT NOT NULL,
    ship_country   TEXT NOT NULL,
    notes          TEXT
);
CREATE TABLE order_lines (
    order_id       INTEGER NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    line_number    INTEGER NOT NULL,
    product_id     INTEGER NOT NULL REFERENCES products (product_id),
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    unit_price     NUMERIC(10, 2) NOT NULL,
    discount       REAL NOT NULL DEFAULT 0 CHECK (discount >= 0 AND discount < 1),
    PRIMARY KEY (order_id, line_number)
);
-- A change log with no primary key on purpose: real databases have such tables.
CREATE TABLE price_history (
    product_id     INTEGER NOT NULL REFERENCES products (product_id),
    changed_on     DATE NOT NULL,
    old_price      NUMERIC(10, 2) NOT NULL,
    new_price      NUMERIC(10, 2) NOT NULL
);

CREATE INDEX ix_products_category ON products (category_id);
CREATE INDEX ix_products_supplier ON products (supplier_id);
CREATE INDEX ix_customers_location ON customers (country, city);
CREATE INDEX ix_orders_customer ON orders (customer_id);
CREATE INDEX ix_orders_ordered_at ON orders (ordered_at);
CREATE INDEX ix_order_lines_product ON order_lines (product_id);
CREATE INDEX ix_price_history_product ON price_history (product_id, changed_on);

CREATE VIEW order_totals AS
SELECT o.order_id,
       o.customer_id,
       o.ordered_at,
       o.status,
       COUNT(l.line_number) AS line_count,
       SUM(l.quantity) AS item_count,
       ROUND(SUM(l.quantity * l.unit_price * (1 - l.discount)), 2) AS subtotal,
       ROUND(SUM(l.quantity * l.unit_price * (1 - l.discount)) + o.shipping_fee, 2) AS total
FROM orders AS o
JOIN order_lines AS l ON l.order_id = o.order_id
GROUP BY o.order_id;

CREATE VIEW customer_lifetime_value AS
SELECT c.customer_id,
       c.first_name || ' ' || c.last_name AS customer_name,
       c.country,
       COUNT(t.order_id) AS orders,
       COALESCE(ROUND(SUM(t.total), 2), 0) AS lifetime_value,
       MAX(t.ordered_at) AS last_order_at
FROM customers AS c
LEFT JOIN order_totals AS t ON t.customer_id = c.customer_id AND t.status NOT IN ('cancelled', 'returned')
GROUP BY c.customer_id;
"""

CATEGORIES = [
    ("Laptops", "Notebooks and ultrabooks"),
    ("Monitors", "Desktop displays"),
    ("Keyboards", "Mechanical and membrane keyboards"),
    ("Mice", "Mice, trackballs and trackpads"),
    ("Audio", "Headphones, speakers and microphones"),
    ("Storage", "SSDs, hard drives and memory cards"),
    ("Networking", "Routers, switches and access points"),
    ("Cables & Adapters", "Cables, hubs and adapters"),
    ("Office", "Desks, chairs and lamps"),
    ("Accessories", "Bags, stands and everything else"),
]

# (noun, base price) per category, in CATEGORIES order.
PRODUCT_NOUNS = [
    [("Ultrabook 13", 1099), ("Workstation 15", 1899), ("Chromebook 14", 349), ("Gaming Laptop 17", 1599)],
    [('Monitor 24" FHD', 159), ('Monitor 27" QHD', 299), ('Monitor 32" 4K', 549), ('Ultrawide 34"', 699)],
    [("Mechanical Keyboard", 119), ("Wireless Keyboard", 59), ("Compact Keyboard", 79)],
    [("Wireless Mouse", 29), ("Ergonomic Mouse", 69), ("Trackball", 89), ("Gaming Mouse", 59)],
    [("Noise-Cancelling Headphones", 249), ("USB Microphone", 129), ("Bluetooth Speaker", 79), ("Earbuds", 99)],
    [("NVMe SSD 1TB", 89), ("NVMe SSD 2TB", 159), ("Portable HDD 4TB", 109), ("microSD 256GB", 29)],
    [("Wi-Fi 6 Router", 149), ("8-port Switch", 39), ("Mesh Access Point", 119)],
    [('Cable 2m "USB-C <-> USB-A"', 12), ("HDMI Cable 2m", 9), ("USB-C Hub 7-in-1", 49), ("DisplayPort Cable", 15)],
    [("Standing Desk", 499), ("Office Chair", 329), ("LED Desk Lamp", 45)],
    [("Laptop Sleeve", 25), ("Monitor Arm", 89), ("Laptop Stand", 39), ("Webcam Cover (3-pack)", 6)],
]
BRANDS = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Adatum", "Litware", "Proseware", "Wingtip"]

SUPPLIER_NAMES = [
    ("Northwind Traders", "US"),
    ("Contoso Ltd", "GB"),
    ("Fabrikam GmbH", "DE"),
    ("Tailspin Toys", "US"),
    ("Adatum Corporation", "CA"),
    ("Litware Inc.", "US"),
    ("Proseware S.A.", "FR"),
    ("Wingtip Oy", "FI"),
    ("Lucerne Publishing", "CH"),
    ("Margie's Travel", "AU"),
    ("Trey Research", "NL"),
    ("Woodgrove & Co", "JP"),
]

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Tim",
    "Hedy",
    "Donald",
    "Katherine",
    "John",
    "Sophie",
    "José",
    "Zoë",
    "Łukasz",
    "Søren",
    "Chloé",
    "Mateo",
    "Aisha",
    "Hiroshi",
    "Priya",
    "Olu",
    "Ingrid",
    "Noah",
    "Mia",
    "Liam",
    "Emma",
    "Yusuf",
    "Elena",
]
LAST_NAMES = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Knuth",
    "Johnson",
    "McCarthy",
    "Wilson",
    "García",
    "Müller",
    "Kowalski",
    "Kierkegaard",
    "Dubois",
    "Rossi",
    "Khan",
    "Tanaka",
    "Patel",
    "Adeyemi",
    "Larsen",
    "O'Brien",
    "Nguyen",
    "Schmidt",
    "Silva",
]
CITIES = [
    ("Seattle", "US"),
    ("Austin", "US"),
    ("New York", "US"),
    ("Toronto", "CA"),
    ("London", "GB"),
    ("Manchester", "GB"),
    ("Berlin", "DE"),
    ("München", "DE"),
    ("Paris", "FR"),
    ("Lyon", "FR"),
    ("Madrid", "ES"),
    ("Milano", "IT"),
    ("Warszawa", "PL"),
    ("København", "DK"),
    ("Stockholm", "SE"),
    ("Amsterdam", "NL"),
    ("Zürich", "CH"),
    ("Tokyo", "JP"),
    ("Sydney", "AU"),
    ("São Paulo", "BR"),
]
ORDER_NOTES = [
    "Leave at the front desk",
    "Gift wrap, please",
    "Call before delivery",
    "Deliver after 5 pm",
    "Invoice to accounts@company",
    "Fragile: contains a monitor",
]
# Weighted so that most orders are finished and a few are still open.
STATUSES = ["delivered"] * 60 + ["shipped"] * 12 + ["paid"] * 8 + ["pending"] * 6 + ["cancelled"] * 8 + ["returned"] * 6


def _money(value: float) -> float:
    return round(value + 1e-9, 2)


def _generate(rng: random.Random) -> dict[str, list[tuple]]:
    data: dict[str, list[tuple]] = {}
    data["categories"] = [(i + 1, name, desc) for i, (name, desc) in enumerate(CATEGORIES)]
    data["suppliers"] = [
        (i + 1, name, f"sales@{name.split()[0].lower().strip(chr(39) + 's')}.example", country)
        for i, (name, country) in enumerate(SUPPLIER_NAMES)
    ]

    products: list[tuple] = []
    start = date(2021, 1, 4)
    while len(products) < COUNTS["products"]:
        product_id = len(products) + 1
        category_index = (product_id - 1) % len(CATEGORIES)
        noun, base = rng.choice(PRODUCT_NOUNS[category_index])
        brand = rng.choice(BRANDS)
        price = _money(base * rng.uniform(0.85, 1.25) - 0.01) if base > 10 else _money(base - 0.01)
        thumbnail = bytes([0x89, 0x50, 0x4E, 0x47, product_id % 256, rng.randrange(256)]) if product_id % 3 else None
        products.append(
            (
                product_id,
                f"{brand[:3].upper()}-{category_index + 1:02d}-{product_id:04d}",
                f"{brand} {noun}",
                category_index + 1,
                None if product_id % 17 == 0 else rng.randint(1, len(SUPPLIER_NAMES)),
                price,
                rng.choice([0, 0, rng.randint(1, 20), rng.randint(20, 400)]),
                round(rng.uniform(0.02, 25.0), 3) if category_index in (0, 1, 8) else round(rng.uniform(0.01, 2.5), 3),
                1 if rng.random() < 0.08 else 0,
                thumbnail,
                (start + timedelta(days=rng.randint(0, 1000))).isoformat(),
            )
        )
    data["products"] = products

    customers: list[tuple] = []
    for customer_id in range(1, COUNTS["customers"] + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, country = rng.choice(CITIES)
        local = f"{first}.{last}".lower().replace("'", "").replace(" ", "")
        local = local.encode("ascii", "ignore").decode() or "customer"
        customers.append(
            (
                customer_id,
                first,
                last,
                f"{local}.{customer_id}@example.com",
                None
                if rng.random() < 0.25
                else f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                city,
                country,
                (date(2020, 1, 1) + timedelta(days=rng.randint(0, 1500))).isoformat(),
                rng.choice([0, 0, rng.randint(10, 500), rng.randint(500, 5000)]),
                0 if rng.random() < 0.07 else 1,
            )
        )
    data["customers"] = customers

    orders: list[tuple] = []
    lines: list[tuple] = []
    span_seconds = int((EPOCH - datetime(2023, 1, 1)).total_seconds())
    for order_id in range(1, COUNTS["orders"] + 1):
        # Some customers order much more often than others (squared uniform skews to low ids).
        customer = customers[int(len(customers) * rng.random() ** 2)] if rng.random() < 0.4 else rng.choice(customers)
        ordered_at = datetime(2023, 1, 1) + timedelta(seconds=rng.randint(0, span_seconds))
        status = rng.choice(STATUSES)
        if ordered_at > EPOCH - timedelta(days=3) and status in ("delivered", "returned"):
            status = "paid"
        shipped_at = None
        if status in ("shipped", "delivered", "returned"):
            shipped_at = (ordered_at + timedelta(hours=rng.randint(4, 96))).isoformat(sep=" ")
        ship_city, ship_country = (customer[5], customer[6]) if rng.random() < 0.9 else rng.choice(CITIES)
        orders.append(
            (
                order_id,
                customer[0],
                ordered_at.isoformat(sep=" "),
                status,
                shipped_at,
                rng.choice([0.0, 0.0, 4.99, 9.99, 14.5]),
                ship_city,
                ship_country,
                rng.choice(ORDER_NOTES) if rng.random() < 0.12 else None,
            )
        )
        chosen = rng.sample(products, k=rng.choice([1, 1, 2, 2, 3, 3, 4, 5]))
        for line_number, product in enumerate(chosen, start=1):
            lines.append(
                (
                    order_id,
                    line_number,
                    product[0],
                    rng.choice([1, 1, 1, 2, 2, 3, 5, 10]),
                    product[5],
                    rng.choice([0.0, 0.0, 0.0, 0.05, 0.1, 0.15]),
                )
            )
    data["orders"] = orders
    data["order_lines"] = lines

    history: list[tuple] = []
    for product in products:
        if product[0] % 2:
            continue
        price = product[5]
        changed = date.fromisoformat(product[10])
        for _ in range(rng.randint(1, 3)):
            changed += timedelta(days=rng.randint(30, 200))
            old = _money(price * rng.uniform(0.9, 1.15))
            history.append((product[0], changed.isoformat(), old, price))
    data["price_history"] = history
    return data


def _write(conn: sqlite3.Connection, data: dict[str, list[tuple]]) -> None:
    conn.executescript(SCHEMA)
    for table, rows in data.items():
        placeholders = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)
    conn.commit()


def build_demo_database(path: Path) -> bool:
    """Build the demo SQLite file once; True when it was created now, False when it already existed."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".building", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA foreign_keys = ON")  # the inserts double as a referential check
            conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file: concurrent readers, no blocking
            _write(conn, _generate(random.Random(SEED)))
            problems = conn.execute("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise RuntimeError(f"demo database has dangling foreign keys: {problems[:3]}")
            conn.execute("ANALYZE")  # sqlite_stat1 gives cheap row estimates
            conn.commit()
        finally:
            conn.close()  # last close checkpoints and removes the -wal/-shm files
        tmp.chmod(0o644)  # mkstemp's 0600 would hide the file from a service account reading it
        try:
            os.link(tmp, path)  # atomic and never overwrites: a concurrent builder that won keeps its file
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: rename, still atomic
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
