#!/usr/bin/env bash
# Copies the study's run records (config.yaml, metrics.jsonl; not the checkpoints) into
# docs/results/runs/, and redraws the curves and the table of docs/RESULTS.md from them.
set -euo pipefail
study=${OUT:-runs/study}
here=docs/results
for run in "$study"/*/; do
    name=$(basename "$run")
    mkdir -p "$here/runs/$name"
    cp "$run/config.yaml" "$run/metrics.jsonl" "$here/runs/$name/"
done
python -m fedbat_mpi.plot "$here"/runs/* --out "$here"
table=$(python -m fedbat_mpi.summary "$here"/runs/* --target 0.8)
# The table goes between the markers of docs/RESULTS.md.
TABLE="$table" python - <<'PY'
import os, re
path = "docs/RESULTS.md"
text = open(path).read()
block = "<!-- table -->\n" + os.environ["TABLE"] + "\n<!-- /table -->"
open(path, "w").write(re.sub(r"<!-- table -->.*<!-- /table -->", lambda _: block, text, flags=re.S))
PY
