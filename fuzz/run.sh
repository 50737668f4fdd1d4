#!/usr/bin/env bash
# A short bounded run of every fuzz target (CI; README "Fuzzing"): each target for
# FUZZ_SECONDS (default 20) from its committed seed corpus, copied to a temporary folder so the
# inputs libFuzzer adds never land in the tree. A crash, a failed assertion, a leak or a timeout
# fails the run; the input is left in fuzz/artifacts/<target>/ and libFuzzer prints how to
# reproduce it. Installs a C++ compiler, the nightly toolchain and cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${FUZZ_SECONDS:-20}"

# libFuzzer itself is C++, built by the libfuzzer-sys crate: a C++ compiler from Debian.
if ! command -v c++ >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi
# Install nightly only when it is missing: `rustup toolchain install` would also update one.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build
run="$(mktemp -d)"
trap 'rm -rf "$run"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$run/$target"
    cp corpus/"$target"/* "$run/$target"/
    dict=()
    if [ -f "dict/$target.dict" ]; then dict=(-dict="$PWD/dict/$target.dict"); fi
    echo "fuzz: $target for ${seconds}s"
    # -timeout: one input running for more than 10 s is a hang, which fails the run too.
    if ! cargo +nightly fuzz run "$target" "$run/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" >"$run/$target.log" 2>&1; then
        tail -n 80 "$run/$target.log"
        echo "fuzz: $target FAILED (input saved under fuzz/artifacts/$target/)"
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$run/$target.log"
done
