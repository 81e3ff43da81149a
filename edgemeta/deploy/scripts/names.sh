# Shared by inspect.sh and switch.sh: edgemeta.deploy.ssh.script puts it in where they ask for names.sh.
d='[0123456789]' x='[0123456789abcdef]'
# is_version NAME: whether NAME is YYYYMMDDTHHMMSSZ-<12 hex>[-N], as new_version_id makes it. Only such
# names are listed, switched to or pruned: a name from anywhere else (a crafted listing, a hand-made
# directory) must not reach `rm -rf`.
is_version() {
  case $1 in
    $d$d$d$d$d$d$d$d"T"$d$d$d$d$d$d"Z-"$x$x$x$x$x$x$x$x$x$x$x$x) return 0 ;;
    $d$d$d$d$d$d$d$d"T"$d$d$d$d$d$d"Z-"$x$x$x$x$x$x$x$x$x$x$x$x-*) is_version_rest=${1#*Z-????????????-} ;;
    *) return 1 ;;
  esac
  case $is_version_rest in ''|*[!0123456789]*) return 1 ;; esac
}
