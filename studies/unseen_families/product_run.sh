#!/usr/bin/env bash
# The product default as a user runs it (issue 22, question 2): jobs.train with its defaults and
# train.unseen_family_fraction=0.1, jobs.embed of every file, jobs.evaluate; then the study's 1,500-query
# protocol on the same embeddings (studies/unseen_families/score_root.py). Extra --set arguments after the
# work folder make a variant (e.g. the study's recipe once it is in the product).
#   nice -n 10 studies/unseen_families/product_run.sh /work/corpora/debian-multi/manifest.csv /work/studies22/product
set -euo pipefail
M=$1; W=$2; shift 2
PY=${PY:-.venv/bin/python}
mkdir -p "$W"
{ time $PY -m jobs.train --input "$M" --workdir "$W/train" --output "$W/model" \
    --set train.unseen_family_fraction=0.1 "$@" ; } > "$W/train.log" 2>&1
{ time $PY -m jobs.embed --model "$W/model" --input "$M" --output "$W/root" ; } > "$W/embed.log" 2>&1
echo done > "$W/DONE"
