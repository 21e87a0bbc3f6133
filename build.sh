#!/usr/bin/env bash
# Sets up a Debian machine and builds crashcart, as root:
#   ./build.sh           install what is missing (apt-get), build cartbuild and a fully static
#                        cartinject, build the default image from recipes/net.toml into images/,
#                        and point ./crashcart.img at it. A second run reuses every cache.
#   ./build.sh release   the same set-up, then `cartbuild release` of the recipes (see README).
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD

if [ "$(id -u)" != 0 ]; then
    echo "build.sh: run as root (it installs Debian packages with apt-get)" >&2
    exit 1
fi

say() { printf '==> %s\n' "$*" >&2; }

say "checking Debian packages (.ci/packages)"
.ci/setup packages

if ! command -v cargo >/dev/null; then
    echo "build.sh: cargo not found: install Rust (https://rustup.rs) and run ./build.sh again" >&2
    exit 1
fi

host=$(rustc -vV | sed -n 's/^host: //p')
say "building cartbuild (release)"
cargo build --release --locked -p cartbuild
# cartinject must run on hosts we did not build on: link it statically.
say "building cartinject (release, static)"
.ci/build-static-cartinject >/dev/null

mkdir -p bin
ln -sf "../target/release/cartbuild" bin/cartbuild
ln -sf "../target/$host/release/cartinject" bin/cartinject

if [ "${1:-}" = release ]; then
    shift
    say "building a release"
    exec bin/cartbuild release "${@:-recipes/net.toml}"
fi

say "building the default image from recipes/net.toml"
# cartbuild prints the image's path on stdout; progress goes to stderr.
image=$(realpath --relative-to="$root" "$(bin/cartbuild recipes/net.toml)")
ln -sfn "$image" crashcart.img

cat <<MSG

crashcart is built.
  cartbuild   $root/bin/cartbuild
  cartinject  $root/bin/cartinject   (static: copy it to any Linux host)
  image       $root/$(readlink crashcart.img)   (+ .sha256, .manifest.json, .spdx.json beside it)
  default     $root/crashcart.img -> $(readlink crashcart.img)

Next: a shell with the image's tools inside a running container (as root, from $root):
  bin/cartinject CONTAINER            # a Docker name, an ID prefix, or a PID
  bin/cartinject CONTAINER -- lsof -p 1
The README walks through the rest (-m, docker exec, -u).
MSG
