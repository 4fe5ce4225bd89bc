//! nixboot's PID 1 for the initramfs; the work is in the library (`init::run`).
//!
//! No Rust `main`: std's runtime start-up reopens closed fds 0-2 on /dev/null and aborts
//! when it cannot, which is exactly the situation of an init started without a console
//! and without /dev/null. We take over the C `main` and fix the fds ourselves once
//! devtmpfs is mounted.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    init::run()
}
