#!/bin/sh
# The sha256 of the board's store, if it has one. $1 root: the target's directory. Runs on the board.
set -eu
cd -- "$1"
if [ -f state/taught.store ]; then echo "store_sha256=$(sha256sum state/taught.store | cut -d ' ' -f 1)"; fi
