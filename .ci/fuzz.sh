#!/usr/bin/env bash
# The fuzz workspace (fuzz/: cargo-fuzz targets, a workspace and Cargo.lock of its own) for CI.
#
#   .ci/fuzz.sh build   install cargo-fuzz (crates.io, --locked) into $WSS_CI_WORK, check that
#                       fuzz/Cargo.lock is current, build every target
#   .ci/fuzz.sh run     run every target for a bounded time: WSS_FUZZ_SECONDS in all (default
#                       60), split evenly, at least 10 s each
#
# Every file in fuzz/fuzz_targets/ must be a target `cargo fuzz list` knows (a [[bin]] in
# fuzz/Cargo.toml), so a new target cannot be left out. The sanitizer flags cargo-fuzz passes are
# nightly-only: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them (docs/security.md, "Hostile input").
# A crash fails the step, prints libFuzzer's report and leaves the input in fuzz/artifacts/.
#
# Built in the dev profile by default (WSS_FUZZ_PROFILE=release for cargo-fuzz's own default).
# Measured on this project's 2-core machine, cold: dev 4.5 CPU-minutes to build, ~1,000 runs/s
# of parse_entry; release 8.6 CPU-minutes (one codegen unit per crate), ~15,000 runs/s. In CI the
# build time counts and a minute of fuzzing is a smoke test either way; longer runs: docs/security.md.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${WSS_FUZZ_PROFILE:-dev}" in
  dev) profile=(--dev) ;;
  release) profile=() ;;
  *) echo "WSS_FUZZ_PROFILE must be dev or release" >&2; exit 2 ;;
esac

: "${WSS_CI_WORK:?set WSS_CI_WORK to a scratch directory (.ci/run does)}"
tools="$WSS_CI_WORK/cargo-fuzz"
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1

targets() {
  local listed
  listed=$(cargo fuzz list --fuzz-dir fuzz)
  for file in fuzz/fuzz_targets/*.rs; do
    local name
    name=$(basename "$file" .rs)
    if ! grep -qx "$name" <<<"$listed"; then
      echo "fuzz/fuzz_targets/$name.rs is not a target of fuzz/Cargo.toml: add a [[bin]] for it" >&2
      return 1
    fi
  done
  echo "$listed"
}

case "${1:-}" in
  build)
    if [ ! -x "$tools/bin/cargo-fuzz" ]; then
      cargo install cargo-fuzz --locked --quiet --root "$tools"
    fi
    cargo fuzz --version
    cargo fetch --locked --manifest-path fuzz/Cargo.toml
    targets >/dev/null
    cargo fuzz build "${profile[@]}" --fuzz-dir fuzz
    ;;
  run)
    listed=$(targets)
    mapfile -t names <<<"$listed"
    total=${WSS_FUZZ_SECONDS:-60}
    each=$(( total / ${#names[@]} ))
    (( each >= 10 )) || each=10
    for name in "${names[@]}"; do
      log="$WSS_CI_WORK/fuzz-$name.log"
      echo "fuzzing $name for $each s"
      if ! cargo fuzz run "${profile[@]}" --fuzz-dir fuzz "$name" -- -max_total_time="$each" -print_final_stats=1 >"$log" 2>&1; then
        cat "$log"
        echo "fuzz target $name failed; the input is under fuzz/artifacts/$name/ (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run ${profile[*]} --fuzz-dir fuzz $name <file>)" >&2
        exit 1
      fi
      grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" || tail -n 3 "$log"
    done
    ;;
  *)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
