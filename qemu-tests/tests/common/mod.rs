//! The one harness of the QEMU boot tests: prerequisites and static binaries ([`Kit`]),
//! fake stores holding the probe, initrds built by mkinitrd (uncompressed by default, so
//! that tests can append a second newc segment, which the kernel unpacks over the first:
//! later duplicates win), disk images ([`disk`]), the imageless [`fixture`], one way to run
//! a VM ([`run`]: one timeout, at most [`MAX_VMS`] at once) and the assertions every boot
//! test makes ([`assert_booted`], [`assert_failed`]).
// Each test binary uses its own subset.
#![allow(dead_code)]

pub mod disk;
pub mod firmware;
pub mod fixture;

use mkinitrd::cpio::ArchiveBuilder;
use nixboot_launcher::console::{self, ConsoleFacts, Status};
use nixboot_launcher::qemu::{self, Outcome, VmConfig};
use nixboot_launcher::Share;
use nixboot_protocol::console::log_lines;
use nixboot_protocol::probe::ProbeReport;
use nixboot_protocol::timings::Timings;
use nixboot_protocol::InitrdConfig;
use qemu_tests::artifacts::{self, fake_store_name, Env, StaticBinaries};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Every boot's bound. Generous: TCG on a loaded 2-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// A failing boot must end long before [`BOOT_TIMEOUT`]: the init's bounds are seconds.
pub const FAILURE_BOUND: Duration = Duration::from_secs(60);
/// What the virtiofs tests ask mkinitrd for (it adds the dependencies: [`MODULES`]).
pub const VIRTIOFS_MODULES: &[&str] = &["virtio_pci", "virtiofs"];
/// What Debian's 6.1 cloud kernel needs for virtiofs, in load order: [`VIRTIOFS_MODULES`]
/// with their dependencies.
pub const MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
];
/// [`MODULES`] less those built into the kernel under test (`modules.builtin` of
/// `NIXBOOT_MODULES`): Debian 13's 6.12 builds virtio, virtio_pci, fuse and virtiofs in, so
/// mkinitrd packs and the init loads none of those there.
pub fn loadable_modules() -> Vec<&'static str> {
    let dir = std::env::var_os("NIXBOOT_MODULES").unwrap_or_default();
    let builtin =
        std::fs::read_to_string(Path::new(&dir).join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(|m| m.replace('-', "_"))
        .collect();
    MODULES
        .into_iter()
        .filter(|m| !builtin.iter().any(|b| b == m))
        .collect()
}
/// `None` when the kernel under test has virtiofs and fuse as modules (Debian 12's 6.1);
/// otherwise the skip reason of a test that needs them as modules (Debian 13's 6.12 builds
/// them in), recorded in the skip list.
pub fn needs_virtiofs_modules(test: &str) -> Option<()> {
    let loadable = loadable_modules();
    if loadable.contains(&"fuse") && loadable.contains(&"virtiofs") {
        return Some(());
    }
    qemu_tests::artifacts::skip(
        test,
        "this kernel builds fuse and virtiofs in: the test needs them as modules (it runs on \
         Debian 12's 6.1)",
    );
    None
}
/// What block-root tests load (ext4 is built into Debian's cloud kernel).
pub const BLOCK_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];
/// At most this many QEMUs of one test process at once, whatever --test-threads says.
pub const MAX_VMS: usize = 2;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// A slot for one VM, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_VMS {
            n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        FREED.notify_one();
    }
}

/// Runs one VM: waits for a slot, applies [`BOOT_TIMEOUT`] and a quiet console, and says
/// how it went (the whole console with NIXBOOT_TEST_CONSOLE=1 ... -- --nocapture).
pub fn run(test: &str, cfg: VmConfig) -> Outcome {
    run_watched(test, cfg, &mut |_| None)
}

/// [`run`], stopped early when `watch` (asked every 20 ms with the time since QEMU
/// started) says why: for boots that end without powering off, such as a firmware that
/// refuses an image and waits at its menu.
pub fn run_watched(
    test: &str,
    mut cfg: VmConfig,
    watch: &mut dyn FnMut(Duration) -> Option<String>,
) -> Outcome {
    cfg.timeout = cfg.timeout.or(Some(BOOT_TIMEOUT));
    cfg.quiet = true;
    let o = {
        let _slot = Slot::take();
        qemu::run_watched(&cfg, watch).expect("launcher")
    };
    if std::env::var_os("NIXBOOT_TEST_CONSOLE").is_some() {
        eprintln!("--- {test} console ---\n{}", o.console);
    }
    eprintln!(
        "{test}: accel {}; QEMU ran {:?}; kernel start -> probe result {:?}; status {}",
        o.accel.accel,
        o.elapsed,
        o.kernel_to_probe(),
        o.status
            .as_ref()
            .map_or_else(|| "none".to_string(), |s| s.to_string())
    );
    o
}

/// The kernel modules of the host's test kernel, shared read-only as tag `modules`.
pub fn modules_share(env: &Env) -> Share {
    let dir = nixboot_launcher::bootspec::modules_share_dir(&env.modules).unwrap();
    Share::new("modules", dir).unwrap().readonly()
}

/// Everything a boot test needs.
pub struct Kit {
    pub env: Env,
    pub bins: &'static StaticBinaries,
    pub tmp: tempfile::TempDir,
    pub test: String,
}

/// The prerequisites and the static binaries, or `None` after a loud SKIP.
pub fn kit(test: &str) -> Option<Kit> {
    let env = artifacts::require_prerequisites(test)?;
    let bins = artifacts::static_binaries().expect("building the static init and probe");
    Some(Kit {
        env,
        bins,
        tmp: tempfile::tempdir().unwrap(),
        test: test.to_string(),
    })
}

/// A directory laid out like /nix/store with one system whose `init` is the probe.
pub struct ProbeStore {
    /// The host directory shared as /nix/store.
    pub store: PathBuf,
    /// The system directory inside it.
    pub system: PathBuf,
    /// The guest path of the system's `init`.
    pub init: String,
}

impl Kit {
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `<dir>/<hash>-probe-system/init` = the probe.
    pub fn probe_store(&self, dir: &str) -> ProbeStore {
        let store = self.path(dir);
        let system = store.join(fake_store_name(&self.test, "probe-system"));
        std::fs::create_dir_all(&system).unwrap();
        std::fs::copy(&self.bins.probe, system.join("init")).unwrap();
        let init = format!(
            "/nix/store/{}/init",
            system.file_name().unwrap().to_str().unwrap()
        );
        ProbeStore {
            store,
            system,
            init,
        }
    }

    /// The static busybox of the host (Debian's busybox-static), for guest shells.
    pub fn busybox(&self) -> PathBuf {
        let p = PathBuf::from("/usr/bin/busybox");
        let bytes = std::fs::read(&p).expect("busybox (apt-get install busybox-static)");
        assert!(
            mkinitrd::elf::check_static(&bytes).is_ok(),
            "{} is not static (apt-get install busybox-static)",
            p.display()
        );
        p
    }

    /// An uncompressed initrd from mkinitrd: `closure`'s init is the default next init;
    /// `modules` with their dependencies.
    pub fn initrd(&self, closure: Option<&Path>, modules: &[&str]) -> Initrd {
        let opts = mkinitrd::BuildOptions {
            closure: closure.map(Path::to_path_buf),
            output: self.path("unused"),
            kernel_modules: (!modules.is_empty()).then(|| self.env.modules.clone()),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            init: Some(self.bins.init.clone()),
            compression: mkinitrd::Compression::None,
            ..Default::default()
        };
        let image = mkinitrd::build_image(&opts, 0).expect("mkinitrd");
        Initrd {
            bytes: image.bytes,
            config: image.config,
        }
    }

    /// Writes an initrd where QEMU can read it.
    pub fn write_initrd(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// An initrd in memory and the configuration mkinitrd wrote into it.
pub struct Initrd {
    pub bytes: Vec<u8>,
    pub config: InitrdConfig,
}

impl Initrd {
    /// Appends a second newc segment (the kernel unpacks it over the first one; an
    /// uncompressed archive ends 4-byte aligned, as the next one must start).
    pub fn append(&self, build: impl FnOnce(&mut ArchiveBuilder)) -> Vec<u8> {
        let mut a = ArchiveBuilder::new();
        build(&mut a);
        let mut out = self.bytes.clone();
        assert_eq!(out.len() % 4, 0);
        out.extend(a.write(1));
        out
    }

    /// Appends a replacement configuration.
    pub fn with_config(&self, config: &InitrdConfig) -> Vec<u8> {
        self.append(|a| {
            a.file(nixboot_protocol::CONFIG_PATH, 0o644, config.to_bytes())
                .unwrap()
        })
    }
}

/// Copies a host directory tree into an archive under `prefix`, keeping modes and symlinks.
pub fn add_tree(a: &mut ArchiveBuilder, host: &Path, prefix: &str) {
    let mut entries: Vec<_> = std::fs::read_dir(host).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}/{}", e.file_name().to_str().unwrap());
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let perm = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            a.symlink(&name, target.to_str().unwrap()).unwrap();
        } else if meta.is_dir() {
            a.dir(&name, perm).unwrap();
            add_tree(a, &e.path(), &name);
        } else {
            a.file(&name, perm, std::fs::read(e.path()).unwrap())
                .unwrap();
        }
    }
}

/// Sets a file's mode.
pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// One boot's settings.
#[derive(Default)]
pub struct Boot {
    /// Kernel parameters after the launcher's `bootspec::BASE_PARAMS`.
    pub params: Vec<String>,
    /// After ` -- `: the next init's arguments.
    pub init_args: Vec<String>,
    pub shares: Vec<Share>,
    /// Raw disk images attached as virtio-blk, and whether read-only.
    pub disks: Vec<(PathBuf, bool)>,
    pub replies: Vec<(String, Vec<u8>)>,
    pub memory_mb: Option<u32>,
}

impl Boot {
    pub fn params(params: &[&str]) -> Boot {
        Boot {
            params: params.iter().map(|s| s.to_string()).collect(),
            ..Boot::default()
        }
    }

    pub fn share(mut self, tag: &str, dir: &Path, readonly: bool) -> Boot {
        let s = Share::new(tag, dir).unwrap();
        self.shares.push(if readonly { s.readonly() } else { s });
        self
    }

    /// The kernel modules of the host's test kernel, as tag `modules`.
    pub fn modules_share(mut self, env: &Env) -> Boot {
        self.shares.push(modules_share(env));
        self
    }

    pub fn disk(mut self, image: &Path, readonly: bool) -> Boot {
        self.disks.push((image.to_path_buf(), readonly));
        self
    }

    pub fn args(mut self, args: &[&str]) -> Boot {
        self.init_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn reply(mut self, marker: &str, text: &str) -> Boot {
        self.replies.push((marker.into(), text.as_bytes().to_vec()));
        self
    }
}

/// `qcow2` when the image starts with qcow2's magic, `raw` otherwise: said explicitly, since
/// QEMU refuses to guess for writes to block 0 of a raw image.
pub fn disk_format(image: &Path) -> &'static str {
    nixboot_launcher::disk::image_format(image).unwrap_or("raw")
}

/// Boots `initrd` once.
pub fn boot(kit: &Kit, initrd: &Path, b: Boot) -> Outcome {
    let mut cmdline: Vec<String> = nixboot_launcher::bootspec::BASE_PARAMS
        .iter()
        .map(|p| p.to_string())
        .collect();
    cmdline.extend(b.params);
    if !b.init_args.is_empty() {
        cmdline.push("--".into());
        cmdline.extend(b.init_args);
    }
    let mut cfg = kit.env.vm(initrd, cmdline.join(" "));
    cfg.shares = b.shares;
    cfg.console_replies = b.replies;
    if let Some(m) = b.memory_mb {
        cfg.memory_mb = m;
    }
    for (img, ro) in b.disks {
        cfg.extra_qemu_args.push("-drive".into());
        cfg.extra_qemu_args.push(format!(
            "file={},format={},if=virtio{}",
            img.display(),
            disk_format(&img),
            if ro { ",readonly=on" } else { "" }
        ));
    }
    run(&kit.test, cfg)
}

/// The console tail and QEMU's stderr, for assertion messages.
pub fn context(o: &Outcome) -> String {
    format!(
        "\n--- console tail ---\n{}\n--- qemu stderr ---\n{}",
        o.console_tail(80),
        o.qemu_stderr
    )
}

/// The probe's report, typed (a report that does not parse fails the test).
pub fn probe(o: &Outcome) -> Option<ProbeReport> {
    let v = o.probe.as_ref()?;
    Some(ProbeReport::from_value(v).unwrap_or_else(|e| panic!("probe report: {e}: {v}")))
}

/// The boot reached the probe with status=ok and powered off cleanly; returns its report.
pub fn assert_booted(o: &Outcome) -> ProbeReport {
    let ctx = context(o);
    assert!(!o.timed_out, "timed out{ctx}");
    assert!(!o.panicked, "kernel panic{ctx}");
    assert!(o.qemu_clean_exit(), "QEMU exit {}{ctx}", o.qemu_exit);
    assert!(o.powered_off, "the guest did not power off{ctx}");
    assert!(o.warnings.is_empty(), "{:?}{ctx}", o.warnings);
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.status(), Status::Ok, "{s}{ctx}");
    assert_eq!(s.step(), Some("exec"), "{s}");
    let p = probe(o).unwrap_or_else(|| panic!("no probe result{ctx}"));
    assert_eq!(p.pid, Some(1), "{p}");
    assert_eq!(p.errors, Vec::<String>::new(), "{p}");
    p
}

/// `/proc`, `/sys`, `/dev` and `/run` as the init hands them over.
pub fn assert_special_mounts(p: &ProbeReport) {
    let want: Vec<(&str, Option<&str>)> = vec![
        ("/dev", Some("devtmpfs")),
        ("/proc", Some("proc")),
        ("/run", Some("tmpfs")),
        ("/sys", Some("sysfs")),
    ];
    let got: Vec<(&str, Option<&str>)> = p
        .special_mounts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(got, want, "{p}");
}

/// The initramfs was freed: at most the (empty) mount point the root was moved from is
/// left.
pub fn assert_initramfs_freed(p: &ProbeReport) {
    assert!(p.initramfs_checked, "{p}");
    let left = p.initramfs_leftovers.as_ref().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
}

/// The init said it loaded every module of the imageless set.
pub fn assert_modules_loaded(o: &Outcome) {
    for m in loadable_modules() {
        assert!(
            log_lines(&o.console).any(|l| l.contains("load") && console::has_word(l, m)),
            "the init did not report loading {m}{}",
            context(o)
        );
    }
}

/// How a failed boot must end.
pub enum Action {
    PowerOff,
    Reboot,
    Shell,
}

/// The boot failed at `step` with an error containing `error`, said what it tried or what
/// to check, printed one status line, and carried out `action` within [`FAILURE_BOUND`]:
/// QEMU exits by itself (-no-reboot turns a reboot into an exit too; the console tells
/// "reboot: Power down" from "reboot: Restarting system").
pub fn assert_failed(o: &Outcome, step: &str, error: &str, action: Action) {
    let ctx = context(o);
    assert!(!o.timed_out, "timed out{ctx}");
    assert!(!o.panicked, "kernel panic{ctx}");
    assert!(
        o.elapsed < FAILURE_BOUND,
        "took {:?} to fail{ctx}",
        o.elapsed
    );
    assert!(o.qemu_clean_exit(), "QEMU exit {}{ctx}", o.qemu_exit);
    assert!(o.probe.is_none(), "the probe ran{ctx}");
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.status(), Status::Failed, "{s}{ctx}");
    assert_eq!(s.step(), Some(step), "{s}{ctx}");
    let e = s.error().unwrap_or("");
    assert!(e.contains(error), "error {e:?} lacks {error:?}{ctx}");
    let lines: Vec<&str> = log_lines(&o.console)
        .filter(|l| l.contains(&format!("] {step}: ")))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("FAILED: ")),
        "no FAILED line for {step}{ctx}"
    );
    for what in ["  tried: ", "  check: "] {
        assert!(
            lines.iter().any(|l| l.contains(what)),
            "the failure lacks a{what}line{ctx}"
        );
    }
    let facts = ConsoleFacts::parse(&o.console);
    let (name, powered_off, restarted) = match action {
        Action::PowerOff => ("poweroff", true, false),
        Action::Reboot => ("reboot", false, true),
        Action::Shell => ("shell", true, false),
    };
    assert_eq!(s.get("action"), Some(name), "{s}{ctx}");
    assert_eq!(o.powered_off, powered_off, "power off?{ctx}");
    assert_eq!(facts.restarted, restarted, "restart?{ctx}");
}

/// The init's human lines of one step.
pub fn step_lines<'a>(o: &'a Outcome, step: &str) -> Vec<&'a str> {
    let tag = format!("] {step}: ");
    log_lines(&o.console).filter(|l| l.contains(&tag)).collect()
}

/// The probe's `/run/nixboot/timings.json`, parsed.
pub fn timings(p: &ProbeReport) -> Timings {
    p.timings()
        .expect("no timings.json")
        .expect("timings.json parses")
}

/// The step names recorded in the timings, in order.
pub fn timed_steps(p: &ProbeReport) -> Vec<String> {
    timings(p).steps().map(str::to_string).collect()
}
