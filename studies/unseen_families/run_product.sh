#!/usr/bin/env bash
# The product's own jobs on one labelled manifest, as a user runs them: jobs.train (defaults, 10% of families kept
# out as unseen), jobs.embed of every file, jobs.evaluate with the strongest training-free baselines.
#   studies/unseen_families/run_product.sh /work/corpora/debian-multi/manifest.csv /work/p23/multi
set -uo pipefail
M=$1; W=$2; shift 2
PY=${PY:-.venv/bin/python}
mkdir -p "$W"
{ /usr/bin/time -v $PY -m jobs.train --input "$M" --workdir "$W/train" --output "$W/model" \
    --set train.unseen_family_fraction=0.1 "$@"; } > "$W/train.log" 2>&1 || exit 1
{ /usr/bin/time -v $PY -m jobs.embed --model "$W/model" --input "$M" --output "$W/root"; } > "$W/embed.log" 2>&1 || exit 1
{ /usr/bin/time -v $PY -m jobs.evaluate --labels "$M" --embeddings "$W/root" --model "$W/model" \
    --baselines strings,symbols,words --output "$W/eval"; } > "$W/eval.log" 2>&1
