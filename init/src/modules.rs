//! Module loading: finit_module(2) of the uncompressed `.ko` files mkinitrd packed, in the
//! order of the initrd config (mkinitrd resolved dependencies; we do not).

use crate::failure::Failure;
use crate::log::{self, errno};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::ffi::CString;

const STEP: &str = "load-module";

/// What happened to one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Now,
    /// EEXIST: built in or loaded before; fine.
    Already,
}

/// Warns when the initrd's modules were taken from another kernel than the running one:
/// that is the usual cause of every later load failing.
pub fn check_kernel_version(expected: Option<&str>) {
    let Some(expected) = expected else { return };
    let uname = rustix::system::uname();
    let running = uname.release().to_string_lossy();
    if running != expected {
        log::notice(
            STEP,
            &format!(
                "WARNING: the initrd's modules are for kernel {expected}, but this is {running}; \
                 loading will likely fail: rebuild the initrd for this kernel"
            ),
        );
    }
}

/// The load-module step; `Ok` is the line for the log.
pub fn load_step(name: &str, path: &str, params: &str) -> Result<String, Failure> {
    Ok(match load(name, path, params)? {
        Loaded::Now => format!("{name} loaded"),
        Loaded::Already => format!("{name} already loaded (built in?)"),
    })
}

/// Loads one module.
pub fn load(name: &str, path: &str, params: &str) -> Result<Loaded, Failure> {
    // Every check ends with the way around a module the boot may not need.
    let fail = |error: String, check: &str| {
        Failure::new(STEP, error)
            .tried(format!("finit_module({path}, {params:?})"))
            .check(format!(
                "{check}\nif the boot does not need {name}: rd.driver.blacklist={name}"
            ))
    };
    let params_c = CString::new(params).map_err(|_| {
        fail(
            format!("module {name}: parameters contain a NUL byte"),
            "the initrd config's params for this module",
        )
    })?;
    let fd =
        rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            fail(
                format!("module {name}: cannot open {path}: {}", errno(e)),
                "the module list in /etc/nixboot/initrd.json against the files mkinitrd packed \
             (mkinitrd inspect INITRD); rebuild the initrd",
            )
        })?;
    match rustix::system::finit_module(&fd, &params_c, 0) {
        Ok(()) => Ok(Loaded::Now),
        Err(Errno::EXIST) => Ok(Loaded::Already),
        Err(e) => {
            let hint = match e {
                Errno::NOEXEC | Errno::INVAL => {
                    "built for another kernel? compare the initrd's kernel_version with uname -r \
                     (a compressed .ko also gives this); the kernel log (dmesg) names the reason"
                }
                Errno::NOENT => {
                    "unknown symbol: a module it depends on is missing or listed after it \
                     (check the module order; dmesg names the symbol)"
                }
                Errno::KEYREJECTED | Errno::BADMSG | Errno::NOKEY => {
                    "the module's signature was rejected (module.sig_enforce or lockdown)"
                }
                Errno::PERM => "not permitted: kernel lockdown or kernel.modules_disabled?",
                Errno::NOSYS => "this kernel was built without module support",
                Errno::BUSY => "the module is still initialising elsewhere; dmesg may say more",
                _ => "the kernel log (dmesg) has the details",
            };
            Err(fail(
                format!("module {name} ({path}) failed to load: {}", errno(e)),
                hint,
            ))
        }
    }
}
