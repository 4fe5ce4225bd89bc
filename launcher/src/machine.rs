//! The emulated machine: QEMU's `-machine`, the virtio transport its devices use, and the
//! kernel parameters that go with it. Chosen by measurement (docs/machines.md).

use std::fmt;
use std::str::FromStr;

/// A QEMU x86 machine type the launcher knows how to wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// i440fx (with one vCPU, SeaBIOS's PCI IRQ table: `pci=noacpi pci=nomsi`).
    Pc,
    /// Q35 (PCIe, ACPI interrupt routing, MSI-X): the default, the faster under TCG with
    /// one vCPU and with two (docs/machines.md).
    #[default]
    Q35,
    /// microvm: no PCI and no firmware tables to interpret beyond ACPI's device list;
    /// virtio devices on virtio-mmio, so the initrd must load `virtio_mmio` instead of
    /// `virtio_pci` (Debian's kernels build it as a module).
    Microvm,
}

impl Machine {
    pub const ALL: [Machine; 3] = [Machine::Pc, Machine::Q35, Machine::Microvm];

    /// The value of QEMU's `-machine`.
    pub fn qemu_machine(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
            // The virtio-mmio devices are described by microvm's ACPI tables: Debian's
            // kernels lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so QEMU's
            // `virtio_mmio.device=` parameters would be ignored. The PIT and PIC are only
            // "auto" with KVM's in-kernel irqchip: under TCG the kernel, without them,
            // cannot calibrate its clocks and hangs (measured: stuck after "tsc: Marking
            // TSC unstable").
            Machine::Microvm => "microvm,acpi=on,pit=on,pic=on,rtc=on",
        }
    }

    /// QEMU's device name for a virtio device (`vhost-user-fs`, `virtio-serial`,
    /// `virtio-net`) on this machine's transport.
    pub fn virtio_device(self, base: &str) -> String {
        match self {
            Machine::Pc | Machine::Q35 => format!("{base}-pci"),
            Machine::Microvm => format!("{base}-device"),
        }
    }

    /// The transport module the initrd must load before virtio drivers find devices.
    pub fn virtio_transport_module(self) -> &'static str {
        match self {
            Machine::Pc | Machine::Q35 => "virtio_pci",
            Machine::Microvm => "virtio_mmio",
        }
    }

    /// Kernel parameters this machine needs with `cpus` vCPUs, put before everything else
    /// on the command line.
    ///
    /// `pc` with one vCPU: `pci=noacpi` takes the PCI IRQ routing from SeaBIOS's table
    /// instead of ACPI's `_PRT`, which the kernel interprets for every device it enables
    /// (nixboot-bench traced ~200 ms per virtio device under TCG in `acpi_pci_irq_enable`,
    /// ~15 ms with this). It also makes the kernel skip the MADT: no local APIC ("No local
    /// APIC present"), so no MSI (`pci=nomsi` spares the two `WARNING:` stack traces of
    /// virtio_pci's fallback to INTx) and no second CPU ("smpboot: Allowing 1 CPUs"). One
    /// vCPU loses nothing by that; with more, the ACPI tables stay (docs/machines.md). q35
    /// and microvm route interrupts through ACPI and keep their APIC: nothing to add.
    pub fn kernel_params(self, cpus: u32) -> &'static [&'static str] {
        match self {
            Machine::Pc if cpus <= 1 => &["pci=noacpi", "pci=nomsi"],
            Machine::Pc | Machine::Q35 | Machine::Microvm => &[],
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        })
    }
}

impl FromStr for Machine {
    type Err = String;

    fn from_str(s: &str) -> Result<Machine, String> {
        Machine::ALL
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or_else(|| format!("unknown machine {s:?} (expected pc, q35 or microvm)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Machine::ALL {
            assert_eq!(m.to_string().parse::<Machine>(), Ok(m));
        }
        assert!("i440fx".parse::<Machine>().is_err());
    }

    #[test]
    fn devices_follow_the_transport() {
        assert_eq!(
            Machine::Pc.virtio_device("virtio-serial"),
            "virtio-serial-pci"
        );
        assert_eq!(
            Machine::Microvm.virtio_device("vhost-user-fs"),
            "vhost-user-fs-device"
        );
        assert_eq!(Machine::Microvm.virtio_transport_module(), "virtio_mmio");
        assert_eq!(Machine::Pc.kernel_params(1), ["pci=noacpi", "pci=nomsi"]);
        // pci=noacpi would hide the MADT, and every CPU but the first with it.
        assert!(Machine::Pc.kernel_params(2).is_empty());
        assert!(Machine::Q35.kernel_params(1).is_empty());
        assert!(Machine::Microvm.kernel_params(4).is_empty());
    }
}
