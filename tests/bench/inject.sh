#!/usr/bin/env bash
# Benchmark of cartinject (issue 2): median latency of
#   1. a full cycle      cartinject IMG PID -- /dev/crashcart/bin/true   (attach, mount, run, clean)
#   2. the same by container name (adds the Docker API lookup)
#   3. -m then -u        cartinject -m IMG PID; cartinject -u PID
# next to, on an image mounted with -m,
#   4. the floor         nsenter -a -t PID /dev/crashcart/bin/true
#   5. the peer          docker exec NAME /dev/crashcart/bin/true
#   6. a full cycle while -m holds the image on a loop device (the device is reused)
# and the ratios of 1 to 4 (target: within 3x) and of 1 to 5 (target: well below 1).
#
# Needs root, a running Docker daemon, mke2fs, busybox-static, musl-gcc (or gcc).
# Usage: tests/bench/inject.sh [RUNS]   (CARTINJECT=path overrides the binary; default: a
# release build, made here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-30}
[ "$(id -u)" = 0 ] || { echo "inject.sh: run as root" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "inject.sh: the Docker daemon is not running" >&2; exit 1; }
if [ -z "${CARTINJECT:-}" ]; then
    target_dir=${CARGO_TARGET_DIR:-target}
    cargo build --release -q -p cartinject
    CARTINJECT=$target_dir/release/cartinject
fi

work=$(mktemp -d)
name=cc-bench-inject-$$
cleanup() {
    "$CARTINJECT" -u "$name" >/dev/null 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    docker rmi cc-bench-thin:latest >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The image: static busybox and its applets, made with mke2fs -d.
mkdir -p "$work/img/bin"
cp /bin/busybox "$work/img/bin/busybox"
for a in true sh ls cat; do ln -s busybox "$work/img/bin/$a"; done
mke2fs -q -F -t ext4 -O ^has_journal -d "$work/img" "$work/bench.img" 8M
img=$work/bench.img

# The thin container: a static HTTP server and nothing else.
mkdir -p "$work/thin"
cc=$(command -v musl-gcc || command -v gcc)
"$cc" -static -O2 -o "$work/thin/httpd" tests/fixtures/httpd.c
tar -C "$work/thin" -c . | docker import -c 'CMD ["/httpd"]' - cc-bench-thin:latest >/dev/null
docker run -d --network none --name "$name" cc-bench-thin:latest >/dev/null
pid=$(docker inspect -f '{{.State.Pid}}' "$name")

# Median wall time of RUNS runs of "$@", in microseconds (bash's EPOCHREALTIME: no fork
# for the clock), after 3 warm-up runs.
median_us() {
    local i t0 t1 times=()
    for i in 1 2 3; do "$@" >/dev/null 2>&1; done
    for ((i = 0; i < runs; i++)); do
        t0=$EPOCHREALTIME
        "$@" >/dev/null 2>&1
        t1=$EPOCHREALTIME
        times+=( $(( (${t1/./} - ${t0/./}) )) )
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'
}

mount_unmount() { "$CARTINJECT" -m "$img" "$pid" && "$CARTINJECT" -u "$pid"; }

full=$(median_us "$CARTINJECT" "$img" "$pid" -- /dev/crashcart/bin/true)
byname=$(median_us "$CARTINJECT" "$img" "$name" -- /dev/crashcart/bin/true)
mu=$(median_us mount_unmount)
"$CARTINJECT" -m "$img" "$pid" >/dev/null
# With the image already on a loop device (left by -m), a session reuses the device: this is
# the cycle without the kernel's LOOP_CONFIGURE and autoclear.
warm=$(median_us "$CARTINJECT" "$img" "$pid" -- /dev/crashcart/bin/true)
floor=$(median_us nsenter -a -t "$pid" /dev/crashcart/bin/true)
dexec=$(median_us docker exec "$name" /dev/crashcart/bin/true)
"$CARTINJECT" -u "$pid" >/dev/null

ms() { awk -v us="$1" 'BEGIN { printf "%8.2f ms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "cartinject benchmark: $runs runs each, medians ($(uname -r), $(nproc) cores)"
echo "  full cycle, by PID        $(ms "$full")"
echo "  full cycle, by name       $(ms "$byname")"
echo "  full cycle, loop reused   $(ms "$warm")"
echo "  -m + -u                   $(ms "$mu")"
echo "  nsenter -a (floor)        $(ms "$floor")"
echo "  docker exec               $(ms "$dexec")"
echo "  full cycle / floor        $(ratio "$full" "$floor")x   (target: <= 3)"
echo "  loop reused / floor       $(ratio "$warm" "$floor")x"
echo "  full cycle / docker exec  $(ratio "$full" "$dexec")x"
echo "  by name / docker exec     $(ratio "$byname" "$dexec")x"
