#!/usr/bin/env bash
# There is no Docker engine here, so this checks the Dockerfile's build stage the closest way we
# can: copy exactly what its COPY lines copy into an empty directory and run its cargo command
# there (as `cargo check`: the same manifest, lock file, sources and targets, without the release
# build). It catches a build context that misses a file cargo needs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# COPY lines of the build stage (up to the second FROM), without --from.
awk '/^FROM /{n++} n==1 && /^COPY / && !/--from/' Dockerfile | while read -r _ args; do
  read -ra parts <<<"$args"
  for src in "${parts[@]:0:${#parts[@]}-1}"; do
    cp -r "$src" "$context/"
  done
done
run=$(awk '/^FROM /{n++} n==1 && /^RUN cargo build/' Dockerfile | sed 's/^RUN //')
[ -n "$run" ] || { echo "no 'RUN cargo build' in the Dockerfile's build stage" >&2; exit 1; }
check=${run/cargo build --release/cargo check}
echo "Dockerfile build stage: $check (in a context holding only what COPY copies)"
(cd "$context" && CARGO_TARGET_DIR="$repo/target" $check)
