//! What goes into the initramfs besides the init: --include (files, trees, programs with
//! their libraries), early microcode, firmware, the embedded store, no closure.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mkinitrd::cpio::{self, Entry};
use nixboot_protocol::InitrdConfig;

fn entries(path: &Path) -> BTreeMap<String, Entry> {
    cpio::read_archive(&fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect()
}

fn config(e: &BTreeMap<String, Entry>) -> InitrdConfig {
    InitrdConfig::parse(&e["etc/nixboot/initrd.json"].data).unwrap()
}

/// mkinitrd with a closure and the tiny static init.
fn base(tmp: &Path) -> Command {
    let mut c = mkinitrd();
    c.arg("--closure")
        .arg(closure(tmp, "c0de-nixos-system"))
        .arg("--init")
        .arg(static_init(tmp));
    c
}

/// Follows symlinks inside the archive; returns the final name.
fn resolve(e: &BTreeMap<String, Entry>, path: &str) -> Option<String> {
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut cur: Vec<String> = Vec::new();
    for _ in 0..200 {
        let Some(p) = parts.pop() else {
            return Some(cur.join("/"));
        };
        match p.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => cur.push(p),
        }
        let entry = e.get(&cur.join("/"))?;
        if entry.file_type() == cpio::S_IFLNK {
            let target = String::from_utf8(entry.data.clone()).unwrap();
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            parts.extend(
                target
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .rev()
                    .map(str::to_owned),
            );
        }
    }
    None
}

#[test]
fn include_trees_keep_modes_and_links_but_no_host_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("conf");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/secret"), "s").unwrap();
    fs::set_permissions(src.join("d/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(src.join("tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("d/secret", src.join("alias")).unwrap();
    // Host identity that must not leak: another owner, an old mtime.
    if rustix::process::geteuid().is_root() {
        for p in ["d/secret", "tool", "d"] {
            std::os::unix::fs::chown(src.join(p), Some(1234), Some(5678)).unwrap();
        }
    }
    Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(src.join("tool"))
        .status()
        .unwrap();
    let single = tmp.path().join("motd");
    fs::write(&single, "hello\n").unwrap();

    let out = tmp.path().join("initrd");
    let (ok, _, err) = run(base(tmp.path())
        .env("SOURCE_DATE_EPOCH", "86400")
        .arg("-o")
        .arg(&out)
        .arg("--include")
        .arg(format!("{}:/etc/app", src.display()))
        .arg("--include")
        .arg(format!("{}:/etc/motd", single.display())));
    assert!(ok, "{err}");
    let e = entries(&out);
    assert_eq!(e["etc/app"].mode, cpio::S_IFDIR | 0o755);
    assert_eq!(e["etc/app/d/secret"].mode, cpio::S_IFREG | 0o600);
    assert_eq!(e["etc/app/d/secret"].data, b"s");
    assert_eq!(e["etc/app/tool"].mode, cpio::S_IFREG | 0o755);
    assert_eq!(e["etc/app/alias"].mode, cpio::S_IFLNK | 0o777);
    assert_eq!(e["etc/app/alias"].data, b"d/secret");
    assert_eq!(e["etc/motd"].data, b"hello\n");
    let mut inos: Vec<u32> = e.values().map(|x| x.ino).collect();
    inos.sort();
    assert_eq!(inos, (1..=e.len() as u32).collect::<Vec<_>>());
    for x in e.values() {
        assert_eq!((x.uid, x.gid, x.mtime), (0, 0, 86400), "{}", x.name);
        assert_eq!((x.dev_major, x.dev_minor), (0, 0), "{}", x.name);
    }
}

#[test]
fn include_at_own_path_is_independent_of_cwd_and_argument_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("x")).unwrap();
    fs::write(data.join("x/a"), "a").unwrap();
    fs::write(data.join("b"), "b").unwrap();
    let other = tmp.path().join("elsewhere");
    fs::create_dir(&other).unwrap();
    let sys = closure(tmp.path(), "c0de-nixos-system");
    let init = static_init(tmp.path());
    let build = |out: &str, cwd: &Path, incs: &[String]| {
        let mut c = mkinitrd();
        c.current_dir(cwd)
            .arg("--closure")
            .arg(&sys)
            .arg("--init")
            .arg(&init)
            .arg("-o")
            .arg(tmp.path().join(out));
        for i in incs {
            c.arg("--include").arg(i);
        }
        let (ok, _, err) = run(&mut c);
        assert!(ok, "{err}");
        fs::read(tmp.path().join(out)).unwrap()
    };
    let abs_a = data.join("x/a").display().to_string();
    let a = build(
        "a",
        tmp.path(),
        &[
            "data/x/a".into(),
            format!("{}:/srv/b", data.join("b").display()),
        ],
    );
    let b = build(
        "b",
        &other,
        &[
            format!("{}:/srv/b", data.join("b").display()),
            abs_a.clone(),
        ],
    );
    assert_eq!(a, b, "cwd or argument order changed the output");
    let e = entries(&tmp.path().join("a"));
    assert_eq!(e[abs_a.trim_start_matches('/')].data, b"a");
    assert_eq!(e["srv/b"].data, b"b");
}

#[test]
fn host_program_brings_interpreter_and_libraries() {
    let Ok(bytes) = fs::read("/bin/ls") else {
        skip("/bin/ls unreadable");
        return;
    };
    let info = mkinitrd::elf::dynamic_info(&bytes).unwrap().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd");
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(&out)
        .args(["--include", "/bin/ls"]));
    assert!(ok, "{err}");
    let e = entries(&out);
    let ls = resolve(&e, "/bin/ls").expect("/bin/ls");
    assert_eq!(e[&ls].data, bytes);
    let interp = info.interpreter.clone().unwrap();
    let real = resolve(&e, &interp).unwrap_or_else(|| panic!("{interp} missing"));
    assert!(is_elf(&e[&real].data), "{interp} -> {real}");
    // Every DT_NEEDED library, recursively, can be found where the guest's loader looks.
    let mut todo = vec![ls];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(info) = mkinitrd::elf::dynamic_info(&e[&name].data).unwrap() else {
            continue;
        };
        for lib in info.needed {
            let found = mkinitrd::include::default_dirs(info.machine, info.is_64)
                .iter()
                .find_map(|d| resolve(&e, &format!("{d}/{lib}")))
                .unwrap_or_else(|| panic!("{lib} (needed by {name}) is not packed"));
            todo.push(found);
        }
    }
    assert!(seen.len() >= 2, "{seen:?}");
}

fn is_elf(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF")
}

#[test]
fn runpath_and_origin_are_followed() {
    if !have("cc", "--version") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let app = root.join("app");
    fs::create_dir_all(app.join("bin")).unwrap();
    fs::create_dir_all(app.join("lib")).unwrap();
    let abs_lib = root.join("abslib");
    fs::create_dir_all(&abs_lib).unwrap();
    let cc = |args: &[&str]| {
        let out = Command::new("cc").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    fs::write(root.join("a.c"), "int a(void) { return 1; }\n").unwrap();
    fs::write(root.join("b.c"), "int b(void) { return 2; }\n").unwrap();
    fs::write(
        root.join("main.c"),
        "int a(void); int b(void); int main(void) { return a() + b(); }\n",
    )
    .unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_owned();
    cc(&[
        "-shared",
        "-fPIC",
        "-o",
        &p(&app.join("lib/liba.so")),
        &p(&root.join("a.c")),
    ]);
    cc(&[
        "-shared",
        "-fPIC",
        "-o",
        &p(&abs_lib.join("libb.so")),
        &p(&root.join("b.c")),
    ]);
    cc(&[
        "-o",
        &p(&app.join("bin/prog")),
        &p(&root.join("main.c")),
        "-L",
        &p(&app.join("lib")),
        "-L",
        &p(&abs_lib),
        "-la",
        "-lb",
        "-Wl,--enable-new-dtags",
        "-Wl,-rpath,$ORIGIN/../lib",
        &format!("-Wl,-rpath,{}", p(&abs_lib)),
    ]);
    let info = mkinitrd::elf::dynamic_info(&fs::read(app.join("bin/prog")).unwrap())
        .unwrap()
        .unwrap();
    assert!(!info.runpath.is_empty(), "{info:?}");
    let out = root.join("initrd");
    let (ok, _, err) = run(base(&root)
        .arg("-o")
        .arg(&out)
        .arg("--include")
        .arg(app.join("bin/prog")));
    assert!(ok, "{err}");
    let e = entries(&out);
    let r = |x: &Path| x.to_str().unwrap().trim_start_matches('/').to_owned();
    assert!(
        e.contains_key(&r(&app.join("lib/liba.so"))),
        "$ORIGIN lib missing"
    );
    assert!(
        e.contains_key(&r(&abs_lib.join("libb.so"))),
        "RUNPATH lib missing"
    );

    // A library that cannot be found is an error naming it and where it looked.
    fs::remove_file(abs_lib.join("libb.so")).unwrap();
    let (ok, _, err) = run(base(&root)
        .arg("-o")
        .arg(root.join("never"))
        .arg("--include")
        .arg(app.join("bin/prog")));
    assert!(!ok);
    assert!(
        err.contains("libb.so") && err.contains("prog") && err.contains(&p(&abs_lib)),
        "{err}"
    );
    assert!(!root.join("never").exists());
}

#[test]
fn includes_cannot_replace_what_mkinitrd_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("evil");
    fs::write(&f, "x").unwrap();
    for dst in ["/init", "/etc/nixboot/initrd.json", "/dev/console"] {
        let (ok, _, err) = run(base(tmp.path())
            .arg("-o")
            .arg(tmp.path().join("out"))
            .arg("--include")
            .arg(format!("{}:{dst}", f.display())));
        assert!(!ok, "{dst} replaced");
        assert!(err.contains(dst) && err.contains("would replace"), "{err}");
    }
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(tmp.path().join("out"))
        .arg("--include")
        .arg(tmp.path().join("missing")));
    assert!(!ok);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn microcode_goes_first_uncompressed() {
    let tmp = tempfile::tempdir().unwrap();
    let intel = tmp.path().join("intel-ucode");
    fs::create_dir(&intel).unwrap();
    fs::write(intel.join("06-8e-09"), vec![0x11; 1001]).unwrap();
    fs::write(intel.join("06-55-04"), vec![0x22; 7]).unwrap();
    let amd = tmp.path().join("blob.bin");
    fs::write(&amd, vec![0x33; 13]).unwrap();
    let out = tmp.path().join("initrd");
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(&out)
        .arg("--microcode")
        .arg(&intel)
        .args(["--compress", "xz"]));
    assert!(ok, "{err}");
    let bytes = fs::read(&out).unwrap();
    assert_eq!(&bytes[..6], b"070701");
    let segs = cpio::read_segments(&bytes).unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].compression, mkinitrd::Compression::None);
    assert_eq!(segs[1].compression, mkinitrd::Compression::Xz);
    assert_eq!(segs[1].offset % 4, 0);
    let blob = segs[0]
        .entries
        .iter()
        .find(|e| e.name == "kernel/x86/microcode/GenuineIntel.bin")
        .unwrap();
    // Directory files in name order: 06-55-04 then 06-8e-09.
    let mut want = vec![0x22; 7];
    want.extend(vec![0x11; 1001]);
    assert_eq!(blob.data, want);
    assert!(mkinitrd::inspect::check_rules(&segs).is_empty());
    let (ok, stdout, _) = run(mkinitrd().arg("inspect").arg(&out));
    assert!(ok);
    assert!(stdout.starts_with("segment 1: offset 0, none"), "{stdout}");

    // A name that says nothing needs the flag.
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(&out)
        .arg("--microcode")
        .arg(&amd));
    assert!(!ok && err.contains("--microcode-vendor"), "{err}");
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(&out)
        .arg("--microcode")
        .arg(&amd)
        .args(["--microcode-vendor", "amd"]));
    assert!(ok, "{err}");
    let segs = cpio::read_segments(&fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        segs[0].entries.last().unwrap().name,
        "kernel/x86/microcode/AuthenticAMD.bin"
    );
}

#[test]
fn firmware_named_by_modules_is_packed() {
    let tmp = tempfile::tempdir().unwrap();
    let kver = "6.1.0-3-fw";
    let root = fake_modules(tmp.path(), kver);
    let vermagic = format!("vermagic={kver} SMP");
    let drv = root.join("kernel/drivers/net/wifi.ko");
    fs::create_dir_all(drv.parent().unwrap()).unwrap();
    fs::write(
        &drv,
        mkinitrd::testutil::fake_module(&[
            "depends=",
            "firmware=vendor/wifi-1.bin",
            "firmware=vendor/wifi-2.bin",
            "firmware=vendor/absent.bin",
            &vermagic,
        ]),
    )
    .unwrap();
    // The default place: <modules>/../../firmware.
    let fw = tmp.path().join("lib/firmware/vendor");
    fs::create_dir_all(&fw).unwrap();
    fs::write(fw.join("wifi-1.bin"), b"one").unwrap();
    fs::write(
        fw.join("wifi-2.bin.xz"),
        mkinitrd::compress::compress(mkinitrd::Compression::Xz, b"two").unwrap(),
    )
    .unwrap();
    let out = tmp.path().join("initrd");
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(&out)
        .arg("--kernel-modules")
        .arg(&root)
        .args(["--module", "wifi"]));
    assert!(ok, "{err}");
    assert!(
        err.contains("absent.bin") && err.contains("not found"),
        "{err}"
    );
    assert!(err.contains("2 firmware files"), "{err}");
    let e = entries(&out);
    assert_eq!(e["lib/firmware/vendor/wifi-1.bin"].data, b"one");
    assert_eq!(e["lib/firmware/vendor/wifi-2.bin"].data, b"two");
    assert_eq!(
        e["lib/firmware/vendor/wifi-2.bin"].mode,
        cpio::S_IFREG | 0o644
    );

    // --firmware-dir replaces the default.
    let other = tmp.path().join("fw2/vendor");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("wifi-1.bin"), b"other").unwrap();
    let (ok, _, err) = run(base(tmp.path())
        .arg("-o")
        .arg(&out)
        .arg("--kernel-modules")
        .arg(&root)
        .args(["--module", "wifi", "--firmware-dir"])
        .arg(tmp.path().join("fw2")));
    assert!(ok, "{err}");
    let e = entries(&out);
    assert_eq!(e["lib/firmware/vendor/wifi-1.bin"].data, b"other");
    assert!(!e.contains_key("lib/firmware/vendor/wifi-2.bin"));
}

/// A synthetic store: a system whose init is a script, and a library path it uses.
fn store(tmp: &Path) -> (PathBuf, PathBuf) {
    let store = tmp.join("store");
    let sys = closure(&store, "1111aaaa-nixos-system-embedded");
    let lib = store.join("2222bbbb-lib");
    fs::create_dir_all(lib.join("share")).unwrap();
    fs::write(lib.join("share/data"), "payload").unwrap();
    fs::set_permissions(lib.join("share/data"), fs::Permissions::from_mode(0o444)).unwrap();
    symlink("/nix/store/2222bbbb-lib/share", sys.join("sw")).unwrap();
    fs::write(
        store.join("3333cccc-file.txt"),
        "a store path that is a file",
    )
    .unwrap();
    (store, sys)
}

#[test]
fn embed_store_packs_the_closure_under_nix_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, sys) = store(tmp.path());
    let out = tmp.path().join("initrd");
    let (ok, stdout, err) = run(mkinitrd()
        .arg("--closure")
        .arg(&sys)
        .arg("--init")
        .arg(static_init(tmp.path()))
        .arg("-o")
        .arg(&out)
        .arg("--embed-store")
        .arg("--store-dir")
        .arg(&store)
        .arg("--print-cmdline"));
    assert!(ok, "{err}");
    assert!(err.contains("3 store paths"), "{err}");
    assert_eq!(
        stdout.trim(),
        "root=tmpfs console=ttyS0,115200 init=/nix/store/1111aaaa-nixos-system-embedded/init"
    );
    let e = entries(&out);
    let c = config(&e);
    assert_eq!(c.embedded_store.as_deref(), Some("/nix/store"));
    assert_eq!(
        c.default_init.as_deref(),
        Some("/nix/store/1111aaaa-nixos-system-embedded/init")
    );
    assert_eq!(
        e["nix/store/1111aaaa-nixos-system-embedded/init"].mode,
        cpio::S_IFREG | 0o755
    );
    assert_eq!(
        e["nix/store/1111aaaa-nixos-system-embedded/sw"].data,
        b"/nix/store/2222bbbb-lib/share"
    );
    assert_eq!(
        e["nix/store/2222bbbb-lib/share/data"].mode,
        cpio::S_IFREG | 0o444
    );
    assert_eq!(
        e["nix/store/3333cccc-file.txt"].data,
        b"a store path that is a file"
    );

    // The same embedding command, with the store-path selection varied below.
    let embed = || {
        let mut c = mkinitrd();
        c.arg("--closure")
            .arg(&sys)
            .arg("--init")
            .arg(static_init(tmp.path()));
        c.arg("-o")
            .arg(&out)
            .arg("--embed-store")
            .arg("--store-dir")
            .arg(&store);
        c
    };
    // A store-paths file selects; the closure must be in it.
    let list = tmp.path().join("store-paths");
    fs::write(
        &list,
        "/nix/store/1111aaaa-nixos-system-embedded\n/nix/store/2222bbbb-lib\n",
    )
    .unwrap();
    let (ok, _, err) = run(embed().arg("--store-paths").arg(&list));
    assert!(ok, "{err}");
    let e = entries(&out);
    assert!(e.contains_key("nix/store/2222bbbb-lib/share/data"));
    assert!(!e.contains_key("nix/store/3333cccc-file.txt"));
    // The same through a closureInfo directory in NIXBOOT_CLOSURE_INFO (what a Nix build has).
    let info = tmp.path().join("closure-info");
    fs::create_dir(&info).unwrap();
    fs::copy(&list, info.join("store-paths")).unwrap();
    let (ok, _, err) = run(embed().env("NIXBOOT_CLOSURE_INFO", &info));
    assert!(ok, "{err}");
    assert!(err.contains("2 store paths"), "{err}");
    fs::write(&list, "/nix/store/2222bbbb-lib\n").unwrap();
    let (ok, _, err) = run(embed().arg("--store-paths").arg(&list));
    assert!(!ok);
    assert!(err.contains("1111aaaa-nixos-system-embedded"), "{err}");
}

#[test]
fn without_closure_there_is_no_default_init() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd");
    let (ok, stdout, err) = run(mkinitrd()
        .arg("--init")
        .arg(static_init(tmp.path()))
        .arg("-o")
        .arg(&out)
        .arg("--print-cmdline"));
    assert!(ok, "{err}");
    assert_eq!(stdout, "root=tmpfs console=ttyS0,115200\n");
    assert!(err.contains("init="), "{err}");
    let c = config(&entries(&out));
    assert_eq!(c.default_init, None);
    assert_eq!(c.embedded_store, None);
    // --print-cmdline alone, no closure.
    let (ok, stdout, err) = run(mkinitrd().arg("--print-cmdline"));
    assert!(ok, "{err}");
    assert_eq!(stdout, "root=tmpfs console=ttyS0,115200\n");
    assert!(err.contains("init="), "{err}");
}
