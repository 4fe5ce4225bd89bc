//! `probe-init`: a synthetic stage 2. Run as PID 1 by the init after switching root, it
//! reports what it was handed as one line `PROBE-RESULT {json}` on the console and powers
//! the machine off. The fields are specified in docs/contracts-internal.md.
//!
//! It must never panic or exit as PID 1 (the kernel would panic and hide the report), so
//! every failure to find something out becomes an entry of `errors` instead.

use nixboot_protocol::probe::{ProbeReport as Report, Stat};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set in the environment of the re-executed child that looks under our root.
const ESCAPE_ENV: &str = "NIXBOOT_PROBE_ESCAPE_CHILD";
/// Bounds the old-rootfs walk: a leftover initramfs can hold thousands of files and the
/// report is one console line.
const MAX_LEFTOVERS: usize = 200;

static REPORTED: AtomicBool = AtomicBool::new(false);

fn main() {
    // PID 1 is never the child, whatever environment the init handed over.
    if std::process::id() != 1 && std::env::var_os(ESCAPE_ENV).is_some() {
        escape_child();
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        // Belt and braces: a panic would abort PID 1; report it and power off first.
        let mut msg = String::new();
        let _ = write!(msg, "probe panicked: {info}");
        if !REPORTED.swap(true, Ordering::SeqCst) {
            let report = Report {
                errors: vec![msg],
                ..Report::default()
            };
            emit(&report);
        }
        finish();
    }));
    let report = probe();
    REPORTED.store(true, Ordering::SeqCst);
    emit(&report);
    finish();
}

/// Files the synthetic closures' scripts leave for the probe to report.
const TEST_FILES_DIR: &str = "/run/nixboot-test";
const MAX_TEST_FILE: usize = 4096;

/// One line of /proc/self/mountinfo, reduced to what the report needs.
struct Mount {
    mount_point: String,
    fstype: String,
    readonly: bool,
    /// Per-mount options, then the filesystem's (`rw,noatime rw,errors=remount-ro`).
    options: String,
    /// In a peer group (`shared:N` among the optional fields).
    shared: bool,
}

fn probe() -> Report {
    let mut r = Report {
        pid: Some(rustix::process::getpid().as_raw_nonzero().get() as u32),
        argv: std::env::args_os().map(lossy).collect(),
        env: std::env::vars_os()
            .map(|(k, v)| format!("{}={}", lossy(k), lossy(v)))
            .collect(),
        ..Report::default()
    };
    r.env.sort();
    // Unreadable mountinfo still names the four, as not mounted.
    for p in ["/proc", "/sys", "/dev", "/run"] {
        r.special_mounts.insert(p.into(), None);
    }
    let mounted_proc = mount_proc_if_missing(&mut r);
    match fs::read("/proc/cmdline") {
        Ok(b) => r.cmdline = Some(String::from_utf8_lossy(&b).trim().to_string()),
        Err(e) => r.errors.push(format!("reading /proc/cmdline: {e}")),
    }
    read_mounts(&mut r, mounted_proc);
    match leftovers() {
        Ok(names) => {
            r.initramfs_leftovers = Some(names);
            r.initramfs_checked = true;
        }
        Err(e) => r.errors.push(format!("initramfs leftovers: {e}")),
    }
    read_files(&mut r);
    if mounted_proc {
        if let Err(e) = rustix::mount::unmount("/proc", rustix::mount::UnmountFlags::DETACH) {
            r.errors
                .push(format!("unmounting our temporary /proc: {e}"));
        }
    }
    r
}

/// The init is supposed to hand over a mounted /proc; if it did not, mount one only long
/// enough to look, and say so (special_mounts still reports the truth). Returns whether we
/// mounted it.
fn mount_proc_if_missing(r: &mut Report) -> bool {
    let mut mounted_proc = false;
    if fs::metadata("/proc/self/mountinfo").is_err() {
        let _ = fs::create_dir_all("/proc");
        match rustix::mount::mount(
            "proc",
            "/proc",
            "proc",
            rustix::mount::MountFlags::empty(),
            None,
        ) {
            Ok(()) => {
                mounted_proc = true;
                r.errors
                    .push("/proc was not mounted; mounted it temporarily to look".into());
            }
            Err(e) => r
                .errors
                .push(format!("/proc was not mounted and mounting it failed: {e}")),
        }
    }
    mounted_proc
}

/// The root, store, modules and special mounts, from /proc/self/mountinfo.
fn read_mounts(r: &mut Report, mounted_proc: bool) {
    match fs::read("/proc/self/mountinfo") {
        Ok(b) => {
            let mounts = parse_mountinfo(&String::from_utf8_lossy(&b));
            let find = |p: &str| mounts.iter().rev().find(|m| m.mount_point == p);
            r.root_fstype = find("/").map(|m| m.fstype.clone());
            r.root_readonly = find("/").map(|m| m.readonly);
            r.root_options = find("/").map(|m| m.options.clone());
            if let Some(m) = find("/nix/store") {
                r.store_fstype = Some(m.fstype.clone());
                r.store_readonly = Some(m.readonly);
            }
            if let Some(m) = find("/lib/modules") {
                r.modules_fstype = Some(m.fstype.clone());
                r.modules_readonly = Some(m.readonly);
            }
            for p in ["/proc", "/sys", "/dev", "/run"] {
                let fstype = if p == "/proc" && mounted_proc {
                    None
                } else {
                    find(p).map(|m| m.fstype.clone())
                };
                r.special_mounts.insert(p.into(), fstype);
            }
        }
        Err(e) => r.errors.push(format!("reading /proc/self/mountinfo: {e}")),
    }
}

/// Whether the store is writable, /run/booted-system, the timings, the test files and the
/// `stat:` arguments.
fn read_files(r: &mut Report) {
    if fs::metadata("/nix/store").is_ok_and(|m| m.is_dir()) {
        let probe = Path::new("/nix/store/.nixboot-probe-write");
        r.store_writable = Some(match fs::write(probe, b"x") {
            Ok(()) => {
                let _ = fs::remove_file(probe);
                true
            }
            Err(_) => false,
        });
    }
    r.booted_system = fs::read_link("/run/booted-system")
        .ok()
        .map(|p| lossy(p.into_os_string()));
    r.timings = fs::read_to_string(nixboot_protocol::timings::TIMINGS_PATH).ok();
    if let Ok(dir) = fs::read_dir(TEST_FILES_DIR) {
        let mut files: Vec<(String, String)> = dir
            .flatten()
            .take(32)
            .map(|e| {
                let mut text = fs::read(e.path()).unwrap_or_default();
                text.truncate(MAX_TEST_FILE);
                (
                    lossy(e.file_name()),
                    String::from_utf8_lossy(&text).into_owned(),
                )
            })
            .collect();
        files.sort();
        r.test_files = files.into_iter().collect();
    }
    for a in r.argv.clone().iter().skip(1) {
        if let Some(path) = a.strip_prefix("stat:") {
            r.stats.insert(path.to_string(), stat(Path::new(path)));
        }
    }
}

fn stat(p: &Path) -> Stat {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = fs::symlink_metadata(p) else {
        return Stat {
            kind: "missing".into(),
            ..Stat::default()
        };
    };
    let ft = m.file_type();
    Stat {
        kind: if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        }
        .into(),
        mode: Some(format!("{:04o}", m.permissions().mode() & 0o7777)),
        size: ft.is_file().then_some(m.len()),
        target: fs::read_link(p).ok().map(|t| lossy(t.into_os_string())),
        mtime: Some(m.mtime()),
    }
}

/// Parses /proc/self/mountinfo: `id parent maj:min root mountpoint options [optional...] -
/// fstype source superoptions`. Malformed lines are skipped.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mp), Some(opts), Some(fstype)) =
            (fields.get(4), fields.get(5), fields.get(sep + 1))
        else {
            continue;
        };
        let is_ro = |o: &str| o.split(',').any(|x| x == "ro");
        let super_ro = fields.get(sep + 3).is_some_and(|o| is_ro(o));
        out.push(Mount {
            mount_point: unescape_octal(mp),
            fstype: (*fstype).to_string(),
            readonly: is_ro(opts) || super_ro,
            options: format!("{opts} {}", fields.get(sep + 3).unwrap_or(&"")),
            shared: fields
                .get(6..sep)
                .unwrap_or_default()
                .iter()
                .any(|f| f.starts_with("shared:")),
        });
    }
    out
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Looks at the old rootfs from a child process (its mount namespace games must not touch
/// ours). The child is this binary re-executed: std offers no bare fork, and exec is as good.
fn leftovers() -> Result<Vec<String>, String> {
    let exe = std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(PathBuf::from))
        .ok_or("cannot find our own executable to re-run")?;
    let mut child = Command::new(&exe)
        .env(ESCAPE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", exe.display()))?;
    let mut buf = Vec::new();
    let read = child
        .stdout
        .take()
        .map(|mut s| s.read_to_end(&mut buf))
        .transpose();
    let status = child.wait();
    if let Err(e) = read.and(status) {
        return Err(format!("talking to the escape child: {e}"));
    }
    parse_escape_output(&buf)
}

/// Child protocol on stdout: NUL-terminated records, `N<name>` per entry, `E<message>` on
/// failure, `K` when the listing is complete.
fn parse_escape_output(out: &[u8]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut complete = false;
    for rec in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let body = String::from_utf8_lossy(&rec[1..]).into_owned();
        match rec[0] {
            b'N' => names.push(body),
            b'E' => return Err(body),
            b'K' => complete = true,
            _ => return Err("garbled output from the escape child".into()),
        }
    }
    if complete {
        Ok(names)
    } else {
        Err("the escape child died before finishing".into())
    }
}

/// The child: the init's switch_root did `mount --move NEWROOT /` + `chroot .`, so our root
/// mount sits on top of the initramfs (rootfs), which no path reaches any more (`..` at a
/// mount root never descends into a covered mount root, so a chroot escape only finds our
/// own root again). In a private copy of the mount namespace, detach our root mount; then
/// entering that namespace again (setns re-roots at the namespace's topmost mount) lands
/// on the copy of rootfs.
fn escape_child() {
    let mut out = std::io::stdout().lock();
    let res = escape_and_list();
    let mut buf = Vec::new();
    match res {
        Ok(names) => {
            for n in names {
                buf.push(b'N');
                buf.extend_from_slice(n.as_bytes());
                buf.push(0);
            }
            buf.extend_from_slice(b"K\0");
        }
        Err(e) => {
            buf.push(b'E');
            buf.extend_from_slice(e.as_bytes());
            buf.push(0);
        }
    }
    let _ = out.write_all(&buf);
    let _ = out.flush();
}

fn escape_and_list() -> Result<Vec<String>, String> {
    use rustix::mount::{MountPropagationFlags, UnmountFlags};
    use std::os::fd::AsFd;

    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let root_mount = parse_mountinfo(&info)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == "/")
        .ok_or("no mount at / in mountinfo")?;
    // A shared root suggests a shared rootfs (a mount moved under a shared parent joins its
    // peer group); detaching under a shared parent could propagate to the real system.
    if root_mount.shared {
        return Err("the root mount is shared; not detaching it to look underneath".into());
    }
    let root_meta = fs::metadata("/").map_err(|e| format!("stat /: {e}"))?;

    // SAFETY: this process is single-threaded and NEWNS does not touch file descriptors.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    let ns =
        fs::File::open("/proc/self/ns/mnt").map_err(|e| format!("open /proc/self/ns/mnt: {e}"))?;
    match rustix::mount::unmount("/", UnmountFlags::DETACH) {
        Ok(()) => {}
        Err(rustix::io::Errno::INVAL) => {
            return Err("nothing lies under our root (did the init switch root?)".into())
        }
        Err(e) => return Err(format!("detaching / in a private namespace: {e}")),
    }
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Mount),
    )
    .map_err(|e| format!("setns into our own namespace: {e}"))?;

    let here = fs::metadata("/").map_err(|e| format!("stat old root: {e}"))?;
    if here.dev() == root_meta.dev() && here.ino() == root_meta.ino() {
        return Err("still on our own root after detaching it".into());
    }
    walk(Path::new("/"), here.dev())
}

/// Lists `dir` breadth first (so a truncated report still shows the top level) as
/// sorted relative paths, staying on one filesystem: directories the init left mounted
/// over (e.g. a /dev not moved) belong to other filesystems. Ends with "..." if cut short.
fn walk(dir: &Path, dev: u64) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let mut queue = std::collections::VecDeque::from([(dir.to_path_buf(), String::new())]);
    while let Some((path, prefix)) = queue.pop_front() {
        let entries = fs::read_dir(&path).map_err(|e| format!("listing {prefix}/: {e}"))?;
        let mut here: Vec<(String, PathBuf)> = entries
            .flatten()
            .map(|e| (lossy(e.file_name()), e.path()))
            .collect();
        here.sort();
        for (name, p) in here {
            if names.len() >= MAX_LEFTOVERS {
                names.sort();
                names.push("...".into());
                return Ok(names);
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir() && m.dev() == dev) {
                queue.push_back((p, rel.clone()));
            }
            names.push(rel);
        }
    }
    names.sort();
    Ok(names)
}

fn lossy(s: OsString) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}

/// Writes the report line to stdout, falling back to /dev/console if stdout is unusable.
fn emit(report: &Report) {
    let line = report.to_line();
    // The line is 2 KiB or more: at 115200 baud the kernel's own console messages (seen in
    // CI: "tsc: Refined TSC clocksource calibration" at 2.3 s) landed in the middle of it.
    // Console loglevel 1 keeps everything but KERN_EMERG ("reboot: Power down") off the
    // console from here on; /dev/kmsg still has it all.
    if std::process::id() == 1 {
        let _ = fs::write("/proc/sys/kernel/printk", "1");
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
    {
        return;
    }
    if let Ok(mut c) = fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = c.write_all(line.as_bytes());
    }
}

/// Powers off when we are PID 1; otherwise (run by hand for a look) just returns.
fn finish() {
    rustix::fs::sync();
    if std::process::id() != 1 {
        return;
    }
    let err = rustix::system::reboot(rustix::system::RebootCommand::PowerOff).err();
    let msg = format!("probe-init: power off failed: {err:?}; halting here\n");
    let _ = std::io::stderr().write_all(msg.as_bytes());
    // PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_with_optional_fields_and_escapes() {
        let text = "22 1 0:21 / / rw,relatime shared:1 - tmpfs none rw\n\
                    30 22 0:30 / /nix/store ro,relatime - virtiofs store rw\n\
                    31 22 0:31 / /my\\040dir rw - ext4 /dev/x rw\n\
                    garbage line\n\
                    1 - 2\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].fstype, "tmpfs");
        assert!(!m[0].readonly);
        assert_eq!(m[1].mount_point, "/nix/store");
        assert!(m[1].readonly);
        assert_eq!(m[2].mount_point, "/my dir");
    }

    #[test]
    fn mountinfo_shared_flag() {
        let m = parse_mountinfo("22 1 0:21 / / rw shared:1 master:2 - tmpfs none rw\n");
        assert!(m[0].shared);
        let m = parse_mountinfo("22 1 0:21 / / rw master:2 - tmpfs none rw\n");
        assert!(!m[0].shared);
    }

    #[test]
    fn walk_is_breadth_first_sorted_and_bounded() {
        let d = std::env::temp_dir().join(format!("probe-walk-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("b/deep")).unwrap();
        fs::write(d.join("a"), "").unwrap();
        fs::write(d.join("b/deep/f"), "").unwrap();
        let dev = fs::metadata(&d).unwrap().dev();
        assert_eq!(walk(&d, dev).unwrap(), ["a", "b", "b/deep", "b/deep/f"]);
        for i in 0..MAX_LEFTOVERS {
            fs::write(d.join(format!("many{i}")), "").unwrap();
        }
        let names = walk(&d, dev).unwrap();
        assert_eq!(names.len(), MAX_LEFTOVERS + 1);
        assert_eq!(names.last().map(String::as_str), Some("..."));
        assert!(names.contains(&"b".to_string()));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn escape_output_protocol() {
        assert_eq!(
            parse_escape_output(b"Nsysroot\0K\0").unwrap(),
            vec!["sysroot".to_string()]
        );
        assert!(parse_escape_output(b"Nsysroot\0").is_err());
        assert_eq!(parse_escape_output(b"Eboom\0").unwrap_err(), "boom");
    }
}
