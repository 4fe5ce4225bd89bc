//! kexec into another generation, for real.
//!
//! [`kexec_into_generation_2_from_boot_json`]: generation 1 (booted by QEMU) is a shell
//! script run by the init as stage 2; it runs `nixboot-kexec` (static, from the init
//! package) on generation 2's toplevel, whose boot.json names a kernel, an initrd and the
//! probe as init. The kernel jumps; generation 2's init starts the probe, which reports the
//! command line boot.json asked for. Before that, the script feeds `nixboot-kexec` bad
//! input (a missing generation, a boot.json without a kernel) and reports each exit code
//! and whether anything was left loaded (/sys/kernel/kexec_loaded).
//!
//! [`kexec_run_carries_keys_into_the_new_system`]: the nixos-images-style flow of
//! nixos/modules/baremetal, end to end: the running system (busybox, static bash) has ssh
//! host keys and root's authorized keys; the tarball's `run` script (the real
//! kexec-run.sh) appends them to the RAM system's initrd with GNU cpio and loads it with
//! Debian's kexec-tools (both with their libraries, through their ELF interpreter); the new
//! system's probe finds them under /run/nixboot/carry.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::{boot, context, kit, probe, Boot, Kit, ProbeStore};
use nixboot_launcher::qemu::Outcome;
use nixboot_protocol::probe::ProbeReport;
use qemu_tests::artifacts::{self, fake_store_name};
use std::fs;
use std::path::Path;
use std::process::Command;

/// linux's kexec flow keeps the old kernel's console; this is what the script prints.
const MARKER_GEN1: &str = "GENERATION-1-RUNNING";
/// Debian's static bash: kexec-run.sh is a bash script and the guest has no libc.
const BASH_STATIC: &str = "/bin/bash-static";

fn store_name(test: &str, what: &str) -> String {
    fake_store_name(test, what)
}

/// Generation 2 in `store`: kernel, its own initrd (the probe's store inside) and a
/// boot.json naming them with the probe as init; plus a boot.json without a kernel.
/// Returns its store name.
fn generation_2(kit: &Kit, test: &str, ps: &ProbeStore) -> String {
    let g2 = store_name(test, "generation-2");
    let dir = ps.store.join(&g2);
    fs::create_dir_all(&dir).unwrap();
    let initrd = embedded_initrd(kit, &ps.system, &[&ps.system], "g2-initrd");
    fs::copy(&kit.env.kernel, dir.join("kernel")).unwrap();
    fs::copy(&initrd, dir.join("initrd")).unwrap();
    let boot_json = serde_json::json!({ "org.nixos.bootspec.v1": {
        "init": ps.init, "kernel": format!("/nix/store/{g2}/kernel"),
        "initrd": format!("/nix/store/{g2}/initrd"), "label": "generation 2",
        "kernelParams": ["console=ttyS0,115200", "panic=-1", "root=tmpfs", "rd.timeout=10",
                         "generation=2"] } });
    fs::write(dir.join("boot.json"), boot_json.to_string()).unwrap();
    let no_kernel = serde_json::json!({ "org.nixos.bootspec.v1": {
        "init": ps.init, "kernelParams": [] } });
    fs::write(dir.join("no-kernel.json"), no_kernel.to_string()).unwrap();
    g2
}

/// Boots generation 1 (`g1`, whose `init` is written) with every store path embedded.
fn boot_generation_1(kit: &Kit, ps: &ProbeStore, g1: &str, paths: &[&Path]) -> Outcome {
    common::chmod(&ps.store.join(g1).join("init"), 0o755);
    let g1_dir = ps.store.join(g1);
    let initrd = embedded_initrd(kit, &g1_dir, paths, "initrd");
    let b = Boot {
        memory_mb: Some(1024),
        ..Boot::params(&[
            "root=tmpfs",
            "rd.timeout=10",
            &format!("init=/nix/store/{g1}/init"),
        ])
    };
    boot(kit, &initrd, b)
}

#[test]
fn kexec_into_generation_2_from_boot_json() {
    let test = "kexec_into_generation_2_from_boot_json";
    let Some(kit) = kit(test) else { return };
    let kexec_bin = kit.bins.init.with_file_name("nixboot-kexec");
    assert!(kexec_bin.is_file(), "{} was not built", kexec_bin.display());
    let ps = kit.probe_store("store");
    let g2 = generation_2(&kit, test, &ps);
    // Generation 1: busybox and nixboot-kexec, and a stage 2 that uses them.
    let g1 = store_name(test, "generation-1");
    let g1_dir = ps.store.join(&g1);
    fs::create_dir_all(g1_dir.join("bin")).unwrap();
    fs::copy(kit.busybox(), g1_dir.join("bin/busybox")).unwrap();
    fs::copy(&kexec_bin, g1_dir.join("bin/nixboot-kexec")).unwrap();
    let missing = store_name(test, "generation-3");
    let loaded = "loaded=$($b/busybox cat /sys/kernel/kexec_loaded)";
    let script = format!(
        "#!/nix/store/{g1}/bin/busybox sh\n\
         b=/nix/store/{g1}/bin\n\
         echo {MARKER_GEN1}\n\
         $b/nixboot-kexec --now /nix/store/{missing}; echo \"BAD-MISSING exit=$? {loaded}\"\n\
         $b/nixboot-kexec --now /nix/store/{g2}/no-kernel.json; echo \"BAD-NO-KERNEL exit=$? {loaded}\"\n\
         $b/nixboot-kexec --now /nix/store/{g2}\n\
         echo \"KEXEC-RETURNED exit=$?\"\n\
         $b/busybox poweroff -f\n"
    );
    fs::write(g1_dir.join("init"), script).unwrap();
    let o = boot_generation_1(&kit, &ps, &g1, &[&g1_dir, &ps.store.join(&g2), &ps.system]);
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
    let p = assert_second_kernel_probe(&o);
    let cmdline = p.cmdline.clone().unwrap_or_default();
    assert!(cmdline.starts_with(&format!("init={}", ps.init)), "{p}");
    assert!(cmdline.ends_with("generation=2"), "{p}");
    eprintln!(
        "{test}: {:?}; generation 2's cmdline {cmdline:?}",
        o.elapsed
    );
}

/// The second kernel's probe reported and powered off: two kernels on one console.
fn assert_second_kernel_probe(o: &Outcome) -> ProbeReport {
    let ctx = context(o);
    assert!(!o.timed_out, "timed out{ctx}");
    assert!(
        o.powered_off,
        "the new system's probe did not power off{ctx}"
    );
    let p = probe(o).unwrap_or_else(|| panic!("no probe report from the new system{ctx}"));
    assert_eq!(p.pid, Some(1), "{p}");
    assert_eq!(o.console.matches("Linux version ").count(), 2, "{ctx}");
    p
}

/// Debian's dynamically linked `program` as `<dir>/<name>`: a busybox wrapper that runs it
/// through its ELF interpreter with its libraries (copied to `<dir>/lib`), since the guest
/// has no /lib.
fn carry_dynamic(kit: &Kit, program: &Path, dir: &Path, guest_dir: &str, name: &str) {
    let ldd = Command::new("ldd").arg(program).output().expect("ldd");
    let lib = dir.join("lib");
    fs::create_dir_all(&lib).unwrap();
    let mut interp = None;
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = l.split_whitespace().find(|w| w.starts_with('/'));
        let Some(path) = path else { continue };
        let file = Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        fs::copy(path, lib.join(&file)).unwrap();
        if file.starts_with("ld-linux") {
            interp = Some(file);
        }
    }
    let interp = interp.unwrap_or_else(|| panic!("no ELF interpreter in ldd {program:?}"));
    fs::copy(program, lib.join(format!("{name}.real"))).unwrap();
    let busybox = format!("{guest_dir}/busybox");
    fs::copy(kit.busybox(), dir.join("busybox")).ok();
    fs::write(
        dir.join(name),
        format!(
            "#!{busybox} sh\nexec {guest_dir}/lib/{interp} --library-path {guest_dir}/lib \
             {guest_dir}/lib/{name}.real \"$@\"\n"
        ),
    )
    .unwrap();
    common::chmod(&dir.join(name), 0o755);
}

#[test]
fn kexec_run_carries_keys_into_the_new_system() {
    let test = "kexec_run_carries_keys_into_the_new_system";
    let Some(kit) = kit(test) else { return };
    let Some(kexec) = artifacts::require_tool(test, "kexec") else {
        return;
    };
    let Some(cpio) = artifacts::require_tool(test, "cpio") else {
        return;
    };
    if !Path::new(BASH_STATIC).is_file() {
        let why = format!("{BASH_STATIC} is missing (.ci/setup-real-parts installs bash-static)");
        return artifacts::skip(test, &why);
    }
    let ps = kit.probe_store("store");
    // The tarball's kexec/ directory, as nixos/modules/baremetal lays it out.
    let g1 = store_name(test, "running-system");
    let here = format!("/nix/store/{g1}/kexec");
    let dir = ps.store.join(&g1).join("kexec");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&kit.env.kernel, dir.join("bzImage")).unwrap();
    let initrd = embedded_initrd(&kit, &ps.system, &[&ps.system], "ram-initrd");
    fs::copy(&initrd, dir.join("initrd")).unwrap();
    let key = "/run/nixboot/carry/ssh/ssh_host_ed25519_key";
    let keys = "/run/nixboot/carry/authorized_keys";
    fs::write(
        dir.join("cmdline"),
        format!(
            "init={} console=ttyS0,115200 panic=-1 root=tmpfs rd.timeout=10 -- stat:{key} \
             stat:{keys} stat:/run/nixboot/carry",
            ps.init
        ),
    )
    .unwrap();
    let run = qemu_tests::artifacts::workspace_root().join("nixos/modules/baremetal/kexec-run.sh");
    fs::copy(run, dir.join("run")).unwrap();
    fs::copy(BASH_STATIC, dir.join("bash")).unwrap();
    carry_dynamic(&kit, &kexec, &dir, &here, "kexec");
    carry_dynamic(&kit, &cpio, &dir, &here, "cpio");
    // The running system: busybox's tools on PATH, a host key, root's authorized keys; then
    // `run`, which jumps a second after it returns.
    let script = format!(
        "#!{here}/busybox sh\n\
         {here}/busybox mkdir -p /bin /etc/ssh /root/.ssh /tmp && {here}/busybox --install -s /bin\n\
         export PATH=/bin\n\
         echo SECRET-KEY > /etc/ssh/ssh_host_ed25519_key; chmod 600 /etc/ssh/ssh_host_ed25519_key\n\
         echo 'ssh-ed25519 AAAA root@old' > /root/.ssh/authorized_keys\n\
         {here}/bash {here}/run; echo \"RUN-EXITED $?\"\n\
         sleep 60; poweroff -f\n"
    );
    fs::write(ps.store.join(&g1).join("init"), script).unwrap();
    let o = boot_generation_1(&kit, &ps, &g1, &[&ps.store.join(&g1), &ps.system]);
    let ctx = context(&o);
    assert!(o.console.contains("RUN-EXITED 0"), "kexec/run failed{ctx}");
    assert!(
        o.console.contains("nixboot kexec: loaded; jumping"),
        "{ctx}"
    );
    let p = assert_second_kernel_probe(&o);
    let st = &p.stats;
    assert_eq!(st[key].kind, "file", "{p}");
    assert_eq!(st[key].size, Some(11), "{p}");
    assert_eq!(st[key].mode.as_deref(), Some("0600"), "{p}");
    assert_eq!(st[keys].size, Some(26), "{p}");
    assert_eq!(
        st["/run/nixboot/carry"].mode.as_deref(),
        Some("0700"),
        "{p}"
    );
    eprintln!("{test}: {:?}; carried: {key}, {keys}", o.elapsed);
}

/// An uncompressed initrd with the project's init whose store (`paths`) is embedded and
/// whose default init is `system`'s.
fn embedded_initrd(kit: &Kit, system: &Path, paths: &[&Path], name: &str) -> std::path::PathBuf {
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
