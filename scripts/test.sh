#!/usr/bin/env bash
# The whole test suite: formatting, lints, the browser SDK's type check and unit tests, and
# every test of every crate (tests/browser.rs drives the pages in Chromium).
# This is the README's test command; CI (.ci/run) calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== browser SDK: dependencies, type check (tsc --noEmit, checkJs strict), unit tests"
(
  cd client-sdk/js
  # Install the pinned dev dependencies when they are missing or the lock file changed.
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
  fi
  npm run --silent typecheck
  node --test test/unit/
)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets
