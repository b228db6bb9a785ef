#!/usr/bin/env bash
# Download exactly the wheels `bizra-voice gpu-check` needs on a lent GPU machine, for CPython 3.12 on
# manylinux x86_64, into an ignored folder (default .gpu-wheels/), with an install.sh beside them.
#
# That machine (see ../shared/DESIGN.md §6 and the device KINDS list) already has torch 2.11 + CUDA 13,
# numpy, scipy, matplotlib, pyyaml, transformers, safetensors, sentencepiece, einops and huggingface_hub, but
# no moshi, sphn, pydantic, ray, fastapi or uvicorn, and takes at most 64 MiB of files per run (the working
# tree included). The check needs no Ray: only the engine's own dependencies travel.
#
#   scripts/gpu_wheels.sh [DIR]                     # the check: moshi, sphn, pydantic, pyloudnorm, torchao
#   scripts/gpu_wheels.sh --int8-bitsandbytes .gpu-wheels-bnb
#       # the 16 GiB laptop check with moshi's bitsandbytes int8: bitsandbytes (41 MiB) instead of sphn and
#       # pyloudnorm (both do not fit beside it), so that run has no WAV voice and no real-time step
#
# Every wheel is fetched with --no-deps and pinned: pip cannot resolve for another platform's installed
# packages, and moshi 0.2.13 pins torch<2.10 (numpy<2.3, huggingface-hub<1.0), so resolving its
# requirements would pull a second torch. moshi's code runs on the machine's torch 2.11 (installed with
# --no-deps, as DESIGN.md §6 records). Fails if the folder exceeds 60 MiB.
set -euo pipefail

variant=check
if [[ "${1:-}" == "--int8-bitsandbytes" ]]; then
    variant=bitsandbytes
    shift
fi
dir=${1:-.gpu-wheels}
repo=$(cd "$(dirname "$0")/.." && pwd)
limit_mib=60

rm -rf "$dir"
mkdir -p "$dir"

fetch() {  # fetch PLATFORM_ARGS... -- SPEC...
    local platforms=()
    while [[ "$1" != "--" ]]; do platforms+=(--platform "$1"); shift; done
    shift
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 "${platforms[@]}" -d "$dir" "$@"
}

common=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)

# The engine: moshi (see above), pydantic for EngineConfig/AppConfig (pydantic-core is pinned by pydantic;
# typing-extensions travels because pydantic 2.13 needs >= 4.14.1), torchao for torch-native int8.
fetch "${common[@]}" -- moshi==0.2.13 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
    typing-inspection==0.4.2 typing-extensions==4.16.0 torchao==0.17.0
if [[ "$variant" == check ]]; then
    # sphn: Opus for the product's serving-work calibration and the WAV voice reader; its only Linux wheel
    # is tagged manylinux_2_24. pyloudnorm: the reference's -24 LUFS voice normalisation (scipy is there).
    fetch manylinux_2_24_x86_64 -- sphn==0.2.1
    fetch "${common[@]}" -- pyloudnorm==0.2.0
else
    # moshi's bitsandbytes int8 path (engine.quantize_int8). 0.50.2, not 0.49.2 (58 MiB): both carry a
    # CUDA 13.0 build; sphn does not fit beside it, so the WAV voice and the Opus serving work are skipped.
    fetch manylinux_2_24_x86_64 -- bitsandbytes==0.50.2
fi

# The project itself, built here from a copy of this checkout's package (pure Python; the copy keeps build
# leftovers out of the working tree).
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/bizra_voice" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel --quiet --no-deps -w "$dir" "$src" >/dev/null

cat > "$dir/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# Install the wheels beside this script into TARGET (default /tmp/gpu-check-site) without touching the
# machine's own packages; then: export PYTHONPATH=TARGET
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${1:-/tmp/gpu-check-site}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$here"/*.whl
INSTALL
chmod +x "$dir/install.sh"

total=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
ls -l "$dir"
python3 - "$total" "$limit_mib" "$dir" <<'PY'
import sys
total, limit, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(f"{folder}: {total / 2**20:.1f} MiB of wheels (limit {limit} MiB)")
sys.exit(1 if total > limit * 2**20 else 0)
PY
