#!/usr/bin/env bash
# Benchmark of `cartbuild recipes/net.toml` (not a test: it prints figures).
#
#   1. cold build, empty cache (fetch + build everything)
#   2. cold build, sources cached (build everything, fetch nothing)
#   3. rebuild with nothing changed (median of 5; target: under 2 s)
#   4. rebuild after changing one package (lsof): only that package builds
#   5. for net.toml and full.toml: a cold build with sources cached (every output removed;
#      the toolchain, zig's compiled runtime and the last build times, which the scheduler
#      goes by, stay), and from it each package's build time, the critical path (the longest
#      chain of dependent builds, by their times), the CPU time (user + system, which over
#      the cores bounds the build from below) and the image's size; then a no-change rebuild of each
#      (issue 13's targets for full: cold <= 10 min on 2 cores, no-change <= 0.3 s), and
#      a rebuild with nothing changed but the image removed (staging and writing it again)
#   6. the net image cross-built for aarch64 (zig), cold with sources cached, next to the
#      native cold build with sources cached (issue 14)
#
# The reference is the original tool's image build (nix), which took several
# hours. Needs what `cartbuild recipes/net.toml` needs (musl-tools, flex, bison,
# the Debian mirror from the host's apt sources or CARTBUILD_MIRROR_DEBIAN; no
# e2fsprogs: cartbuild writes ext4 itself). Each build also writes the
# manifest and SBOM, so their cost is in every figure. Usage:
# tests/bench/build.sh [--keep] [--only-packages | --only-arch]
#   (--only-packages: just step 5; --only-arch: just step 2 and step 6)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p cartbuild --quiet
bin=$target/release/cartbuild

work=$(mktemp -d /tmp/cartbuild-bench.XXXXXX)
if [ "${1:-}" != --keep ] && [ "${2:-}" != --keep ]; then trap 'rm -rf "$work"' EXIT; fi
cp -r recipes "$work/recipes"

now() { date +%s.%N; }
# run CACHE RECIPE [IMAGE]: times one build (of IMAGE, default net.img), prints
# "<seconds> <built> <cached>" (from the "built ..." or "image unchanged ..." line).
run() {
    local cache=$1 recipe=$2 image=${3:-$work/net.img} log=$work/last.log t0 t1
    t0=$(now)
    if ! "$bin" "$recipe" --cache "$cache" -o "$image" >"$log" 2>&1; then
        echo "cartbuild failed:" >&2; tail -20 "$log" >&2; exit 1
    fi
    t1=$(now)
    local built cached
    built=$(sed -n 's/.* \([0-9]*\) built, \([0-9]*\) cached.*/\1/p' "$log")
    cached=$(sed -n 's/.* \([0-9]*\) built, \([0-9]*\) cached.*/\2/p' "$log")
    echo "$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.3f", a - b }') $built $cached"
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }

# packages RECIPE: step 5 for one recipe. Per-package times come from cartbuild's
# "[NAME] done (key ..., S s, CPU C s)" lines (the CPU time of everything that ran in the
# package's sandbox), dependencies from the image's manifest.
packages() {
    local recipe=$1 name cache img log t0 t1
    name=$(basename "$recipe" .toml)
    cache=$work/cache-$name
    img=$work/$name.img
    log=$work/$name.log
    mkdir -p "$cache"
    # Sources first (not timed), then the build from an empty build cache.
    "$bin" "$recipe" --cache "$cache" -o "$img" >"$log" 2>&1 \
        || { echo "cartbuild $recipe failed:" >&2; tail -20 "$log" >&2; exit 1; }
    rm -rf "$cache/builds" "$cache/roots"
    t0=$(now)
    local TIMEFORMAT='%U %S'
    { time "$bin" "$recipe" --cache "$cache" -o "$img" >"$log" 2>&1; } 2>"$work/$name.cpu" \
        || { echo "cartbuild $recipe failed:" >&2; tail -20 "$log" >&2; exit 1; }
    t1=$(now)
    local cpu
    cpu=$(awk '{ printf "%.0f", $1 + $2 }' "$work/$name.cpu")
    # For the shared-cache section: this recipe's cold build with sources cached.
    last_cold=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
    local times=()
    for _ in 1 2 3 4 5; do
        read -r t _ _ < <(run "$cache" "$recipe" "$img")
        grep -q '^image unchanged: ' "$work/last.log" \
            || { echo "a no-change rebuild of $name wrote the image again" >&2; exit 1; }
        times+=("$t")
    done
    local noop rewrite
    noop=$(printf '%s\n' "${times[@]}" | median)
    # The image gone: everything staged and written again (nothing built).
    rm -f "$img"
    read -r rewrite _ _ < <(run "$cache" "$recipe" "$img")
    python3 - "$log" "$img.manifest.json" "$img" "$t0" "$t1" "$noop" "$name" "$rewrite" "$cpu" "$(nproc)" <<'PY'
import json, os, re, sys
log, manifest, img, t0, t1, noop, name, rewrite, cpu, cores = sys.argv[1:]
times, cpus = {}, {}
for line in open(log):
    m = re.match(r"^\[(.+?)\] done \(key \w+, ([0-9.]+) s(?:, CPU ([0-9.]+) s)?\)", line)
    if m:
        times[m.group(1)] = float(m.group(2))
        if m.group(3):
            cpus[m.group(1)] = float(m.group(3))
deps = {p["name"]: p.get("depends", []) for p in json.load(open(manifest))["packages"]}
memo = {}
def chain(p):
    if p not in memo:
        before = max((chain(d) for d in deps.get(p, [])), key=lambda c: c[0], default=(0.0, []))
        memo[p] = (before[0] + times.get(p, 0.0), before[1] + [p])
    return memo[p]
total, path = max((chain(p) for p in deps), key=lambda c: c[0])
print(f"\n{name}: cold build, sources cached: {float(t1) - float(t0):.1f} s; no-change rebuild {noop} s (median of 5); "
      f"the same with the image removed (staged and written again) {float(rewrite):.2f} s")
print(f"CPU time of the cold build: {cpu} s (user + system), so at least {float(cpu) / int(cores):.0f} s on {cores} cores")
if name == "full":
    cold = float(t1) - float(t0)
    print("full cold build target (<= 600 s on 2 cores): " + ("met" if cold <= 600 else "MISSED"))
    print("full no-change rebuild target (<= 0.3 s): " + ("met" if float(noop) <= 0.3 else "MISSED"))
print(f"{'package':<20} {'seconds':>8} {'CPU s':>8}")
for p, t in sorted(times.items(), key=lambda kv: -kv[1]):
    c = f"{cpus[p]:>8.1f}" if p in cpus else f"{'':>8}"
    print(f"{p:<20} {t:>8.1f} {c}")
print(f"sum of package times: {sum(times.values()):.1f} s; of their CPU times (in their sandboxes): "
      f"{sum(cpus.values()):.1f} s")
print(f"critical path: {' -> '.join(path)} = {total:.1f} s")
size = os.path.getsize(img)
print(f"image: {img} {size} bytes ({size / 1048576:.1f} MiB)")
PY
}

# cold_arch SOURCES_CACHE: step 6, the aarch64 net image from an empty build cache sharing
# SOURCES_CACHE's sources; prints the seconds.
cold_arch() {
    local cache=$work/cache-aarch64 t0 t1
    rm -rf "$cache"; mkdir -p "$cache"
    cp -r "$1/sources" "$cache/sources"
    t0=$(now)
    "$bin" "$work/recipes/net.toml" --arch aarch64 --cache "$cache" -o "$work/net-aarch64.img" \
        >"$work/aarch64.log" 2>&1 \
        || { echo "cartbuild --arch aarch64 failed:" >&2; tail -20 "$work/aarch64.log" >&2; exit 1; }
    t1=$(now)
    awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }'
}

if [ "${1:-}" = --only-arch ] || [ "${2:-}" = --only-arch ]; then
    echo "cartbuild benchmark: net.toml native and aarch64 on $(nproc) CPUs ($("$bin" --version))" >&2
    read -r _ _ _ < <(run "$work/cache-a" "$work/recipes/net.toml")
    mkdir -p "$work/cache-b"
    cp -r "$work/cache-a/sources" "$work/cache-b/sources"
    read -r t_warm _ _ < <(run "$work/cache-b" "$work/recipes/net.toml")
    t_arm=$(cold_arch "$work/cache-a")
    printf '%-34s %10.1f\n' "cold x86_64, sources cached" "$t_warm"
    printf '%-34s %10.1f   (%.2fx the native build)\n' "cold aarch64 (zig), sources cached" "$t_arm" \
        "$(awk -v a="$t_arm" -v n="$t_warm" 'BEGIN { print a / n }')"
    exit 0
fi

if [ "${1:-}" = --only-packages ] || [ "${2:-}" = --only-packages ]; then
    echo "cartbuild benchmark: per-package times on $(nproc) CPUs ($("$bin" --version))" >&2
    packages "$work/recipes/net.toml"
    packages "$work/recipes/full.toml"
    exit 0
fi

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
t_arm=$(cold_arch "$work/cache-a")
printf '%-28s %10.1f %9.0fx   (%.2fx the native build)\n' "cold aarch64, sources cached" "$t_arm" \
    "$(ratio "$t_arm")" "$(awk -v a="$t_arm" -v n="$t_warm" 'BEGIN { print a / n }')"
printf '%-28s %10.2f %9.0fx\n' "no-change rebuild (median)" "$t_noop" "$(ratio "$t_noop")"
printf '%-28s %10.1f %9.0fx\n' "one package changed" "$t_one" "$(ratio "$t_one")"
echo "(reference: the original tool's image build took several hours; 2 h assumed for the ratio)"
awk -v t="$t_noop" 'BEGIN { exit !(t < 2) }' && echo "no-change rebuild target (< 2 s): met" \
    || echo "no-change rebuild target (< 2 s): MISSED"
[ "$b_one" = 1 ] && [ "${rebuilt% }" = lsof ] && echo "one-package rebuild built only lsof: yes" \
    || echo "one-package rebuild built only lsof: NO ($rebuilt)"

# --- Shared build cache (issue 15): a cold build in an empty cache with a warm remote cache,
# next to the cold local build. The outputs of a warm local cache are pushed to a registry
# (CARTBUILD_BENCH_REGISTRY, default 127.0.0.1:5000), then an empty cache pulls them.
# bench_shared_cache RECIPE CACHE LOCAL_COLD_SECONDS TARGET_SECONDS. Targets on 2 cores: the
# net image in <= 10 s, the full toolbox in <= 30 s.
bench_shared_cache() {
    local recipe=$1 warm=$2 t_cold=$3 target=$4 name
    name=$(basename "$recipe" .toml)
    local registry=${CARTBUILD_BENCH_REGISTRY:-127.0.0.1:5000}
    if ! curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
        echo "shared cache: FAILED (no registry answers on $registry; .ci/setup services starts one)"
        return 1
    fi
    local repo="oci://$registry/cartbuild-bench/cache-$name-$$" t0 t1 t_push t_pull
    [ -f "$work/bench.key" ] || "$bin" keygen -W -p "$work/bench.pub" -s "$work/bench.key" >/dev/null 2>&1
    t0=$(now)
    "$bin" "$recipe" --cache "$warm" -o "$work/$name-local.img" \
        --cache-to "$repo" --sign-key "$work/bench.key" >"$work/push.log" 2>&1 \
        || { echo "push failed:" >&2; tail -20 "$work/push.log" >&2; exit 1; }
    t1=$(now); t_push=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
    rm -rf "$work/cache-pull-$name"
    t0=$(now)
    "$bin" "$recipe" --cache "$work/cache-pull-$name" -o "$work/$name-pulled.img" \
        --cache-from "$repo" --cache-trust "$work/bench.pub" >"$work/pull.log" 2>&1 \
        || { echo "pull build failed:" >&2; tail -20 "$work/pull.log" >&2; exit 1; }
    t1=$(now); t_pull=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.1f", a - b }')
    local built same=no
    built=$(sed -n 's/.* \([0-9]*\) built, \([0-9]*\) cached.*/\1/p' "$work/pull.log")
    cmp -s "$work/$name-local.img" "$work/$name-pulled.img" && same=yes
    printf '%-28s %10.1f   (%s; push of every output: %ss)\n' "cold, warm remote cache" "$t_pull" "$name" "$t_push"
    printf '%-28s %10.1f   (%s)\n' "cold, local" "$t_cold" "$name"
    echo "$name remote-cache build: $built packages built, same image as the local build: $same"
    awk -v t="$t_pull" -v g="$target" 'BEGIN { exit !(t <= g) }' \
        && echo "$name warm remote cache target (<= $target s): met" \
        || echo "$name warm remote cache target (<= $target s): MISSED"
}
bench_shared_cache "$work/recipes/net.toml" "$work/cache-b" "$t_cold" 10

packages "$work/recipes/net.toml"
packages "$work/recipes/full.toml"
bench_shared_cache "$work/recipes/full.toml" "$work/cache-full" "$last_cold" 30
