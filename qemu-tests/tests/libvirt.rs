//! The controller's guests under a real libvirtd (Debian's libvirt-daemon-system): the
//! domain and network XML come from the controller's own Nix generators
//! (nixos/modules/controller/*.nix, rendered by nixos/tests/render.nix with this test's
//! paths as plain strings: nothing is built), are defined, started, reach the probe and
//! shut off. Libvirt here is older than 11.0, so the read-only shares go through
//! virtiofsd processes this test starts with the command line the controller's units use
//! (`--readonly`, rendered from the same expression); the imageless guest remounts its store
//! read-write and tries to write, and the host store must stay unchanged.
//!
//! libvirtd and virtlogd are started by the test when none answers (no init system runs them
//! here), with a qemu.conf of our own (`namespaces = [ ]`: libvirt's private /dev namespace
//! fails in this environment) bind-mounted over /etc/libvirt/qemu.conf in a private mount
//! namespace, so /etc is not changed; they are stopped afterwards. Every domain, network and
//! virtiofsd is undone by a guard, also when an assertion fails.
//!
//! Guest kernels: 6.1 only (the controller's domains in libvirtd, host side).

mod common;

use common::disk;
use common::{kit, Kit, BOOT_TIMEOUT};
use nixboot_launcher::console::{ConsoleFacts, Status};
use nixboot_protocol::probe::ProbeReport;
use qemu_tests::artifacts::{self, fake_store_name};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const URI: &str = "qemu:///system";
/// The test's own NAT network (not libvirt's `default`, which may be someone else's).
const NETWORK: &str = "nixboot-test";
/// The group libvirt runs QEMU as on Debian (NixOS: qemu-libvirtd).
const QEMU_GROUP: &str = "libvirt-qemu";
/// The qemu.conf this environment needs (see the module docs).
const QEMU_CONF: &str = "namespaces = [ ]\n";
const QEMU_CONF_PATH: &str = "/etc/libvirt/qemu.conf";
/// The imageless guest's modules: its store, its extra disks and its NIC.
const IMAGELESS_MODULES: &[&str] = &["virtio_pci", "virtiofs", "virtio_blk", "virtio_net"];

/// One libvirtd per test at a time: the tests of this binary share the daemons' pid files.
static DAEMONS: Mutex<()> = Mutex::new(());

// ------------------------------------------------------------------------------ daemons

/// libvirtd and virtlogd for one test; stops (by pid) what it started.
struct Daemons {
    started: Vec<(&'static str, PathBuf)>,
    conf: tempfile::TempDir,
}

fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .arg("--connect")
        .arg(URI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pid_alive(pidfile: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

impl Daemons {
    /// The daemons, started when none answers; `Err` says why they cannot run.
    fn up() -> Result<Daemons, String> {
        let conf = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut d = Daemons {
            started: Vec::new(),
            conf,
        };
        if virsh(&["version"]).is_ok() {
            eprintln!("libvirt: a libvirtd already answers on {URI}: using it as it is");
            return Ok(d);
        }
        if pid_alive(Path::new("/run/virtlogd.pid")).is_none() {
            let pidfile = d.conf.path().join("virtlogd.pid");
            run_ok(Command::new("virtlogd").arg("-d").arg("-p").arg(&pidfile))?;
            d.started.push(("virtlogd", pidfile));
        }
        let qemu_conf = d.conf.path().join("qemu.conf");
        std::fs::write(&qemu_conf, QEMU_CONF).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&qemu_conf, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
        let pidfile = d.conf.path().join("libvirtd.pid");
        // A private mount namespace that sees our qemu.conf; libvirtd daemonizes inside it.
        let script = r#"mount --bind "$1" "$2" && exec libvirtd -d -p "$3""#;
        run_ok(
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
                .arg(&qemu_conf)
                .arg(QEMU_CONF_PATH)
                .arg(&pidfile),
        )?;
        d.started.push(("libvirtd", pidfile));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match virsh(&["version"]) {
                Ok(_) => return Ok(d),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("libvirtd started but does not answer: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        // libvirtd first: it holds virtlogd's connections.
        for (name, pidfile) in self.started.iter().rev() {
            let Some(pid) = pid_alive(pidfile) else {
                continue;
            };
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("libvirt: stopped the {name} this test started (pid {pid})");
        }
    }
}

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// argv from the renderer, run; panics with its output on failure.
fn run_argv(argv: &[String]) {
    let (prog, args) = argv.split_first().expect("empty command line");
    if let Err(e) = run_ok(Command::new(prog).args(args)) {
        panic!("{e}");
    }
}

// ------------------------------------------------------------------------------ guards

/// A defined libvirt object, destroyed and undefined when dropped.
struct Defined {
    kind: &'static str,
    name: String,
}

impl Drop for Defined {
    fn drop(&mut self) {
        let (destroy, undefine) = match self.kind {
            "network" => ("net-destroy", "net-undefine"),
            _ => ("destroy", "undefine"),
        };
        let _ = virsh(&[destroy, &self.name]);
        if let Err(e) = virsh(&[undefine, &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

fn define(kind: &'static str, name: &str, xml: &str, dir: &Path) -> Defined {
    let file = dir.join(format!("{kind}-{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    let file = file.to_str().unwrap();
    let (destroy, undefine, verb) = if kind == "network" {
        ("net-destroy", "net-undefine", "net-define")
    } else {
        ("destroy", "undefine", "define")
    };
    // Leftovers of an interrupted run go first.
    let _ = virsh(&[destroy, name]);
    let _ = virsh(&[undefine, name]);
    virsh(&[verb, file]).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    Defined {
        kind,
        name: name.to_string(),
    }
}

/// A virtiofsd this test started, killed when dropped.
struct Virtiofsd(Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts virtiofsd with the controller's command line (`argv`, rendered), the binary
/// replaced by this host's; waits for its socket and opens it to QEMU's group.
fn start_virtiofsd(argv: &[String], binary: &Path, socket: &Path) -> Virtiofsd {
    let child = Command::new(binary)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let v = Virtiofsd(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket {}", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The socket took QEMU's group from its setgid directory (socket_dir); its mode follows
    // the umask, which the units set to 0007. Here: make it group-writable (connect needs it).
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o770)).unwrap();
    v
}

// ------------------------------------------------------------------------------ rendering

/// The controller's generators, evaluated with `request` (see nixos/tests/render.nix).
fn render(nixpkgs: &str, request: &Value) -> Value {
    let root = artifacts::workspace_root();
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(root.join("nixos/tests/render.nix"))
        .args(["--arg", "nixpkgs", nixpkgs])
        .args(["--argstr", "request", &request.to_string()])
        .args(["--option", "substituters", ""])
        .stdin(Stdio::null())
        .output()
        .expect("nix-instantiate");
    assert!(
        out.status.success(),
        "rendering the controller's XML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("render.nix's JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The network's arguments (nixos/modules/controller/network.nix).
fn network_args() -> Value {
    json!({ "name": NETWORK, "bridge": "virbr-nbtest", "address": "192.168.86.1",
            "prefixLength": 24, "dhcpStart": "192.168.86.100", "dhcpEnd": "192.168.86.200" })
}

// ------------------------------------------------------------------------------ one test

/// Everything one test needs: the daemons (and the lock), the kit, the domain type.
struct Setup {
    kit: Kit,
    nixpkgs: String,
    domain_type: &'static str,
    _daemons: Daemons,
    _lock: std::sync::MutexGuard<'static, ()>,
}

fn setup(test: &str) -> Option<Setup> {
    let kit = kit(test)?;
    for tool in [
        "virsh",
        "libvirtd",
        "virtlogd",
        "qemu-img",
        "nix-instantiate",
        "unshare",
    ] {
        artifacts::require_tool(test, tool)?;
    }
    let Some(nixpkgs) = std::env::var("NIXPKGS").ok().filter(|v| !v.is_empty()) else {
        artifacts::skip(
            test,
            "NIXPKGS is not set: the controller's XML cannot be rendered",
        );
        return None;
    };
    let lock = DAEMONS.lock().unwrap_or_else(|e| e.into_inner());
    let daemons = match Daemons::up() {
        Ok(d) => d,
        Err(e) => {
            artifacts::skip(test, &format!("libvirtd cannot be started here: {e}"));
            return None;
        }
    };
    // QEMU runs as libvirt's unprivileged user: it must reach the kernel, initrd and images.
    std::fs::set_permissions(kit.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let accel = nixboot_launcher::accel::choose(&kit.env.qemu, &kit.env.kernel);
    let domain_type = match accel.accel {
        nixboot_launcher::accel::Accel::Kvm => "kvm",
        nixboot_launcher::accel::Accel::Tcg => "qemu",
    };
    eprintln!("{test}: domain type {domain_type} ({})", accel.reason);
    Some(Setup {
        kit,
        nixpkgs,
        domain_type,
        _daemons: daemons,
        _lock: lock,
    })
}

impl Setup {
    /// The virtiofsd sockets' directory as the controller's tmpfiles rule makes it: setgid,
    /// group QEMU's, so that every socket in it is QEMU's group's.
    fn socket_dir(&self) -> PathBuf {
        let d = self.dir("sockets");
        run_ok(Command::new("chgrp").arg(QEMU_GROUP).arg(&d)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2750)).unwrap();
        d
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.kit.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// The kernel, copied where QEMU's user can read it.
    fn kernel(&self) -> String {
        let k = self.kit.path("vmlinuz");
        std::fs::copy(&self.kit.env.kernel, &k).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        k.to_str().unwrap().to_string()
    }

    /// An initrd of the project's init with `modules`, readable by QEMU's user.
    fn initrd(&self, modules: &[&str]) -> String {
        let i = self.kit.initrd(None, modules);
        let p = self.kit.write_initrd("initrd", &i.bytes);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// domain.nix's arguments for guest `name`.
    fn domain(&self, name: &str, guest: Value, boot: Value) -> Value {
        let mut guest = guest;
        let g = guest.as_object_mut().unwrap();
        g.insert("domainType".into(), json!(self.domain_type));
        g.insert("memory".into(), json!(512));
        g.insert("vcpus".into(), json!(1));
        g.entry("shares").or_insert(json!({}));
        g.entry("disks").or_insert(json!({}));
        g.entry("configDir").or_insert(Value::Null);
        json!({
            "name": name,
            "libvirtVersion": libvirt_version(),
            "guest": guest,
            "controller": {
                "imageDir": self.dir("images"),
                "virtiofsdSocketDir": self.kit.path("sockets"),
                "interface": { "type": "network", "source": NETWORK },
            },
            "boot": boot,
        })
    }
}

/// The daemon's libvirt version ("9.0.0"), as `virsh version` reports the library.
fn libvirt_version() -> String {
    let v = virsh(&["version"]).unwrap_or_default();
    v.lines()
        .find_map(|l| l.strip_prefix("Using library: libvirt "))
        .unwrap_or("0")
        .trim()
        .to_string()
}

/// Starts the domain and waits until it shut off; returns the console log.
fn boot_to_shutoff(name: &str, console_log: &Path) -> String {
    virsh(&["start", name]).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let state = virsh(&["domstate", name]).unwrap_or_default();
        if state.trim() == "shut off" {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(console_log).unwrap_or_default();
            panic!("{name} still {state:?} after {BOOT_TIMEOUT:?}\n--- console ---\n{log}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::fs::read_to_string(console_log)
        .unwrap_or_else(|e| panic!("{}: {e}", console_log.display()))
}

/// The console says: the init handed over (status ok at exec), the probe ran as PID 1
/// without errors and powered off. Returns its report.
fn assert_reached_probe(console: &str) -> ProbeReport {
    let facts = ConsoleFacts::parse(console);
    let ctx = format!("\n--- console ---\n{console}");
    assert!(!facts.panicked, "kernel panic{ctx}");
    let s = facts
        .status
        .as_ref()
        .unwrap_or_else(|| panic!("no status line{ctx}"));
    assert_eq!(s.status(), Status::Ok, "{s}{ctx}");
    assert_eq!(s.step(), Some("exec"), "{s}");
    let v = facts
        .probe
        .as_ref()
        .unwrap_or_else(|| panic!("no probe result{ctx}"));
    let p = ProbeReport::from_value(v).unwrap_or_else(|e| panic!("probe report: {e}: {v}"));
    assert_eq!(p.pid, Some(1), "{p}");
    assert_eq!(p.errors, Vec::<String>::new(), "{p}");
    assert!(facts.powered_off, "the guest did not power off{ctx}");
    p
}

/// The test's network, from network.nix, defined and started.
fn network(s: &Setup) -> Defined {
    let r = render(
        &s.nixpkgs,
        &json!({ "domains": [], "network": network_args() }),
    );
    let xml = r["network"].as_str().expect("network XML");
    let net = define("network", NETWORK, xml, s.kit.tmp.path());
    virsh(&["net-start", NETWORK]).unwrap_or_else(|e| panic!("{e}"));
    net
}

// ------------------------------------------------------------------------------ the guests

/// A store holding the probe system and a script system that remounts /nix/store
/// read-write, tries to write there, writes into the writable share `rw` (the control), records what the guest sees of its extra disks, asks
/// the network's DHCP for an address, then execs the probe. Returns the script's guest path.
fn writer_store(s: &Setup, store: &Path) -> String {
    let probe = s.kit.probe_store("store");
    assert_eq!(probe.store, store);
    let bb_name = fake_store_name(&s.kit.test, "busybox");
    let bb = store.join(&bb_name).join("bin");
    std::fs::create_dir_all(&bb).unwrap();
    std::fs::copy(s.kit.busybox(), bb.join("busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bb.join("sh")).unwrap();
    std::fs::write(
        bb.join("dhcp-event"),
        format!("#!/nix/store/{bb_name}/bin/sh\nexit 0\n"),
    )
    .unwrap();
    common::chmod(&bb.join("dhcp-event"), 0o755);
    let sys_name = fake_store_name(&s.kit.test, "store-writer");
    let sys = store.join(&sys_name);
    std::fs::create_dir_all(&sys).unwrap();
    let b = format!("/nix/store/{bb_name}/bin/busybox");
    let script = format!(
        r#"#!/nix/store/{bb_name}/bin/sh
B={b}
out=/run/nixboot-test
$B mkdir -p $out
if $B mount -o remount,rw /nix/store 2>$out/remount.err; then r=remounted-rw; else r=remount-failed; fi
if echo guest > /nix/store/guest-was-here 2>$out/write.err; then w=written; else w=refused; fi
echo "$r $w" > $out/store-write
$B mkdir -p /mnt/rw
if $B mount -t virtiofs rw /mnt/rw 2>$out/rw.err && echo guest > /mnt/rw/guest-was-here; then c=written; else c=failed; fi
echo $c > $out/rw-write
for d in /sys/block/vd*; do
  [ -e "$d" ] || continue
  echo "$($B cat $d/serial) $($B cat $d/queue/logical_block_size) $($B cat $d/queue/physical_block_size)" > $out/disk-${{d##*/}}
done
$B ip link set eth0 up
$B udhcpc -i eth0 -n -q -t 10 -T 2 -s /nix/store/{bb_name}/bin/dhcp-event > $out/dhcp 2>&1
exec {init} "$@"
"#,
        init = probe.init
    );
    std::fs::write(sys.join("init"), script).unwrap();
    common::chmod(&sys.join("init"), 0o755);
    format!("/nix/store/{sys_name}/init")
}

/// A NixOS guest's command line on libvirt's q35 machine: the serial console and the root
/// (not the launcher's `pci=noacpi pci=nomsi`, which leave q35's PCIe ports without
/// interrupts).
fn guest_cmdline(init: &str, root: &str) -> String {
    format!("console=ttyS0,115200 panic=-1 {root} init={init}")
}

/// Every file under `dir`, for before/after comparisons.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The imageless guest's paths on the host.
struct Imageless {
    name: &'static str,
    store: PathBuf,
    rw: PathBuf,
    modules: PathBuf,
    sockets: PathBuf,
    images: PathBuf,
    console_log: PathBuf,
}

impl Imageless {
    fn socket(&self, tag: &str) -> PathBuf {
        self.sockets.join(format!("{}-{tag}.sock", self.name))
    }

    /// render.nix's request: the domain with two extra disks, the writable share `rw`, the
    /// controller's virtiofsd for the store and the modules, the disks' qemu-img commands.
    fn request(&self, s: &Setup, init: &str) -> Value {
        let disks = json!({
            "d512": { "serial": "nbt-d512", "size": "64M", "logicalBlockSize": 512, "physicalBlockSize": 512 },
            "d4k": { "serial": "nbt-d4k", "size": "64M", "logicalBlockSize": 4096, "physicalBlockSize": 4096 },
        });
        let boot = json!({
            "kernel": s.kernel(), "initrd": s.initrd(IMAGELESS_MODULES),
            "cmdline": guest_cmdline(init, "root=tmpfs"),
            "backing": null, "storeTag": "store", "modulesTag": "modules",
            "modulesDir": self.modules, "virtiofsd": s.kit.env.virtiofsd,
        });
        let guest = json!({ "mode": "imageless", "mac": "52:54:00:4e:42:01",
                            "consoleLog": self.console_log, "disks": disks,
                            "shares": { "rw": { "source": self.rw, "readOnly": false } } });
        let share = |tag: &str, source: &Path| json!({ "virtiofsd": "virtiofsd", "socket": self.socket(tag), "source": source });
        let disk = |d: &str| {
            json!({ "qemuImg": "qemu-img", "size": "64M",
                    "file": self.images.join(format!("{}-{d}.qcow2", self.name)) })
        };
        json!({
            "domains": [s.domain(self.name, guest, boot)],
            "shares": [share("store", &self.store), share("modules", &self.modules)],
            "disks": [disk("d4k"), disk("d512")],
        })
    }

    /// libvirt < 11: the read-only shares are sockets of virtiofsd --readonly, started here
    /// with the controller's command line.
    fn start_readonly_shares(&self, r: &Value, virtiofsd: &Path) -> Vec<Virtiofsd> {
        let xml = r["domains"][0].as_str().unwrap();
        let store_socket = format!("<source socket='{}'/>", self.socket("store").display());
        assert!(xml.contains(&store_socket), "{xml}");
        assert!(!xml.contains("<readonly/>"), "{xml}");
        let argvs: Vec<Vec<String>> = r["virtiofsd"]
            .as_array()
            .unwrap()
            .iter()
            .map(strings)
            .collect();
        assert!(
            argvs.iter().all(|a| a.contains(&"--readonly".to_string())),
            "{argvs:?}"
        );
        argvs
            .iter()
            .zip(["store", "modules"])
            .map(|(a, tag)| start_virtiofsd(a, virtiofsd, &self.socket(tag)))
            .collect()
    }

    /// The guest lifted its own ro mount of the store, yet its write was refused and the
    /// host store is as it was; its write to the writable share arrived.
    fn assert_store_untouched(&self, p: &ProbeReport, before: &[String]) {
        assert_eq!(p.store_fstype.as_deref(), Some("virtiofs"), "{p}");
        assert_eq!(p.modules_fstype.as_deref(), Some("virtiofs"), "{p}");
        let file = |k: &str| p.test_files.get(k).map(|s| s.trim().to_string());
        assert_eq!(
            file("store-write").as_deref(),
            Some("remounted-rw refused"),
            "{p}"
        );
        assert_eq!(p.store_writable, Some(false), "{p}");
        let planted = self.store.join("guest-was-here");
        assert!(!planted.exists(), "the guest wrote into the host's store");
        assert_eq!(listing(&self.store), before, "the host's store changed");
        assert_eq!(file("rw-write").as_deref(), Some("written"), "{p}");
        let arrived = std::fs::read_to_string(self.rw.join("guest-was-here")).ok();
        assert_eq!(arrived.as_deref(), Some("guest\n"));
    }
}

/// The extra disks in the live domain: serials, sector sizes, the qcow2 files.
fn assert_disks_defined(name: &str) {
    let live = virsh(&["dumpxml", name]).unwrap();
    for serial in ["nbt-d512", "nbt-d4k"] {
        assert!(
            live.contains(&format!("<serial>{serial}</serial>")),
            "{live}"
        );
    }
    assert!(live.contains("logical_block_size='4096'"), "{live}");
    let blk = virsh(&["domblklist", name]).unwrap();
    assert!(blk.contains(&format!("{name}-d4k.qcow2")), "{blk}");
}

#[test]
fn libvirt_imageless_guest_boots_and_cannot_write_its_store() {
    let test = "libvirt_imageless_guest_boots_and_cannot_write_its_store";
    let Some(s) = setup(test) else { return };
    let _net = network(&s);
    let g = Imageless {
        name: "nixboot-test-imageless",
        store: s.kit.path("store"),
        // The control: a writable share (libvirt's own virtiofsd) where the same guest's write
        // must arrive, so that a refused store write is --readonly's, not a guest unable to write.
        rw: s.dir("rw"),
        modules: nixboot_launcher::bootspec::modules_share_dir(&s.kit.env.modules).unwrap(),
        sockets: s.socket_dir(),
        images: s.dir("images"),
        console_log: s.kit.path("imageless-console.log"),
    };
    let init = writer_store(&s, &g.store);
    std::fs::set_permissions(&g.store, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = listing(&g.store);
    let r = render(&s.nixpkgs, &g.request(&s, &init));
    let _vfs = g.start_readonly_shares(&r, &s.kit.env.virtiofsd);
    r["disks"]
        .as_array()
        .unwrap()
        .iter()
        .for_each(|a| run_argv(&strings(a)));

    let _dom = define(
        "domain",
        g.name,
        r["domains"][0].as_str().unwrap(),
        s.kit.tmp.path(),
    );
    assert_disks_defined(g.name);
    let console = boot_to_shutoff(g.name, &g.console_log);
    let p = assert_reached_probe(&console);
    eprintln!(
        "{test}: the probe ran under libvirt; its test files: {:?}",
        p.test_files
    );
    g.assert_store_untouched(&p, &before);
    assert_disks_and_lease(&p);
}

/// The extra disks as the guest saw them (serial, logical and physical sector size) and the
/// DHCP lease it got from the controller's network, seen from both sides.
fn assert_disks_and_lease(p: &ProbeReport) {
    // The extra disks, as the guest sees them: serial, logical and physical sector size.
    let disks: Vec<&str> = p
        .test_files
        .iter()
        .filter(|(k, _)| k.starts_with("disk-"))
        .map(|(_, v)| v.trim())
        .collect();
    assert!(disks.contains(&"nbt-d512 512 512"), "{disks:?}");
    assert!(disks.contains(&"nbt-d4k 4096 4096"), "{disks:?}");
    // The controller's network gave the guest an address (udhcpc: "lease of A obtained").
    let dhcp = p.test_files.get("dhcp").map_or("", |d| d.as_str());
    assert!(dhcp.contains("lease of 192.168.86."), "{dhcp}");
    let leases = virsh(&["net-dhcp-leases", NETWORK]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        leases.contains("52:54:00:4e:42:01"),
        "the guest's MAC has no lease: {leases}"
    );
}

#[test]
fn libvirt_overlay_guest_boots_from_a_read_only_backing_image() {
    let test = "libvirt_overlay_guest_boots_from_a_read_only_backing_image";
    let Some(s) = setup(test) else { return };
    let _net = network(&s);
    // The root: an ext4 filesystem holding the probe store, as qcow2, read-only.
    let probe = s.kit.probe_store("store");
    let tree = s.kit.path("root");
    disk::root_tree(&tree, &probe.store);
    let fs = disk::ext4(
        &tree,
        "nixos",
        "5b0c1e6e-8d7e-4c1a-9f1e-6c0f0a1b2c3d",
        32,
        s.kit.tmp.path(),
    );
    let raw = s.kit.path("root.raw");
    std::fs::write(&raw, fs).unwrap();
    let images = s.dir("images");
    let backing = images.join("backing.qcow2");
    run_argv(
        &["qemu-img", "convert", "-O", "qcow2"]
            .map(String::from)
            .into_iter()
            .chain([raw.display().to_string(), backing.display().to_string()])
            .collect::<Vec<_>>(),
    );
    common::chmod(&backing, 0o444);

    let name = "nixboot-test-overlay";
    let console_log = s.kit.path("overlay-console.log");
    let overlay = images.join(format!("{name}.qcow2"));
    let cmdline = guest_cmdline(&probe.init, "root=/dev/vda rootfstype=ext4 rw");
    let boot = json!({
        "kernel": s.kernel(), "initrd": s.initrd(common::BLOCK_MODULES), "cmdline": cmdline,
        "backing": backing, "storeTag": "store", "modulesTag": "modules",
        "modulesDir": null, "virtiofsd": s.kit.env.virtiofsd,
    });
    let guest = json!({ "mode": "libvirt", "mac": "52:54:00:4e:42:02", "consoleLog": console_log });
    let r = render(
        &s.nixpkgs,
        &json!({
            "domains": [s.domain(name, guest, boot)],
            "overlays": [{ "qemuImg": "qemu-img", "file": overlay, "backing": backing }],
        }),
    );
    run_argv(&strings(&r["overlays"][0]));
    let xml = r["domains"][0].as_str().unwrap();
    let _dom = define("domain", name, xml, s.kit.tmp.path());
    let live = virsh(&["dumpxml", name]).unwrap();
    assert!(
        live.contains(&format!("<source network='{NETWORK}'")),
        "{live}"
    );
    let image_before = std::fs::read(&backing).unwrap();
    let console = boot_to_shutoff(name, &console_log);
    let p = assert_reached_probe(&console);
    assert_eq!(p.root_fstype.as_deref(), Some("ext4"), "{p}");
    assert_eq!(p.root_readonly, Some(false), "{p}");
    // The guest's root is writable through the overlay only: the image is unchanged.
    assert!(
        std::fs::read(&backing).unwrap() == image_before,
        "the backing image changed"
    );
    assert_eq!(common::disk_format(&overlay), "qcow2");
}
