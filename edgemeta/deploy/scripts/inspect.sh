#!/bin/sh
# Inspect: what is under the target's directory. Runs on the board (POSIX sh) via Board.run.
# $1 root: the target's directory; $2 mode: status, deploy or rollback.
# In "deploy"/"rollback" mode it also finishes what a cut switch left: the store a switched-to version
# brought (its taught.store.pending) is moved into place, other pending stores and stale uploads
# (*.partial) are removed.
# Only names deploy makes are listed (is_version; state.VERSION_ID is the same pattern): any other entry
# under versions/ is reported hex-encoded (odd=...), so that no byte of a name can start a line of this
# output, and is otherwise left alone: never cleaned, listed or pruned.
set -eu
root=$1 mode=$2
# include names.sh
hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }
if [ "$mode" != status ]; then mkdir -p -- "$root/versions" "$root/state"; fi
if ! cd -- "$root" 2>/dev/null; then echo "root="; exit 0; fi
echo "root=$(pwd -P)"
cur=
if [ -L current ]; then
  cur=$(readlink current)
  if is_version "${cur#versions/}" && [ "$cur" = "versions/${cur#versions/}" ]; then echo "current=${cur#versions/}"
  else echo "current_odd=$(hex "$cur")"; exit 0; fi
elif [ -e current ]; then echo "current_not_link=1"; fi
if [ "$mode" != status ]; then
  if [ -n "$cur" ] && [ -f "$cur/taught.store.pending" ]; then
    mv -f -- "$cur/taught.store.pending" state/taught.store; sync; echo "rolled_forward=${cur#versions/}"
  fi
  for p in versions/*; do
    v=${p#versions/}
    if [ "${v%.partial}" != "$v" ]; then
      if is_version "${v%.partial}"; then rm -rf -- "$p"; echo "cleaned=$v"; fi
    elif is_version "$v" && [ "$p" != "$cur" ] && [ -f "$p/taught.store.pending" ]; then
      rm -f -- "$p/taught.store.pending"
    fi
  done
  rm -f current.new
fi
for p in versions/*; do
  [ -e "$p" ] || [ -L "$p" ] || continue  # versions/ is empty: the pattern itself
  v=${p#versions/}
  if [ "${v%.partial}" != "$v" ] && is_version "${v%.partial}"; then continue; fi  # an upload (status mode)
  if [ -L "$p" ] || [ ! -d "$p" ] || ! is_version "$v"; then echo "odd=$(hex "$v")"; continue; fi
  echo "version=$v"
  if [ -f "$p/manifest.json" ]; then printf 'manifest=%s ' "$v"; tr -d '\r\n' < "$p/manifest.json"; echo; fi
  if [ -f "$p/taught.store.saved" ]; then echo "saved_store=$v"; fi
done
if [ -f history ]; then tail -n 200 history | sed 's/^/history=/'; fi
if [ -f state/taught.store ]; then echo "store_sha256=$(sha256sum state/taught.store | cut -d ' ' -f 1)"; fi
for tool in sha256sum readlink head mv ln sync od tr; do
  command -v "$tool" >/dev/null 2>&1 || echo "missing=$tool"
done
