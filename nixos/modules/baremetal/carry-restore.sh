# Restores what kexec-run.sh carried over from the previous system (from /run/nixboot/carry):
# ssh host keys, root's authorized keys, static addresses and default routes. Interfaces are
# matched by MAC address. Runs before sshd and before the network is configured.
set -euo pipefail
carry=/run/nixboot/carry

if [ -d "$carry/ssh" ]; then
  install -d -m 0755 /etc/ssh
  for f in "$carry"/ssh/ssh_host_*; do
    [ -e "$f" ] || continue
    case $f in
      *.pub) install -m 0644 "$f" /etc/ssh/ ;;
      *) install -m 0600 "$f" /etc/ssh/ ;;
    esac
  done
fi

if [ -s "$carry/authorized_keys" ]; then
  install -d -m 0700 /root/.ssh
  touch /root/.ssh/authorized_keys
  chmod 0600 /root/.ssh/authorized_keys
  # Keep keys the configuration already put there; add the carried ones once.
  sort -u /root/.ssh/authorized_keys "$carry/authorized_keys" > /root/.ssh/authorized_keys.new
  mv /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
fi

# name of the local interface that has the MAC address of interface $1 in addrs.json
local_ifname() {
  local mac
  mac=$(jq -r --arg n "$1" '.[] | select(.ifname == $n) | .address // empty' "$carry/addrs.json")
  [ -n "$mac" ] || return 0
  ip -j link show | jq -r --arg m "$mac" '.[] | select(.address == $m) | .ifname' | head -n1
}

if [ -s "$carry/addrs.json" ]; then
  # Static (non-dynamic) global addresses; DHCP-assigned ones come back by DHCP.
  jq -r '.[] | .ifname as $i | .addr_info[]?
         | select(.scope == "global" and (.dynamic // false) == false)
         | "\($i) \(.local)/\(.prefixlen)"' "$carry/addrs.json" |
  while read -r old addr; do
    new=$(local_ifname "$old")
    [ -n "$new" ] || continue
    ip link set dev "$new" up
    ip addr replace "$addr" dev "$new" || echo "nixboot-carry: could not add $addr to $new" >&2
  done
  for routes in "$carry/routes.json" "$carry/routes6.json"; do
    [ -s "$routes" ] || continue
    jq -r '.[] | select(.dst == "default" and .gateway != null and (.protocol // "") != "dhcp" and (.protocol // "") != "ra")
           | "\(.dev) \(.gateway)"' "$routes" |
    while read -r old gw; do
      new=$(local_ifname "$old")
      [ -n "$new" ] || continue
      ip route replace default via "$gw" dev "$new" || echo "nixboot-carry: could not route via $gw on $new" >&2
    done
  done
fi
