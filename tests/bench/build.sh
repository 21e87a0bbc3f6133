#!/usr/bin/env bash
# Benchmark of `cartbuild recipes/net.toml` (not a test: it prints figures).
#
#   1. cold build, empty cache (fetch + build everything)
#   2. cold build, sources cached (build everything, fetch nothing)
#   3. rebuild with nothing changed (median of 5; target: under 2 s)
#   4. rebuild after changing one package (lsof): only that package builds
#
# The reference is the original tool's image build (nix), which took several
# hours. Needs what `cartbuild recipes/net.toml` needs (musl-tools, flex, bison,
# the Debian mirror from the host's apt sources or CARTBUILD_MIRROR_DEBIAN; no
# e2fsprogs: cartbuild writes ext4 itself). Each build also writes the
# manifest and SBOM, so their cost is in every figure. Usage:
# tests/bench/build.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p cartbuild --quiet
bin=$target/release/cartbuild

work=$(mktemp -d /tmp/cartbuild-bench.XXXXXX)
if [ "${1:-}" != --keep ]; then trap 'rm -rf "$work"' EXIT; fi
cp -r recipes "$work/recipes"

now() { date +%s.%N; }
# run NAME CACHE RECIPE: times one build, prints "<seconds> <built> <cached>".
run() {
    local cache=$1 recipe=$2 log=$work/last.log t0 t1
    t0=$(now)
    if ! "$bin" "$recipe" --cache "$cache" -o "$work/net.img" >"$log" 2>&1; then
        echo "cartbuild failed:" >&2; tail -20 "$log" >&2; exit 1
    fi
    t1=$(now)
    local built cached
    built=$(sed -n 's/.* \([0-9]*\) built, \([0-9]*\) cached.*/\1/p' "$log")
    cached=$(sed -n 's/.* \([0-9]*\) built, \([0-9]*\) cached.*/\2/p' "$log")
    echo "$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.3f", a - b }') $built $cached"
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }

echo "cartbuild benchmark: recipes/net.toml on $(nproc) CPUs ($("$bin" --version))" >&2

read -r t_cold b_cold _ < <(run "$work/cache-a" "$work/recipes/net.toml")
echo "cold, empty cache:        ${t_cold}s ($b_cold packages built)" >&2

mkdir -p "$work/cache-b"
cp -r "$work/cache-a/sources" "$work/cache-b/sources"
read -r t_warm b_warm _ < <(run "$work/cache-b" "$work/recipes/net.toml")
echo "cold, sources cached:     ${t_warm}s ($b_warm packages built)" >&2

times=()
for _ in 1 2 3 4 5; do
    read -r t b c < <(run "$work/cache-b" "$work/recipes/net.toml")
    [ "$b" = 0 ] || { echo "a no-change rebuild built $b packages" >&2; exit 1; }
    times+=("$t")
done
t_noop=$(printf '%s\n' "${times[@]}" | median)
echo "no-change rebuild:        ${t_noop}s (median of 5, 0 built)" >&2

# Change lsof's script (a comment is enough to change its build key).
sed -i 's|^install -D -m 0755 lsof "$OUT/bin/lsof"|# benchmark edit\n&|' "$work/recipes/net.toml"
read -r t_one b_one c_one < <(run "$work/cache-b" "$work/recipes/net.toml")
rebuilt=$(sed -n 's/^\[\(.*\)\] done (key.*/\1/p' "$work/last.log" | tr '\n' ' ')
echo "one package changed:      ${t_one}s ($b_one built: ${rebuilt% }; $c_one cached)" >&2

ref=7200
ratio() { awk -v r="$ref" -v t="$1" 'BEGIN { printf "%.0f", r / t }'; }
printf '\n%-28s %10s %10s\n' "case" "seconds" "vs 2 h" 
printf '%-28s %10.1f %9.0fx\n' "cold, empty cache" "$t_cold" "$(ratio "$t_cold")"
printf '%-28s %10.1f %9.0fx\n' "cold, sources cached" "$t_warm" "$(ratio "$t_warm")"
printf '%-28s %10.2f %9.0fx\n' "no-change rebuild (median)" "$t_noop" "$(ratio "$t_noop")"
printf '%-28s %10.1f %9.0fx\n' "one package changed" "$t_one" "$(ratio "$t_one")"
echo "(reference: the original tool's image build took several hours; 2 h assumed for the ratio)"
awk -v t="$t_noop" 'BEGIN { exit !(t < 2) }' && echo "no-change rebuild target (< 2 s): met" \
    || echo "no-change rebuild target (< 2 s): MISSED"
[ "$b_one" = 1 ] && [ "${rebuilt% }" = lsof ] && echo "one-package rebuild built only lsof: yes" \
    || echo "one-package rebuild built only lsof: NO ($rebuilt)"

# --- Shared build cache (issue 15): a cold build in an empty cache with a warm remote cache,
# next to the cold local build above. The outputs of the last build (cache-b) are pushed to
# a registry (CARTBUILD_BENCH_REGISTRY, default 127.0.0.1:5000), then an empty cache pulls
# them. Target: the net image in <= 10 s on 2 cores.
bench_shared_cache() {
    local registry=${CARTBUILD_BENCH_REGISTRY:-127.0.0.1:5000}
    if ! curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
        echo "shared cache: skipped (no registry answers on $registry)"; return
    fi
    local repo="oci://$registry/cartbuild-bench/cache-$$" t0 t1 t_push t_pull
    "$bin" keygen -W -p "$work/bench.pub" -s "$work/bench.key" >/dev/null 2>&1
    t0=$(now)
    "$bin" "$work/recipes/net.toml" --cache "$work/cache-b" -o "$work/net.img" \
        --cache-to "$repo" --sign-key "$work/bench.key" >"$work/push.log" 2>&1 \
        || { echo "push failed:" >&2; tail -20 "$work/push.log" >&2; exit 1; }
    t1=$(now); t_push=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
    t0=$(now)
    "$bin" "$work/recipes/net.toml" --cache "$work/cache-c" -o "$work/net-pulled.img" \
        --cache-from "$repo" --cache-trust "$work/bench.pub" >"$work/pull.log" 2>&1 \
        || { echo "pull build failed:" >&2; tail -20 "$work/pull.log" >&2; exit 1; }
    t1=$(now); t_pull=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
    local built same=no
    built=$(sed -n 's/.* \([0-9]*\) built, \([0-9]*\) cached.*/\1/p' "$work/pull.log")
    cmp -s "$work/net.img" "$work/net-pulled.img" && same=yes
    printf '%-28s %10.1f   (push of every output: %ss)\n' "cold, warm remote cache" "$t_pull" "$t_push"
    printf '%-28s %10.1f\n' "cold, empty cache (local)" "$t_cold"
    echo "remote-cache build: $built packages built, same image as the local build: $same"
    awk -v t="$t_pull" 'BEGIN { exit !(t <= 10) }' && echo "warm remote cache target (<= 10 s): met" \
        || echo "warm remote cache target (<= 10 s): MISSED"
}
bench_shared_cache
