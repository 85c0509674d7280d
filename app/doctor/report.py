"""The doctor's report: one line per check (PASS / WARN / FAIL / SKIP), as text or as JSON.

Exit code: 0 when no check failed (warnings allowed), 1 otherwise; with `strict`, a warning fails too.
SKIP means the check did not apply (another engine, read-only mode off) or could not run because an
earlier check failed; it never changes the exit code (the failure that caused it already does).
The JSON form is for automation and keeps these keys stable: ok, strict, dialect, target, summary,
checks[].name, checks[].status, checks[].detail, checks[].hint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PASS = "PASS"
WARN = "WARN"
FAIL = "FAIL"
SKIP = "SKIP"
STATUSES = (PASS, WARN, FAIL, SKIP)


@dataclass
class CheckResult:
    name: str
    status: str
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "hint": self.hint}


@dataclass
class Report:
    dialect: str
    target: str  # what was checked, without secrets
    checks: list[CheckResult] = field(default_factory=list)

    def add(self, result: CheckResult) -> CheckResult:
        self.checks.append(result)
        return result

    def summary(self) -> dict[str, int]:
        return {status: sum(1 for c in self.checks if c.status == status) for status in STATUSES}

    def ok(self, strict: bool = False) -> bool:
        failing = {FAIL, WARN} if strict else {FAIL}
        return not any(c.status in failing for c in self.checks)

    def exit_code(self, strict: bool = False) -> int:
        return 0 if self.ok(strict) else 1

    def as_json(self, strict: bool = False) -> str:
        document: dict[str, Any] = {
            "ok": self.ok(strict),
            "strict": strict,
            "dialect": self.dialect,
            "target": self.target,
            "summary": self.summary(),
            "checks": [c.as_dict() for c in self.checks],
        }
        return json.dumps(document, indent=2)

    def as_text(self, strict: bool = False) -> str:
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"mssql-mcp doctor: {self.target}"]
        for check in self.checks:
            lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
            if check.hint and check.status != PASS:
                lines.append(f"{'':<4}  {'':<{width}}  -> {check.hint}")
        counts = self.summary()
        verdict = "OK" if self.ok(strict) else "FAILED"
        warnings = "1 warning" if counts[WARN] == 1 else f"{counts[WARN]} warnings"
        lines.append(
            f"{counts[PASS]} passed, {warnings}, {counts[FAIL]} failed, "
            f"{counts[SKIP]} skipped: {verdict}" + (" (strict: warnings fail)" if strict else "")
        )
        return "\n".join(lines)
