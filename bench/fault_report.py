"""Turn the reply times the fault tests record into the table in docs/reliability.md.

    SPAMBRIDGE_FAULT_REPORT=/tmp/faults.jsonl .venv/bin/pytest tests/integration/test_faults.py
    .venv/bin/python bench/fault_report.py /tmp/faults.jsonl

Each line of the file is one test case (one fault, one failure action, 50 connections):
end-of-message-to-final-reply times, in milliseconds here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> int:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    print("| fault | action | n | min | p50 | p90 | p99 | max | outcomes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        e = r["eom"]
        ms = [f"{e[k] * 1000:.0f}" for k in ("min", "p50", "p90", "p99", "max")]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.get("outcomes", {}).items()))
        print(f"| {r['case']} | {r['action']} | {r['n']} | {' | '.join(ms)} | {outcomes} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1]))
