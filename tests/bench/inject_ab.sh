#!/usr/bin/env bash
# A/B benchmark of two cartinject binaries (say, before and after a change): the full cycle
#   cartinject IMG PID -- /dev/crashcart/bin/true
# into one thin container, the two binaries' runs interleaved (A, B, A, B, ...) so that the
# machine's drift hits both alike. As in inject.sh, the image has no .sha256 beside it (the
# hash of the image, 10 ms for its 8 MiB, would hide everything else); VERIFIED=1 writes
# one. Prints each binary's median, the nsenter -a floor's, and B - A.
#
# Needs root, a running Docker daemon, mke2fs, busybox-static, musl-gcc (or gcc).
# Usage: tests/bench/inject_ab.sh OLD_BINARY NEW_BINARY [RUNS]   (default 200)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/cartinject_bench.sh
[ $# -ge 2 ] || { echo "usage: tests/bench/inject_ab.sh OLD_BINARY NEW_BINARY [RUNS]" >&2; exit 2; }
a=$1 b=$2 runs=${3:-200}
bench_preflight inject_ab.sh

work=$(mktemp -d)
name=cc-bench-ab-$$
cleanup() {
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker rmi cc-bench-ab:latest >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

img=$work/bench.img
busybox_image "$work/img" "$img" true sh ls cat >/dev/null
if [ "${VERIFIED:-0}" = 1 ]; then
    (cd "$work" && sha256sum bench.img >bench.img.sha256)
fi
pid=$(thin_container "$work/thin" cc-bench-ab:latest "$name")

for i in 1 2 3; do
    "$a" "$img" "$pid" -- /dev/crashcart/bin/true >/dev/null 2>&1 || true
    "$b" "$img" "$pid" -- /dev/crashcart/bin/true >/dev/null 2>&1 || true
done
ta=() tb=() tf=()
for ((i = 0; i < runs; i++)); do
    ta+=( "$(elapsed_us "$a" "$img" "$pid" -- /dev/crashcart/bin/true)" )
    tb+=( "$(elapsed_us "$b" "$img" "$pid" -- /dev/crashcart/bin/true)" )
done
"$a" -m "$img" "$pid" >/dev/null
for ((i = 0; i < runs; i++)); do
    tf+=( "$(elapsed_us nsenter -a -t "$pid" /dev/crashcart/bin/true)" )
done
"$a" -u "$pid" >/dev/null
ma=$(printf '%s\n' "${ta[@]}" | median)
mb=$(printf '%s\n' "${tb[@]}" | median)
mf=$(printf '%s\n' "${tf[@]}" | median)
ms() { awk -v us="$1" 'BEGIN { printf "%8.2f ms", us / 1000 }'; }
echo "cartinject A/B: $runs interleaved runs each, medians ($(uname -r), $(nproc) cores)"
echo "  A $a   $(ms "$ma")   ($(awk -v a="$ma" -v f="$mf" 'BEGIN { printf "%.2f", a / f }')x the floor)"
echo "  B $b   $(ms "$mb")   ($(awk -v a="$mb" -v f="$mf" 'BEGIN { printf "%.2f", a / f }')x the floor)"
echo "  nsenter -a (floor)    $(ms "$mf")"
echo "  B - A                 $(awk -v a="$ma" -v b="$mb" 'BEGIN { printf "%+.2f ms", (b - a) / 1000 }')"
