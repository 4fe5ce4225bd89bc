//! What mkinitrd packs besides the init, booted by the real kernel: modules that were
//! compressed on disk (decompressed at build time), an early microcode segment in front of
//! the compressed archive, and a dynamically linked host program with the interpreter and
//! libraries mkinitrd found for it.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::fixture::*;
use common::{assert_modules_loaded, context};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Compresses `path` in place with a command-line tool (as kbuild's modules_install does),
/// or with mkinitrd's own compressor when the tool is missing. Returns the new path.
fn compress_module(path: &Path, ext: &str) -> std::path::PathBuf {
    let out = path.with_file_name(format!(
        "{}.{ext}",
        path.file_name().unwrap().to_str().unwrap()
    ));
    let (tool, args): (&str, &[&str]) = match ext {
        "xz" => ("xz", &["--check=crc32", "--lzma2=dict=1MiB", "-c"]),
        "zst" => ("zstd", &["-q", "-19", "-c"]),
        _ => ("gzip", &["-n", "-9", "-c"]),
    };
    let by_tool = Command::new(tool)
        .args(args)
        .arg(path)
        .output()
        .ok()
        .filter(|o| o.status.success());
    let data = match by_tool {
        Some(o) => o.stdout,
        None => {
            let c = match ext {
                "xz" => mkinitrd::Compression::Xz,
                "zst" => mkinitrd::Compression::Zstd,
                _ => mkinitrd::Compression::Gzip,
            };
            mkinitrd::compress::compress(c, &fs::read(path).unwrap()).unwrap()
        }
    };
    fs::write(&out, data).unwrap();
    fs::remove_file(path).unwrap();
    out
}

#[test]
fn compressed_modules_are_unpacked_at_build_time_and_load() {
    let test = "compressed_modules_are_unpacked_at_build_time_and_load";
    let Some(f) = fixture(test) else { return };
    // On a kernel that builds this set in, its own .ko.xz modules (loop, erofs, overlay) are
    // unpacked and loaded by nixos_init.rs instead.
    if common::needs_virtiofs_modules(test).is_none() {
        return;
    }
    // A modules tree with the imageless set only, most of it recompressed.
    let kver = f.env.modules.file_name().unwrap().to_owned();
    let tree = f.tmp.path().join("lib/modules").join(&kver);
    let real = mkinitrd::kmod::ModulesDir::open(&f.env.modules).unwrap();
    let set = real
        .resolve(&["virtio_pci".to_string(), "virtiofs".to_string()])
        .unwrap();
    for m in &set.modules {
        let dst = tree.join(&m.rel_path);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::write(&dst, &m.data).unwrap();
    }
    fs::copy(
        f.env.modules.join("modules.builtin"),
        tree.join("modules.builtin"),
    )
    .unwrap();
    let mut compressed = Vec::new();
    for (name, ext) in [
        ("virtio_ring", "xz"),
        ("virtio", "zst"),
        ("virtio_pci", "gz"),
        ("fuse", "xz"),
        ("virtiofs", "zst"),
    ] {
        let m = set.modules.iter().find(|m| m.name == name).unwrap();
        compressed.push(compress_module(&tree.join(&m.rel_path), ext));
    }
    let opts = mkinitrd::BuildOptions {
        kernel_modules: Some(tree.clone()),
        ..f.options("initrd")
    };
    let (initrd, _) = f.build(&opts);
    // Packed uncompressed, byte-identical to the originals, at .ko paths.
    let entries = mkinitrd::cpio::read_archive(&fs::read(&initrd).unwrap()).unwrap();
    for m in &set.modules {
        let name = format!("lib/modules/{}/{}", kver.to_str().unwrap(), m.rel_path);
        let e = entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} not packed"));
        assert_eq!(e.data, m.data, "{name}");
    }
    assert!(compressed.iter().all(|p| p.exists()));

    let o = f.boot(&initrd, f.cmdline(None), Shares::All);
    assert_probe_ok(&f, &o, virtiofs);
    assert_modules_loaded(&o);
}

#[test]
fn microcode_segment_in_front_of_the_archive_boots() {
    let test = "microcode_segment_in_front_of_the_archive_boots";
    let Some(f) = fixture(test) else { return };
    // Not real microcode (the cloud kernel has no CONFIG_MICROCODE anyway): the kernel must
    // still unpack the plain segment and then the zstd one behind it.
    let ucode = f.tmp.path().join("GenuineIntel.bin");
    fs::write(&ucode, vec![0x5a; 4097]).unwrap();
    let opts = mkinitrd::BuildOptions {
        microcode: vec![ucode],
        ..f.options("initrd")
    };
    let (initrd, _) = f.build(&opts);
    let segs = mkinitrd::cpio::read_segments(&fs::read(&initrd).unwrap()).unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].compression, mkinitrd::Compression::None);
    assert_eq!(segs[1].compression, mkinitrd::Compression::Zstd);
    let o = f.boot(&initrd, f.cmdline(None), Shares::All);
    assert!(
        !o.console.contains("Initramfs unpacking failed"),
        "{}",
        context(&o)
    );
    assert_probe_ok(&f, &o, virtiofs);
}

#[test]
fn dynamic_host_program_runs_with_the_packed_libraries() {
    let test = "dynamic_host_program_runs_with_the_packed_libraries";
    let Some(f) = fixture(test) else { return };
    let ls = Path::new("/bin/ls");
    let dynamic = fs::read(ls)
        .ok()
        .and_then(|b| mkinitrd::elf::dynamic_info(&b).ok().flatten())
        .is_some_and(|i| i.interpreter.is_some());
    if !dynamic {
        qemu_tests::artifacts::skip(test, "/bin/ls is not a dynamically linked program");
        return;
    }
    // No closure, no modules: only the init and /bin/ls with what it needs.
    let opts = mkinitrd::BuildOptions {
        output: f.tmp.path().join("initrd"),
        init: Some(f.bins.init.clone()),
        includes: vec!["/bin/ls".parse().unwrap()],
        ..Default::default()
    };
    let (initrd, report) = f.build(&opts);
    eprintln!("{test}: {} bytes, {} entries", report.size, report.entries);
    // The kernel runs ls as PID 1 straight from the initramfs; it lists / and exits, which
    // panics the kernel (expected: PID 1 exited) and panic=-1 ends QEMU.
    let cmdline = "console=ttyS0,115200 panic=-1 rdinit=/bin/ls -- -1 /".to_string();
    let o = f.boot(&initrd, cmdline, Shares::None);
    let ctx = context(&o);
    assert!(!o.timed_out, "timed out{ctx}");
    let lines: Vec<&str> = o
        .console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    for name in ["sysroot", "init", "etc", "lib"] {
        assert!(
            lines.contains(&name),
            "ls did not list /{name}: it did not run{ctx}"
        );
    }
    assert!(
        !o.console.contains("error while loading shared libraries"),
        "a library is missing{ctx}"
    );
    assert!(
        o.console
            .contains("Attempted to kill init! exitcode=0x00000000"),
        "ls did not exit 0{ctx}"
    );
}
