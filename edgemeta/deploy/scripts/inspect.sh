#!/bin/sh
# Inspect: what is under the target's directory. Runs on the board (POSIX sh) via Board.run.
# $1 root: the target's directory; $2 mode: status, deploy or rollback.
# In "deploy"/"rollback" mode it also finishes what a cut switch left: the store a switched-to version
# brought (its taught.store.pending) is moved into place, other pending stores and stale uploads
# (*.partial) are removed.
set -eu
root=$1 mode=$2
if [ "$mode" != status ]; then mkdir -p -- "$root/versions" "$root/state"; fi
if ! cd -- "$root" 2>/dev/null; then echo "root="; exit 0; fi
echo "root=$(pwd -P)"
cur=
if [ -L current ]; then cur=$(readlink current); echo "current=${cur#versions/}"
elif [ -e current ]; then echo "current_not_link=1"; fi
if [ "$mode" != status ]; then
  if [ -n "$cur" ] && [ -f "$cur/taught.store.pending" ]; then
    mv -f -- "$cur/taught.store.pending" state/taught.store; sync; echo "rolled_forward=${cur#versions/}"
  fi
  for d in versions/*; do
    case $d in
      *.partial) rm -rf -- "$d"; echo "cleaned=${d#versions/}" ;;
      *) if [ "$d" != "$cur" ] && [ -f "$d/taught.store.pending" ]; then rm -f -- "$d/taught.store.pending"; fi ;;
    esac
  done
  rm -f current.new
fi
for d in versions/*; do
  [ -d "$d" ] || continue
  v=${d#versions/}
  echo "version=$v"
  if [ -f "$d/manifest.json" ]; then printf 'manifest=%s ' "$v"; tr -d '\r\n' < "$d/manifest.json"; echo; fi
  if [ -f "$d/taught.store.saved" ]; then echo "saved_store=$v"; fi
done
if [ -f history ]; then tail -n 200 history | sed 's/^/history=/'; fi
if [ -f state/taught.store ]; then echo "store_sha256=$(sha256sum state/taught.store | cut -d ' ' -f 1)"; fi
for tool in sha256sum readlink head mv ln sync; do
  command -v "$tool" >/dev/null 2>&1 || echo "missing=$tool"
done
