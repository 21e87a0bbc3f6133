# What the cartinject benchmarks (inject.sh, inject_hardening.sh) share. Sourced by them from
# the repository's root, not run; needs bash (EPOCHREALTIME).

# bench_preflight NAME: exits saying so unless this runs as root with a running Docker daemon.
bench_preflight() {
    [ "$(id -u)" = 0 ] || { echo "$1: run as root" >&2; exit 1; }
    docker info >/dev/null 2>&1 || { echo "$1: the Docker daemon is not running" >&2; exit 1; }
}

# bench_cartinject: unless CARTINJECT names a binary already, builds the static release
# cartinject that ./build.sh ships and sets CARTINJECT to it.
bench_cartinject() {
    if [ -z "${CARTINJECT:-}" ]; then
        CARTINJECT=$(.ci/build-static-cartinject)
    fi
}

# busybox_image ROOT IMAGE APPLET...: an 8 MiB ext4 image at IMAGE (mke2fs -d) of the
# directory ROOT holding the host's static busybox as bin/busybox and a link to it per APPLET.
busybox_image() {
    local root=$1 image=$2 applet
    shift 2
    mkdir -p "$root/bin"
    cp /bin/busybox "$root/bin/busybox"
    for applet in "$@"; do ln -s busybox "$root/bin/$applet"; done
    mke2fs -q -F -t ext4 -O ^has_journal -d "$root" "$image" 8M
}

# thin_container DIR TAG NAME: starts NAME (--network none) from TAG, an image imported from
# DIR holding only the static HTTP server of tests/fixtures/httpd.c, and prints its PID.
thin_container() {
    local dir=$1 tag=$2 name=$3 cc
    mkdir -p "$dir"
    cc=$(command -v musl-gcc || command -v gcc)
    "$cc" -static -O2 -o "$dir/httpd" tests/fixtures/httpd.c
    tar -C "$dir" -c . | docker import -c 'CMD ["/httpd"]' - "$tag" >/dev/null
    docker run -d --network none --name "$name" "$tag" >/dev/null
    docker inspect -f '{{.State.Pid}}' "$name"
}

# elapsed_us COMMAND...: runs COMMAND (its output discarded, its status ignored) and prints
# its wall time in microseconds (bash's EPOCHREALTIME: no fork for the clock).
elapsed_us() {
    local t0 t1
    t0=$EPOCHREALTIME
    "$@" >/dev/null 2>&1 || true
    t1=$EPOCHREALTIME
    echo $(( ${t1/./} - ${t0/./} ))
}

# median: the median of the whole numbers on stdin, one a line (for an even count, the mean
# of the middle two, truncated).
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
