#!/bin/sh
# Re-hashes the current version's files against its SHA256SUMS. $1 root: the target's directory.
# Runs on the board.
set -eu
cd -- "$1"
cur=$(readlink current)
cd "$cur"
if out=$(sha256sum -c SHA256SUMS 2>&1); then echo "verified=$(wc -l < SHA256SUMS | tr -d ' ')"
else printf '%s\n' "$out" | grep -v ': OK$' | sed 's/^/verify_failed=/'; fi
