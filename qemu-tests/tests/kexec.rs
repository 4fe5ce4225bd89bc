//! kexec into another generation, for real: generation 1 (booted by QEMU) is a shell
//! script run by the init as stage 2; it runs `nixboot-kexec` (static, from the init
//! package) on generation 2's toplevel, whose boot.json names a kernel, an initrd and the
//! probe as init. The kernel jumps; generation 2's init starts the probe, which reports the
//! command line boot.json asked for. Before that, the script feeds `nixboot-kexec` bad
//! input (a missing generation, a boot.json without a kernel) and reports each exit code
//! and whether anything was left loaded (/sys/kernel/kexec_loaded).

mod common;

use common::{boot, context, kit, probe, Boot};
use qemu_tests::artifacts::fake_store_name;
use std::fs;
use std::path::Path;

/// linux's kexec flow keeps the old kernel's console; this is what the script prints.
const MARKER_GEN1: &str = "GENERATION-1-RUNNING";

fn store_name(test: &str, what: &str) -> String {
    fake_store_name(test, what)
}

#[test]
fn kexec_into_generation_2_from_boot_json() {
    let test = "kexec_into_generation_2_from_boot_json";
    let Some(kit) = kit(test) else { return };
    let kexec_bin = kit.bins.init.with_file_name("nixboot-kexec");
    assert!(kexec_bin.is_file(), "{} was not built", kexec_bin.display());
    let ps = kit.probe_store("store");
    let store = &ps.store;
    let (g1, g2) = (
        store_name(test, "generation-1"),
        store_name(test, "generation-2"),
    );
    let (g1_dir, g2_dir) = (store.join(&g1), store.join(&g2));
    fs::create_dir_all(g1_dir.join("bin")).unwrap();
    fs::create_dir_all(&g2_dir).unwrap();

    // Generation 2: kernel, its own initrd (the probe's store inside), boot.json.
    let g2_initrd = embedded_initrd(&kit, &ps.system, &[&ps.system], "g2-initrd");
    fs::copy(&kit.env.kernel, g2_dir.join("kernel")).unwrap();
    fs::copy(&g2_initrd, g2_dir.join("initrd")).unwrap();
    let boot_json = serde_json::json!({ "org.nixos.bootspec.v1": {
        "init": ps.init, "kernel": format!("/nix/store/{g2}/kernel"),
        "initrd": format!("/nix/store/{g2}/initrd"), "label": "generation 2",
        "kernelParams": ["console=ttyS0,115200", "panic=-1", "root=tmpfs", "rd.timeout=10",
                         "generation=2"] } });
    fs::write(g2_dir.join("boot.json"), boot_json.to_string()).unwrap();
    let no_kernel = serde_json::json!({ "org.nixos.bootspec.v1": {
        "init": ps.init, "kernelParams": [] } });
    fs::write(g2_dir.join("no-kernel.json"), no_kernel.to_string()).unwrap();

    // Generation 1: busybox and nixboot-kexec, and a stage 2 that uses them.
    fs::copy(kit.busybox(), g1_dir.join("bin/busybox")).unwrap();
    fs::copy(&kexec_bin, g1_dir.join("bin/nixboot-kexec")).unwrap();
    let missing = store_name(test, "generation-3");
    let script = format!(
        "#!/nix/store/{g1}/bin/busybox sh\n\
         b=/nix/store/{g1}/bin\n\
         echo {MARKER_GEN1}\n\
         $b/nixboot-kexec --now /nix/store/{missing}; echo \"BAD-MISSING exit=$? loaded=$($b/busybox cat /sys/kernel/kexec_loaded)\"\n\
         $b/nixboot-kexec --now /nix/store/{g2}/no-kernel.json; echo \"BAD-NO-KERNEL exit=$? loaded=$($b/busybox cat /sys/kernel/kexec_loaded)\"\n\
         $b/nixboot-kexec --now /nix/store/{g2}\n\
         echo \"KEXEC-RETURNED exit=$?\"\n\
         $b/busybox poweroff -f\n"
    );
    fs::write(g1_dir.join("init"), script).unwrap();
    common::chmod(&g1_dir.join("init"), 0o755);
    let g1_init = format!("/nix/store/{g1}/init");

    let initrd = embedded_initrd(&kit, &g1_dir, &[&g1_dir, &g2_dir, &ps.system], "initrd");
    let b = Boot {
        memory_mb: Some(1024),
        ..Boot::params(&["root=tmpfs", "rd.timeout=10", &format!("init={g1_init}")])
    };
    let o = boot(&kit, &initrd, b);
    let ctx = context(&o);
    let line = |prefix: &str| {
        o.console
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.trim_end().to_string())
            .unwrap_or_else(|| panic!("no {prefix} line{ctx}"))
    };
    assert!(
        o.console.contains(MARKER_GEN1),
        "generation 1 did not run{ctx}"
    );
    eprintln!("{test}: {}", line("BAD-MISSING"));
    eprintln!("{test}: {}", line("BAD-NO-KERNEL"));
    assert_eq!(line("BAD-MISSING"), "BAD-MISSING exit=3 loaded=0", "{ctx}");
    assert_eq!(
        line("BAD-NO-KERNEL"),
        "BAD-NO-KERNEL exit=3 loaded=0",
        "{ctx}"
    );
    assert!(
        o.console.contains("kernel: missing (nothing to kexec)"),
        "{ctx}"
    );
    assert!(
        !o.console.contains("KEXEC-RETURNED"),
        "the kexec returned{ctx}"
    );
    assert!(
        o.powered_off,
        "the probe of generation 2 did not power off{ctx}"
    );
    let p = probe(&o).unwrap_or_else(|| panic!("no probe report from generation 2{ctx}"));
    let cmdline = p.cmdline.clone().unwrap_or_default();
    assert!(cmdline.starts_with(&format!("init={}", ps.init)), "{p}");
    assert!(cmdline.ends_with("generation=2"), "{p}");
    assert_eq!(p.pid, Some(1), "{p}");
    // Two kernels started on one console: QEMU booted one, kexec the other.
    let kernels = o.console.matches("Linux version ").count();
    assert_eq!(kernels, 2, "{ctx}");
    eprintln!(
        "{test}: {:?}; generation 2's cmdline {cmdline:?}",
        o.elapsed
    );
}

/// An uncompressed initrd with the project's init whose store (`paths`) is embedded and
/// whose default init is `system`'s.
fn embedded_initrd(
    kit: &common::Kit,
    system: &Path,
    paths: &[&Path],
    name: &str,
) -> std::path::PathBuf {
    let list = kit.path(&format!("{name}.store-paths"));
    let lines: Vec<String> = paths
        .iter()
        .map(|p| format!("/nix/store/{}\n", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    fs::write(&list, lines.concat()).unwrap();
    let opts = mkinitrd::BuildOptions {
        closure: Some(system.to_path_buf()),
        output: kit.path(name),
        init: Some(kit.bins.init.clone()),
        compression: mkinitrd::Compression::None,
        embed_store: Some(mkinitrd::EmbedStore {
            store_paths: Some(list),
            store_dir: Some(system.parent().unwrap().to_path_buf()),
        }),
        ..Default::default()
    };
    mkinitrd::build(&opts).expect("mkinitrd");
    opts.output
}
