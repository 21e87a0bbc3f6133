# The sandbox probe (imagebuilder/tests/sandbox.rs): a build script that tries to
# reach past its sandbox and writes what happened into $OUT/share/probe/report.txt,
# one `NAME=RESULT` line each. An attempt that must fail is `blocked`, or
# `SUCCEEDED` when it got through; a control that must work is `ok`, or `FAILED`.
# probe.env (written by the test) names the host's paths, port and PID.
set +e
. ./probe.env
report="$OUT/share/probe/report.txt"
mkdir -p "$OUT/share/probe"
: > "$report"
attempt() {
    name=$1
    shift
    if "$@" > /dev/null 2>&1; then r=SUCCEEDED; else r=blocked; fi
    echo "$name=$r" >> "$report"
}
control() {
    name=$1
    shift
    if "$@" > /dev/null 2>&1; then r=ok; else r=FAILED; fi
    echo "$name=$r" >> "$report"
}
export SECRET HOST_HOME HOST_DIR CACHE PORT HOST_IP SLEEP_PID TMP_MARKER

# The builder's home: its secret (where signing keys live), and writing there.
attempt read_secret cat "$SECRET"
attempt list_host_home ls "$HOST_HOME"
attempt write_host_home sh -c 'echo pwned > "$HOST_HOME/pwned"'
attempt write_host_dir sh -c 'echo pwned > "$HOST_DIR/pwned"'
# The cache: sources, other packages' outputs.
attempt list_cache ls "$CACHE"
attempt list_cached_outputs ls "$CACHE/builds"
attempt read_cached_sources sh -c 'cat "$CACHE"/sources/sha256/*'
m=OTHER-PACKAGE
m="$m-MARKER"
attempt find_other_package grep -rqs "$m" / --exclude-dir=proc --exclude-dir=dev --exclude-dir=sys --exclude-dir=usr
# The network: a listener of the test on 127.0.0.1 and on the host's address.
attempt connect_loopback bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$PORT"'
attempt connect_host_address bash -c 'exec 3<>"/dev/tcp/$HOST_IP/$PORT"'
# A process of the host: see it, signal it.
attempt see_outside_process test -e "/proc/$SLEEP_PID"
attempt signal_outside_process kill -TERM "$SLEEP_PID"
# Read-only places.
attempt write_usr touch /usr/cartbuild-probe
attempt write_root touch /cartbuild-probe
attempt write_toolchain sh -c 'touch "$(dirname "$(dirname "$CC")")/cartbuild-probe"'
attempt write_deps touch "$DEPS/cartbuild-probe"
attempt write_script sh -c 'echo >> /build/script.sh'
attempt write_etc touch /etc/cartbuild-probe
# Privileges.
attempt uid_root test "$(id -u)" = 0
attempt capabilities grep -q '^CapEff:.*[1-9a-f]' /proc/self/status
attempt capability_bounding_set grep -q '^CapBnd:.*[1-9a-f]' /proc/self/status
attempt mount sh -c 'mount -t tmpfs none "$HOME" && umount "$HOME"'

# What a build needs, which must work.
control deps_read cat "$DEPS/dep-marker.txt"
control write_out touch "$OUT/share/probe/written"
control write_home sh -c 'echo x > "$HOME/x"'
control write_private_tmp sh -c 'echo x > "/tmp/$TMP_MARKER"'
control write_source sh -c 'echo x > ./written'
control compile sh -c 'printf "int main(void){return 0;}\n" > t.c && $CC $CFLAGS $LDFLAGS -o t t.c && ./t'
echo "uid=$(id -u)" >> "$report"
cat "$report"
