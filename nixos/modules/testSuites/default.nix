# Opt-in test suites, as kdevops runs them in its guests: nixboot.testSuites.<name>.enable
# installs the suite (from nixpkgs 24.05 where it has one: fstests as xfstests, sysbench;
# the others from a package or directory of yours), configures it from the guest's extra
# disks (nixboot.guest.disks) and gives one unit, nixboot-testsuite-<name>, writing its
# results under nixboot.testSuites.resultsDir (lib.nix).
{
  imports = [
    ./common.nix
    ./fstests.nix
    ./blktests.nix
    ./ltp.nix
    ./selftests.nix
    ./mmtests.nix
    ./pynfs.nix
    ./sysbench.nix
    ./gitr.nix
  ];
}
