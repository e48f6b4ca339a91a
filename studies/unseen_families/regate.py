"""A trained checkpoint's open-set gate set again without training (a study of the gate's defaults): the same
weights and calibrated confidence threshold (meta open_set_gate.high), another model.gate_weight / gate_width;
--width 0 removes the gate (one fixed mix, model.skip_weight). jobs.embed of the new folder then stores exactly
what a training with those defaults would have stored.

  .venv/bin/python studies/unseen_families/regate.py /work/p23/multi/model /work/p23/multi-w01/model \\
      --weight 0.75 --width 0.1
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from embedlib.model import checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--weight", type=float, required=True)
    ap.add_argument("--width", type=float, required=True)
    a = ap.parse_args()
    ck = checkpoint.load(a.src)
    extra = checkpoint.extra_of(ck.meta)
    gate, cfg = extra["open_set_gate"], ck.config
    if a.width == 0:
        ck.model.gate_range.zero_()
        extra["open_set_gate"] = None
    else:
        ck.model.gate_weight = a.weight
        ck.model.calibrate_gate(gate["high"], a.width)
        extra["open_set_gate"] = {**gate, "low": gate["high"] - a.width, "weight": a.weight}
        cfg = replace(cfg, model=replace(cfg.model, gate_weight=a.weight, gate_width=a.width))
    meta = checkpoint.save(a.dst, ck.model, cfg, ck.families, extra)
    print(meta["model_version"], extra["open_set_gate"])


if __name__ == "__main__":
    main()
