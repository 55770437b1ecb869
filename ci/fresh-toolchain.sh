#!/usr/bin/env bash
# Builds the hypervisor as a fresh machine would: `PATH` holds only rustup's proxies and the
# system directories (nothing made by hand), and its first entry is a `rust-lld` that fails
# loudly. A build that links with whatever `rust-lld` happens to be on a long-lived machine's
# PATH, instead of the linker setup installs and names, fails here. It runs setup's detection
# (installing what is missing, as on CI's fresh machine) and a real link of the image.
set -euo pipefail
cd "$(dirname "$0")/.."

poison=$(mktemp -d)
trap 'rm -rf "$poison"' EXIT
cat >"$poison/rust-lld" <<'SCRIPT'
#!/bin/sh
echo "ci: the build ran 'rust-lld' from PATH: a fresh machine has none; setup must name the linker it installs" >&2
exit 1
SCRIPT
chmod +x "$poison/rust-lld"

fresh_path="$poison:$HOME/.cargo/bin:/usr/sbin:/usr/bin:/sbin:/bin"
echo "ci: fresh-machine toolchain check, PATH=$fresh_path"
# A changed source forces the image to be compiled and linked again under this PATH.
touch hyp/src/main.rs tools/test-guest/src/main.rs
# Through `./x`, which installs Debian's cargo first on a machine that has none at all.
PATH="$fresh_path" ./x build
