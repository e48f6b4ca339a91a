#!/usr/bin/env bash
# side by side on /work/p22/m15.csv: new defaults vs the defaults before issue 22 (same code, --set)
set -uo pipefail
SRC=${1:-.}; shift || true
cd "$SRC"
export PYTHONPATH=$SRC
PY=/work/main/.venv/bin/python
M=/work/p22/m15.csv
run() {  # name, extra --set...
  local W=/work/p22/$1; shift
  mkdir -p "$W"
  { /usr/bin/time -v $PY -m jobs.train --input "$M" --workdir "$W/train" --output "$W/model" \
      --set train.unseen_family_fraction=0.1 "$@" ; } > "$W/train.log" 2>&1
  echo "train exit $?" >> "$W/train.log"
  { /usr/bin/time -v $PY -m jobs.embed --model "$W/model" --input "$M" --output "$W/root" ; } > "$W/embed.log" 2>&1
  echo "embed exit $?" >> "$W/embed.log"
}
run new
run old --set 'views.names=["strings","idents","tokens"]' --set model.embedding_dim=640 --set model.skip_dim=512 \
    --set 'model.skip_views=["tokens"]' --set model.skip_weight=0.3 --set train.self_supervised=auto
{ $PY -m jobs.evaluate --labels "$M" --variant new=/work/p22/new/root --variant old=/work/p22/old/root \
    --model /work/p22/new/model --output /work/p22/eval ; } > /work/p22/eval.log 2>&1
echo "evaluate exit $?" >> /work/p22/eval.log
echo done > /work/p22/DONE
