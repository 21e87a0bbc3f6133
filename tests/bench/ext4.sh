#!/usr/bin/env bash
# Benchmark: cartbuild's ext4 writer against `mke2fs -t ext4 -O ^has_journal -d`.
#
#   tests/bench/ext4.sh [NET_STAGED_DIR]
#
# On the same trees, measures wall time and peak memory (max RSS from
# /usr/bin/time -v) of both writers, and the image size against the sum of
# the file sizes, printing medians of $RUNS runs (default 5) and ratios:
#
#   synthetic  a deterministic 500 MB tree: 4 large files and ~5000 small
#              ones (0.5-80 KiB) over 50 directories, with symlinks and
#              hard links;
#   net        the net image's staged tree (NET_STAGED_DIR, e.g. kept with
#              `cartbuild recipes/net.toml --staged DIR`); without it, a
#              stand-in of static binaries (busybox and its applet links,
#              bash-static, strace, e2fsprogs tools);
#   one-file   a single 16 MiB file and a single 1 GiB file, written by our
#              writer only, to show that its memory does not grow with file size.
#
# Both writers run with a warm page cache and both sync the image before they
# exit (mke2fs always fsyncs; the example is given --sync). mke2fs gets an
# image of 1.25 x content + 16 MiB (it cannot size one to fit); its size column
# is what `resize2fs -M` then shrinks that to, the way the original tool made
# its images. Not a test: nothing here asserts; read the numbers.
#
# Environment: RUNS (default 5), BENCH_DIR (default /var/tmp/crashcart-bench-ext4,
# generated trees are kept there between runs), CARGO_TARGET_DIR.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
runs=${RUNS:-5}
work=${BENCH_DIR:-/var/tmp/crashcart-bench-ext4}
net_dir=${1:-}

for tool in /usr/bin/time mke2fs resize2fs openssl perl; do
    command -v "$tool" >/dev/null || {
        echo "ext4.sh: $tool is missing (apt-get install time e2fsprogs openssl perl)" >&2
        exit 1
    }
done

echo "building the ext4_write example (release)..." >&2
(cd "$repo" && cargo build --quiet --release -p cartbuild --example ext4_write)
writer=${CARGO_TARGET_DIR:-$repo/target}/release/examples/ext4_write
mkdir -p "$work"

# Deterministic pseudo-random bytes: AES-CTR over zeros with a fixed key.
random_bytes() { # SEED LEN
    openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
        -iv "$(printf '%032x' "$1")" -in /dev/zero 2>/dev/null | head -c "$2"
}

make_synthetic() {
    local dir=$work/synthetic
    [[ -f $work/synthetic.done ]] && { echo "$dir"; return; }
    rm -rf "$dir" && mkdir -p "$dir/big"
    echo "generating the synthetic tree in $dir..." >&2
    local i=1
    for mb in 120 90 60 30; do
        random_bytes "$i" $((mb << 20)) >"$dir/big/file$i.bin"
        chmod 0755 "$dir/big/file$i.bin"
        i=$((i + 1))
    done
    # ~5000 small files carved from a pool, sizes from a fixed LCG.
    random_bytes 99 $((256 << 20)) >"$work/pool"
    perl -e '
        my ($dir, $pool) = @ARGV;
        open(my $p, "<:raw", $pool) or die;
        my $x = 12345; my $total = 0; my $n = 0;
        while ($total < 200 * 1024 * 1024) {
            $x = ($x * 1103515245 + 12345) % 2147483648;
            my $len = 512 + $x % (80 * 1024);
            my $d = sprintf("%s/dir%02d", $dir, $n % 50);
            mkdir $d unless -d $d;
            seek($p, ($x * 7) % (200 * 1024 * 1024), 0);
            read($p, my $buf, $len) == $len or die;
            open(my $f, ">:raw", sprintf("%s/f%05d.dat", $d, $n)) or die;
            print $f $buf; close $f;
            if ($n % 100 == 0) { symlink(sprintf("f%05d.dat", $n), sprintf("%s/link%05d", $d, $n)) }
            if ($n % 250 == 0) { link(sprintf("%s/f%05d.dat", $d, $n), sprintf("%s/hard%05d", $d, $n)) }
            $total += $len; $n++;
        }
    ' "$dir" "$work/pool"
    rm -f "$work/pool"
    touch "$work/synthetic.done"
    echo "$dir"
}

make_net_standin() {
    local dir=$work/net-standin
    rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/sbin"
    cp /bin/busybox "$dir/bin/busybox"
    for applet in $("$dir/bin/busybox" --list); do
        [[ -e $dir/bin/$applet ]] || ln -s busybox "$dir/bin/$applet"
    done
    [[ -x /bin/bash-static ]] && cp /bin/bash-static "$dir/bin/bash"
    [[ -x /usr/bin/strace ]] && cp /usr/bin/strace "$dir/bin/strace"
    for tool in e2fsck debugfs mke2fs; do
        cp "$(command -v $tool)" "$dir/sbin/$tool"
    done
    echo "$dir"
}

make_one_file() { # NAME MIB
    local dir=$work/one-file-$1
    [[ -f $dir/data ]] || { mkdir -p "$dir" && random_bytes 7 $(($2 << 20)) >"$dir/data"; }
    echo "$dir"
}

content_bytes() { # each inode once
    find "$1" -type f -printf '%i %s\n' | sort -u | awk '{s += $2} END {print s + 0}'
}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# Runs a command under /usr/bin/time -v; prints "seconds max_rss_kib".
measure() {
    local log=$work/time.log
    /usr/bin/time -v -o "$log" "$@" >/dev/null
    awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]}
                /Maximum resident set size/ {m = $2}
                END {print s, m}' "$log"
}

bench_tree() { # NAME DIR [ours-only]
    local name=$1 dir=$2 only_ours=${3:-}
    local content img=$work/out.img
    content=$(content_bytes "$dir")
    local ours_t=() ours_m=() theirs_t=() theirs_m=() ours_size theirs_size=""
    for ((r = 0; r < runs; r++)); do
        rm -f "$img"
        read -r t m < <(measure "$writer" "$dir" "$img" --free 0 --epoch 1700000000 --sync)
        ours_t+=("$t") ours_m+=("$m")
        ours_size=$(stat -c %s "$img")
    done
    e2fsck -fn "$img" >/dev/null 2>&1 || echo "WARNING: e2fsck did not pass our $name image" >&2
    if [[ -z $only_ours ]]; then
        local size_mib=$(((content * 5 / 4 >> 20) + 16))
        for ((r = 0; r < runs; r++)); do
            rm -f "$img" && truncate -s "${size_mib}M" "$img"
            read -r t m < <(measure mke2fs -q -F -t ext4 -O ^has_journal -d "$dir" "$img")
            theirs_t+=("$t") theirs_m+=("$m")
        done
        resize2fs -M "$img" >/dev/null 2>&1
        theirs_size=$(stat -c %s "$img")
    fi
    rm -f "$img"

    local ot om
    ot=$(printf '%s\n' "${ours_t[@]}" | median)
    om=$(printf '%s\n' "${ours_m[@]}" | median)
    printf '%-10s content %8.1f MiB in %6d files\n' "$name" "$(echo "$content / 1048576" | bc -l)" \
        "$(find "$dir" -type f | wc -l)"
    printf '  %-28s %8.2f s  %8.1f MiB RSS  image %8.1f MiB = content x %.4f\n' "cartbuild ext4 writer" \
        "$ot" "$(echo "$om / 1024" | bc -l)" "$(echo "$ours_size / 1048576" | bc -l)" \
        "$(echo "$ours_size / $content" | bc -l)"
    if [[ -z $only_ours ]]; then
        local tt tm
        tt=$(printf '%s\n' "${theirs_t[@]}" | median)
        tm=$(printf '%s\n' "${theirs_m[@]}" | median)
        printf '  %-28s %8.2f s  %8.1f MiB RSS  image %8.1f MiB = content x %.4f (after resize2fs -M)\n' \
            "mke2fs -d" "$tt" "$(echo "$tm / 1024" | bc -l)" "$(echo "$theirs_size / 1048576" | bc -l)" \
            "$(echo "$theirs_size / $content" | bc -l)"
        printf '  ratio ours/mke2fs: time %.2f, memory %.2f, image size %.3f\n' \
            "$(echo "$ot / $tt" | bc -l)" "$(echo "$om / $tm" | bc -l)" "$(echo "$ours_size / $theirs_size" | bc -l)"
    fi
}

command -v bc >/dev/null || { echo "ext4.sh: bc is missing (apt-get install bc)" >&2; exit 1; }
echo "medians of $runs runs; times are wall clock, memory is max RSS" >&2
bench_tree synthetic "$(make_synthetic)"
if [[ -n $net_dir ]]; then
    bench_tree net "$net_dir"
else
    bench_tree net-standin "$(make_net_standin)"
fi
bench_tree 16MiB-file "$(make_one_file 16 16)" ours-only
bench_tree 1GiB-file "$(make_one_file 1024 1024)" ours-only
