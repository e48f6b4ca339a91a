"""Markdown table of results/*.jsonl rows (P@1 / MAP@R per cell): python studies/unseen_families/table.py FILE..."""
from __future__ import annotations

import json
import sys

CELLS = ("known/all", "unseen/all", "known/other-programs", "unseen/other-programs")


def main() -> None:
    print("| method | " + " | ".join(f"{c} P@1 / MAP@R" for c in CELLS) + " |")
    print("|---" * (len(CELLS) + 1) + "|")
    for path in sys.argv[1:]:
        for line in open(path):
            r = json.loads(line)
            cells = " | ".join(f"{r[c]['p_at_1']:.3f} / {r[c]['map_at_r']:.3f}" for c in CELLS)
            print(f"| {r['method']} | {cells} |")


if __name__ == "__main__":
    main()
