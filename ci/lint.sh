#!/usr/bin/env bash
# Formatting and lints for every crate, on the host toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo fmt --version >/dev/null 2>&1; then
    echo "ci: cargo fmt --check"
    cargo fmt --all -- --check
else
    echo "ci: rustfmt not installed; skipping the format check"
fi

if cargo clippy --version >/dev/null 2>&1; then
    echo "ci: cargo clippy"
    cargo clippy --workspace --all-targets --quiet -- -D warnings
else
    echo "ci: clippy not installed; skipping lints"
fi
