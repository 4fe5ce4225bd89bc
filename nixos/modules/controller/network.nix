# Libvirt network XML of the controller's NAT network (nixboot.controller.networking, mode
# "nat"): a bridge with DHCP that libvirt masquerades to the host's uplink. Pure function of
# its arguments, so that tests can render it and define it on a real libvirtd.
{ lib, name, bridge, address, prefixLength, dhcpStart, dhcpEnd }:
let
  attr = v: lib.escapeXML (toString v);
  h = builtins.hashString "sha256" "nixboot-network-${name}";
  uuid = "${builtins.substring 0 8 h}-${builtins.substring 8 4 h}-4${builtins.substring 13 3 h}-a${builtins.substring 17 3 h}-${builtins.substring 20 12 h}";
in
''
  <network>
    <name>${attr name}</name>
    <uuid>${uuid}</uuid>
    <forward mode='nat'/>
    <bridge name='${attr bridge}' stp='on' delay='0'/>
    <ip address='${attr address}' prefix='${toString prefixLength}'>
      <dhcp>
        <range start='${attr dhcpStart}' end='${attr dhcpEnd}'/>
      </dhcp>
    </ip>
  </network>
''
