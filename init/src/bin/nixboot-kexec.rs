//! `nixboot-kexec`: loads another generation's kernel, initrd and command line (from its
//! boot.json) with kexec_file_load(2); with `--now` reboots into it at once. The decisions
//! and the exit codes are in `init::kexec`; this file is the syscall layer.

use init::kexec::{self, KexecPlan, EXIT_BAD_GENERATION, EXIT_LOAD, EXIT_REBOOT, EXIT_USAGE};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// linux/kexec.h
const KEXEC_FILE_UNLOAD: libc::c_ulong = 0x1;
const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 0x4;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = match kexec::parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(EXIT_USAGE, &format!("{e}\n{}", kexec::USAGE)),
    };
    let plan = match kexec::resolve(&args.target, Path::new(kexec::PROFILES_DIR)).and_then(|p| {
        let bytes = std::fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        kexec::plan(
            &p,
            &bytes,
            args.specialisation.as_deref(),
            &args.append,
            &|f| f.is_file(),
        )
    }) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_BAD_GENERATION, &format!("{e}; nothing was loaded")),
    };
    if let Err(e) = load(&plan) {
        return fail(
            EXIT_LOAD,
            &format!(
                "kexec_file_load of {}: {e}; nothing is loaded \
             (check: the kernel's CONFIG_KEXEC_FILE, lockdown / signature policy, CAP_SYS_BOOT)",
                plan.kernel.display()
            ),
        );
    }
    eprintln!(
        "nixboot-kexec: loaded {} (kernel {}, initrd {}, cmdline {:?})",
        plan.boot_json.display(),
        plan.kernel.display(),
        plan.initrd
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string()),
        plan.cmdline
    );
    if !args.now {
        eprintln!("nixboot-kexec: `systemctl kexec` boots it (or run again with --now)");
        return 0;
    }
    rustix::fs::sync();
    let e = rustix::system::reboot(rustix::system::RebootCommand::Kexec).err();
    // Only reached when the reboot failed: leave nothing loaded behind.
    unload();
    fail(
        EXIT_REBOOT,
        &format!("reboot(KEXEC) failed: {e:?}; the image was unloaded"),
    )
}

fn fail(code: i32, msg: &str) -> i32 {
    eprintln!("nixboot-kexec: {msg}");
    code
}

/// kexec_file_load(kernel, initrd, cmdline): the kernel parses and (per its policy)
/// verifies the image itself.
fn load(plan: &KexecPlan) -> Result<(), String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("opening {}: {e}", p.display()));
    let kernel = open(&plan.kernel)?;
    let initrd = plan.initrd.as_deref().map(open).transpose()?;
    let cmdline = CString::new(plan.cmdline.clone()).map_err(|_| "a NUL in the command line")?;
    let (initrd_fd, flags) = match &initrd {
        Some(f) => (f.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: the fds are open for the call's duration; cmdline is NUL-terminated and its
    // length includes the NUL, as the syscall requires.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            cmdline.as_bytes_with_nul().len() as libc::c_ulong,
            cmdline.as_ptr(),
            flags,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

fn unload() {
    // SAFETY: the unload form takes no pointers.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            -1,
            -1,
            0 as libc::c_ulong,
            0usize,
            KEXEC_FILE_UNLOAD,
        )
    };
}
