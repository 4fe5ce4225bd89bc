//! Build-speed and size benchmark of mkinitrd (not a test): the imageless initrd for a real
//! kernel (virtio_pci + virtiofs with their dependencies, the static init), built N times,
//! against a hand-written packer (GNU cpio + the zstd tool over a staged tree) in the same run.
//!
//! ```sh
//! eval "$(bash .ci/setup)"          # NIXBOOT_MODULES: the Debian cloud kernel's modules
//! cargo static                      # the init
//! cargo build --release -p mkinitrd # for the CLI rows
//! cargo run --release -p mkinitrd --example bench_build -- [--runs 30] [--all-compressions]
//! ```
//!
//! Rows: `library` = `mkinitrd::build` in this process (module resolution, packing,
//! compression, atomic write with fsync); `cli` = the `mkinitrd` binary as a user runs it
//! (process start included); `cpio+zstd script` = a shell script that stages the same files
//! with cp, then `find | sort | cpio -o -H newc --reproducible | zstd -N` at mkinitrd's level.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mkinitrd::{BuildOptions, Compression};

struct Args {
    runs: usize,
    modules: PathBuf,
    init: PathBuf,
    all: bool,
}

fn usage() -> ! {
    eprintln!("usage: bench_build [--runs N] [--modules DIR] [--init PATH] [--all-compressions]");
    std::process::exit(2)
}

fn args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut a = Args {
        runs: 30,
        modules: std::env::var_os("NIXBOOT_MODULES")
            .map(PathBuf::from)
            .unwrap_or_default(),
        init: root.join("target/x86_64-unknown-linux-musl/release/init"),
        all: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                a.runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--modules" => a.modules = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--init" => a.init = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--all-compressions" => a.all = true,
            _ => usage(),
        }
    }
    if !a.modules.join("kernel").is_dir() {
        eprintln!(
            "bench_build: no kernel modules directory (set NIXBOOT_MODULES or pass --modules; `.ci/setup` prints it)"
        );
        std::process::exit(2);
    }
    if !a.init.is_file() {
        eprintln!(
            "bench_build: {} missing: run `cargo static` or pass --init",
            a.init.display()
        );
        std::process::exit(2);
    }
    a
}

struct Stats {
    median: Duration,
    min: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn time_runs(runs: usize, mut f: impl FnMut()) -> Stats {
    // One warm-up run: page cache, lazy statics.
    f();
    stats(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let a = args();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let system = tmp
        .path()
        .join("0123456789abcdfghijklmnpqrsvwxyz-nixos-system-bench");
    fs::create_dir_all(&system).unwrap();
    fs::write(system.join("init"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(system.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = tmp.path().join("initrd");
    let opts = |compression| BuildOptions {
        closure: Some(system.clone()),
        output: out.clone(),
        kernel_modules: Some(a.modules.clone()),
        init: Some(a.init.clone()),
        compression,
        ..BuildOptions::default()
    };

    let mut table = String::new();
    writeln!(
        table,
        "| packer | compression | median ms | min ms | max ms | bytes | KiB |"
    )
    .unwrap();
    writeln!(table, "|---|---|---|---|---|---|---|").unwrap();
    let compressions: &[Compression] = if a.all {
        Compression::ALL
    } else {
        &[Compression::Zstd]
    };
    let mut report = None;
    for c in compressions {
        let o = opts(*c);
        let mut size = 0;
        let s = time_runs(a.runs, || {
            let r = mkinitrd::build(&o).expect("mkinitrd build");
            size = r.size;
            if report.is_none() {
                report = Some(r);
            }
        });
        row(&mut table, "mkinitrd (library)", c.name(), &s, size);
    }
    let report = report.unwrap();

    // The CLI, as a user runs it.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("mkinitrd")))
        .filter(|p| p.is_file());
    match &exe {
        Some(exe) => {
            let mut size = 0;
            let s = time_runs(a.runs, || {
                let st = Command::new(exe)
                    .arg("--closure")
                    .arg(&system)
                    .arg("-o")
                    .arg(&out)
                    .arg("--kernel-modules")
                    .arg(&a.modules)
                    .arg("--init")
                    .arg(&a.init)
                    .env_remove("SOURCE_DATE_EPOCH")
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("running mkinitrd");
                assert!(st.success());
                size = fs::metadata(&out).unwrap().len();
            });
            row(&mut table, "mkinitrd (CLI)", "zstd", &s, size);
        }
        None => eprintln!(
            "bench_build: no mkinitrd binary next to this example: `cargo build --release -p mkinitrd` for the CLI row"
        ),
    }

    // The peer: a hand-written script packing the same files with GNU cpio and zstd.
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("cpio") && have("zstd") {
        let script = peer_script(tmp.path(), &a, &report, &system);
        let peer_out = tmp.path().join("initrd.peer");
        let mut size = 0;
        let s = time_runs(a.runs, || {
            let st = Command::new("bash")
                .arg(&script)
                .arg(&peer_out)
                .status()
                .expect("bash");
            assert!(st.success(), "peer script failed");
            size = fs::metadata(&peer_out).unwrap().len();
        });
        let label = format!("zstd -{}", mkinitrd::compress::ZSTD_LEVEL);
        row(&mut table, "cpio+zstd script", &label, &s, size);
        // Same file set: the peer's archive lists the same entries.
        let ours = mkinitrd::cpio::read_archive(&fs::read(&out).unwrap()).unwrap();
        let theirs = mkinitrd::cpio::read_archive(&fs::read(&peer_out).unwrap()).unwrap();
        let names = |v: &[mkinitrd::cpio::Entry]| {
            let mut n: Vec<String> = v.iter().map(|e| e.path()).collect();
            n.sort();
            n
        };
        if names(&ours) != names(&theirs) {
            eprintln!("bench_build: warning: the peer packed a different file set");
        }
    } else {
        eprintln!("bench_build: cpio or zstd missing: no peer row");
    }

    println!(
        "imageless initrd for {} ({} modules, init {} bytes), {} runs each:\n",
        report.kernel_version.as_deref().unwrap_or("?"),
        report.modules.len(),
        fs::metadata(&a.init).map(|m| m.len()).unwrap_or(0),
        a.runs
    );
    print!("{table}");
    println!(
        "\nuncompressed {} bytes, {} entries; targets: < 50 ms, < 512 KiB (524288 bytes)",
        report.uncompressed_size, report.entries
    );
}

fn row(table: &mut String, who: &str, c: &str, s: &Stats, size: u64) {
    writeln!(
        table,
        "| {who} | {c} | {} | {} | {} | {size} | {:.1} |",
        ms(s.median),
        ms(s.min),
        ms(s.max),
        size as f64 / 1024.0
    )
    .unwrap();
}

/// A shell script that stages what mkinitrd packed and packs it with cpio and zstd.
fn peer_script(dir: &Path, a: &Args, report: &mkinitrd::BuildReport, system: &Path) -> PathBuf {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    // The configuration is whatever mkinitrd wrote: take it from its archive.
    let entries = mkinitrd::cpio::read_archive(&fs::read(&report.output).unwrap()).unwrap();
    let config = entries
        .iter()
        .find(|e| e.name == "etc/nixboot/initrd.json")
        .unwrap();
    let config_file = dir.join("initrd.json");
    fs::write(&config_file, &config.data).unwrap();
    let kver = report.kernel_version.clone().unwrap_or_default();
    let cfg = nixboot_protocol::InitrdConfig::parse(&config.data).unwrap();
    let _ = system;
    let mut s = String::from("set -e\nout=$1\nS=$(mktemp -d)\ntrap 'rm -rf \"$S\"' EXIT\n");
    s.push_str("mkdir -p \"$S\"/dev \"$S\"/proc \"$S\"/sys \"$S\"/run \"$S\"/sysroot \"$S\"/etc/nixboot \"$S\"/lib/modules\n");
    s.push_str("mknod -m 600 \"$S\"/dev/console c 5 1 2>/dev/null || true\n");
    s.push_str(&format!("cp {} \"$S\"/init\n", q(&a.init)));
    s.push_str(&format!(
        "cp {} \"$S\"/etc/nixboot/initrd.json\n",
        q(&config_file)
    ));
    for m in &cfg.modules {
        let rel = m
            .path
            .strip_prefix(&format!("/lib/modules/{kver}/"))
            .unwrap();
        let dst = format!("\"$S\"{}", m.path);
        s.push_str(&format!(
            "mkdir -p \"$(dirname {dst})\"\ncp {} {dst}\n",
            q(&a.modules.join(rel))
        ));
    }
    s.push_str(&format!(
        "cd \"$S\"\nfind . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet -R 0:0 | zstd -{} -q -c > \"$out\"\n",
        mkinitrd::compress::ZSTD_LEVEL
    ));
    let path = dir.join("peer.sh");
    fs::write(&path, s).unwrap();
    path
}
