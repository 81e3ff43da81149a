#!/bin/sh
# Switch (deploy and rollback): verify the upload, check nothing changed since it was read, keep the
# live store for rollback, switch `current` (one rename), move the new version's store into place, log,
# prune, run the after hook. Each step is one rename or one new file. Runs on the board (POSIX sh).
# $1 root, $2 action (deploy|rollback), $3 id: the version switched to, $4 old: the current version
# (empty: none), $5 store_action (keep|replace|restore), $6 store_sha: the sha256 the live store must
# still have (empty: none), $7 after: the --after-switch command, $8 restart: the after command when the
# before hook already ran (so a refused switch still restarts what it stopped), else empty, $9 note: the
# history line's note, $10 sums: the sha256 of SHA256SUMS (deploy), $11 pending_sha: the sha256 of the
# new version's taught.store.pending (empty: not checked); then the versions to prune.
set -eu
root=$1 action=$2 id=$3 old=$4 store_action=$5 store_sha=$6 after=$7 restart=$8 note=$9 sums=${10} pending_sha=${11}
shift 11
cd -- "$root"
fail() {
  echo "error=$*"
  if [ -n "$restart" ]; then sh -c "$restart" >&2 || true; fi
  exit 3
}
# include names.sh
if [ -n "$old" ] && ! is_version "$old"; then fail "the current version is not one deploy named; nothing was switched"; fi
for v in "$@"; do
  is_version "$v" || fail "refusing to prune an entry deploy did not name; nothing was switched"
done
if [ "$action" = deploy ]; then
  [ -d "versions/$id.partial" ] || fail "versions/$id.partial is gone (another deploy to this board cleaned it?); nothing was switched"
  # The list itself must be the one computed on the workstation (complete, not truncated).
  got=$(sha256sum "versions/$id.partial/SHA256SUMS" | cut -d ' ' -f 1)
  [ "$got" = "$sums" ] || { rm -rf -- "versions/$id.partial"; fail "SHA256SUMS on the board is not the one sent; nothing was switched"; }
  if ! out=$(cd "versions/$id.partial" && sha256sum -c SHA256SUMS 2>&1); then
    printf '%s\n' "$out" | grep -v ': OK$' | sed 's/^/verify_failed=/' || true
    rm -rf -- "versions/$id.partial"
    fail "sha256 verification failed on the board; nothing was switched"
  fi
  is_version "$id" || fail "refusing to switch to a version deploy did not name; nothing was switched"
  echo "verified=$(wc -l < "versions/$id.partial/SHA256SUMS" | tr -d ' ')"
  sync
  mv -- "versions/$id.partial" "versions/$id"
fi
is_version "$id" || fail "refusing to switch to a version deploy did not name; nothing was switched"
[ -d "versions/$id" ] || fail "versions/$id does not exist on the board"
now=
if [ -L current ]; then now=$(readlink current); now=${now#versions/}; fi
[ "$now" = "$old" ] || fail "current changed during the $action (it is now '${now}', was '${old}'): another deploy? Nothing was switched; re-run"
if [ "$store_action" != keep ]; then
  # The adapter writing the store holds an flock on its lock file (edgemeta.runtime.lock): a store replaced
  # under it would be overwritten by its next save. flock(1) is util-linux's, on every Raspberry Pi OS.
  if [ -f state/taught.store.lock ] && command -v flock >/dev/null 2>&1 && ! flock -n state/taught.store.lock true; then
    holder=$(head -c 32 state/taught.store.lock | tr -cd 0-9)
    fail "a running adapter (PID ${holder:-unknown}) still writes the board's store; stop it first (--before-switch); nothing was switched"
  fi
  live=
  if [ -f state/taught.store ]; then live=$(sha256sum state/taught.store | cut -d ' ' -f 1); fi
  [ "$live" = "$store_sha" ] || fail "the board's store changed during the $action (a class enrolled meanwhile?); nothing was switched; re-run"
  if [ -n "$live" ]; then
    if [ -n "$old" ]; then keep="versions/$old/taught.store.saved"; else keep="state/taught.store.before-$id"; fi
    ln -f state/taught.store "$keep.tmp" 2>/dev/null || cp -p state/taught.store "$keep.tmp"
    mv -f -- "$keep.tmp" "$keep"
  fi
  if [ "$store_action" = restore ]; then
    ln -f "versions/$id/taught.store.saved" "versions/$id/taught.store.pending" 2>/dev/null ||
      cp -p "versions/$id/taught.store.saved" "versions/$id/taught.store.pending"
  fi
  [ -f "versions/$id/taught.store.pending" ] || fail "versions/$id/taught.store.pending is missing; nothing was switched"
  if [ -n "$pending_sha" ]; then
    got=$(sha256sum "versions/$id/taught.store.pending" | cut -d ' ' -f 1)
    [ "$got" = "$pending_sha" ] || fail "sha256 verification failed on the board for the new store ($got); nothing was switched"
  fi
fi
ln -sfn "versions/$id" current.new
mv -T current.new current
echo "switched=$id"
if [ "$store_action" != keep ]; then
  mv -f -- "versions/$id/taught.store.pending" state/taught.store
  echo "store=replaced"
fi
printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$action" "$id" "${old:--}" "$note" >> history
sync
for v in "$@"; do rm -rf -- "versions/$v"; echo "pruned=$v"; done
if [ -n "$after" ]; then sh -c "$after" >&2 || echo "warning=the --after-switch command failed"; fi
