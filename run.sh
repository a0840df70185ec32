#!/usr/bin/env bash
# The course's interface: bash run.sh INPUT.jsonl OUTPUT.jsonl
# Writes {"title", "id"} per line for every article of INPUT.jsonl, with the trained model in
# $TITLEGEN_MODEL (default: outputs/mt5_small_full, the folder `make train` writes). Extra generation
# flags may follow, e.g. `bash run.sh in.jsonl out.jsonl --num_beams 5`. A $TITLEGEN_MODEL written by
# titlegen-export is decoded by CTranslate2 (`--backend transformers|ct2` chooses explicitly).
# $TITLEGEN_LAUNCHER shares the articles between processes (one per GPU) with the launcher it names, e.g.
# TITLEGEN_LAUNCHER="torchrun --nproc_per_node 2" or "accelerate launch --num_processes 2": the output is the same.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: bash run.sh INPUT.jsonl OUTPUT.jsonl [titlegen-predict flags]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
model="${TITLEGEN_MODEL:-$here/outputs/mt5_small_full}"
# A folder path that names nothing (a hub id such as google/mt5-small is left to titlegen-predict).
if [ ! -e "$model" ] && { [ -z "${TITLEGEN_MODEL:-}" ] || [[ "$model" == /* || "$model" == .* ]]; }; then
    echo "run.sh: no model at '$model' (\$TITLEGEN_MODEL); train one with 'make train' (it writes" \
        "outputs/mt5_small_full) or 'make demo' (outputs/demo), or set TITLEGEN_MODEL to a model folder" >&2
    exit 2
fi
input="$1"
output="$2"
shift 2
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
# The interpreter: $PYTHON, else the .venv that `make install` creates without an active virtual environment.
python="${PYTHON:-python3}"
if [ -z "${PYTHON:-}" ] && [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$here/.venv/bin/python" ]; then
    python="$here/.venv/bin/python"
fi
if [ -n "${TITLEGEN_LAUNCHER:-}" ]; then
    # Word splitting is wanted: the variable holds a command and its flags.
    # shellcheck disable=SC2086
    exec $TITLEGEN_LAUNCHER -m titlegen.recipes.predict --model "$model" --input "$input" --output "$output" "$@"
fi
exec "$python" -m titlegen.recipes.predict --model "$model" --input "$input" --output "$output" "$@"
