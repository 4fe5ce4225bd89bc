//! Each `mkinitrd --compress` kind booted by the real kernel (Debian 6.1 cloud, which has
//! CONFIG_RD_GZIP/XZ/LZ4/ZSTD): the kernel must unpack the archive, the init must load the
//! modules from it and hand the probe a clean imageless system. One boot per kind, at most
//! two at a time.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::fixture::*;
use common::{assert_modules_loaded, context};
use mkinitrd::Compression;

fn boots_with(c: Compression) {
    let test = format!("boots_with_{c}");
    let Some(f) = fixture(&test) else { return };
    let opts = mkinitrd::BuildOptions {
        compression: c,
        ..f.options(&format!("initrd.{c}"))
    };
    let (initrd, report) = f.build(&opts);
    // The archive really is in that format.
    let bytes = std::fs::read(&initrd).unwrap();
    assert_eq!(
        mkinitrd::compress::sniff(&bytes),
        Some(c.format()),
        "{c}: {:02x?}",
        &bytes[..8]
    );
    let o = f.boot(&initrd, f.cmdline(None), Shares::All);
    eprintln!(
        "{test}: {} bytes; accel {}; QEMU ran {:?}; kernel start -> probe {:?}",
        report.size,
        o.accel.accel,
        o.elapsed,
        o.kernel_to_probe()
    );
    assert!(
        !o.console.contains("Initramfs unpacking failed"),
        "the kernel could not unpack the {c} initramfs{}",
        context(&o)
    );
    assert_probe_ok(&f, &o, virtiofs);
    assert_modules_loaded(&o);
}

#[test]
fn boots_with_zstd() {
    boots_with(Compression::Zstd);
}

#[test]
fn boots_with_gzip() {
    boots_with(Compression::Gzip);
}

#[test]
fn boots_with_xz() {
    boots_with(Compression::Xz);
}

#[test]
fn boots_with_lz4() {
    boots_with(Compression::Lz4);
}

#[test]
fn boots_with_none() {
    boots_with(Compression::None);
}
