#!/bin/sh
# `uv sync` of the locked runtime dependencies into $UV_PROJECT_ENVIRONMENT, for the image build.
# Arguments are passed on (--no-install-project, --no-editable); $EXTRAS adds e.g. "--extra quantization".
#
# With $TORCH_INDEX empty, torch is exactly the one uv.lock pins. With a PyTorch wheel index (the CPU
# one: https://download.pytorch.org/whl/cpu), everything else still comes from the lock, but torch and
# the CUDA packages only it needs (nvidia-*, cuda-*, triton) are left out and the same torch version
# is installed from that index: the CPU build, without ~4 GB of CUDA libraries and triton. The lock is not
# touched, so `uv sync` everywhere else is unchanged.
set -eu
uv="${UV:-/opt/uv/bin/uv}"  # where the Dockerfile installs it
if [ -z "${TORCH_INDEX:-}" ]; then
    # shellcheck disable=SC2086  # EXTRAS is a list of flags
    exec "$uv" sync --frozen --no-dev ${EXTRAS:-} "$@"
fi
torch_version="$(awk '/^name = "torch"$/ { getline; gsub(/"/, "", $3); print $3; exit }' uv.lock)"
[ -n "$torch_version" ] || { echo "uv-sync: no torch in uv.lock" >&2; exit 1; }
skip="--no-install-package torch"
for name in $(sed -n 's/^name = "\(nvidia-[^"]*\|cuda-[^"]*\|triton\)"$/\1/p' uv.lock | sort -u); do
    skip="$skip --no-install-package $name"
done
# shellcheck disable=SC2086
"$uv" sync --frozen --inexact --no-dev ${EXTRAS:-} $skip "$@"  # inexact: keep the torch installed below
case " $* " in
    *" --no-install-project "*) ;;  # torch once, with the dependencies' layer
    *) exit 0 ;;
esac
"$uv" pip install --python "$UV_PROJECT_ENVIRONMENT/bin/python" --no-deps --index-url "$TORCH_INDEX" "torch==$torch_version"
