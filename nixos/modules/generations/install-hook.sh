# nixboot boot counting: run by systemd-boot's installer after it wrote the entries
# (boot.loader.systemd-boot.extraInstallCommands). Gives each NEW generation's entry the
# Boot Loader Specification counter `+TRIES` (systemd-boot then decrements it on every try
# and sorts an exhausted entry last; a healthy boot renames it back: bless-boot.sh), keeps
# the counters of entries already counted, and removes counted entries of generations
# that no longer exist (NixOS's builder only knows the plain names).
#
# Environment: ESP (the EFI system partition's mount point), TRIES (>= 1); ROOT (tests
# only) is prefixed to the init= paths checked.
# State: $ESP/loader/nixboot-counted lists the entry ids that got a counter once; an id in
# it whose entry is plain again was blessed and stays plain. Exit 0, or 1 with one message
# (a bad setting, or an entry naming a kernel/initrd missing from the ESP: nothing changed).
set -euo pipefail

entries=$ESP/loader/entries
state=$ESP/loader/nixboot-counted
fail() { echo "nixboot boot counting: $*" >&2; exit 1; }
[[ $TRIES =~ ^[1-9][0-9]*$ ]] || fail "tries must be a positive number, not '$TRIES'"
[ -f "$ESP/loader/loader.conf" ] || fail "$ESP/loader/loader.conf does not exist (is $ESP the ESP?)"
[ -d "$entries" ] || fail "$entries does not exist (is $ESP the ESP?)"

# Check first, change after: every plain entry's linux/initrd must exist on the ESP.
shopt -s nullglob
plain=()
for f in "$entries"/nixos*-generation-*.conf; do
  name=${f##*/}
  case $name in *+*) continue ;; esac
  while read -r key value; do
    case $key in
      linux | initrd)
        [ -f "$ESP/${value#/}" ] || fail "$name names $key $value, missing from $ESP: no entry was changed" ;;
      options)
        # The generation itself (its toplevel's init) must exist on this system.
        for w in $value; do
          case $w in init=*)
            [ -e "${ROOT:-}${w#init=}" ] || fail "$name names generation ${w#init=}, which does not exist: no entry was changed" ;;
          esac
        done ;;
    esac
  done <"$f"
  plain+=("$f")
done

touch "$state"
# The newest generation number ever counted: only generations above it are new. Without
# any state (boot counting just enabled), only the newest generation present is new.
last=$(sed -n 's/^nixos.*-generation-\([0-9]*\).*/\1/p' "$state" | sort -n | tail -n1)
if [ -z "$last" ]; then
  last=$(for f in "${plain[@]}"; do n=${f##*-generation-}; echo "${n%%[!0-9]*}"; done | sort -n | tail -n1)
  last=$((${last:-1} - 1))
fi

seen=" "
for f in "${plain[@]}"; do
  id=${f##*/}; id=${id%.conf}
  seen+="$id "
  counted=("$entries/$id+"*.conf)
  n=${id##*-generation-}; n=${n%%[!0-9]*}
  if [ ${#counted[@]} -gt 0 ]; then
    # Already counted: new content, same counter (the name is the state).
    cat "$f" >"${counted[0]}.tmp" && mv "${counted[0]}.tmp" "${counted[0]}" && rm "$f"
  elif grep -qxF "$id" "$state"; then
    : # counted once and blessed since: stays plain
  elif [ "$n" -gt "$last" ]; then
    mv "$f" "$entries/$id+$TRIES.conf"
    echo "$id" >>"$state"
  fi
done

# systemd-boot's default: the newest generation with tries left (an exhausted entry sorts
# last), not the builder's fixed file name, which a counted entry no longer matches.
sed -i 's/^default .*/default nixos-generation-*/' "$ESP/loader/loader.conf"

# Counted entries whose generation the builder no longer wrote: garbage-collected.
for f in "$entries"/nixos*-generation-*+*.conf; do
  id=${f##*/}; id=${id%%+*}
  case $seen in *" $id "*) ;; *) rm "$f" ;; esac
done
