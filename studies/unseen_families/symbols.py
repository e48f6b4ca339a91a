"""The dynamic-symbol-names reader now lives in the product: embedlib.views.symbols (jobs.evaluate's symbol-names
baseline). This name stays for the study's scripts (features.py, compare_parsers.py)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from embedlib.views.symbols import EXPORT, IMPORT, LIBRARY, MAX_NAMES, Symbols, parse, parse_lazy, symbol_hashes  # noqa: E402,F401
