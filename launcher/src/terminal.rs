//! `--shell`: the user's terminal as the guest's: its size and type for the guest's
//! pseudo-terminal, raw mode while the shell runs, and the keys as the shell's input.

use nixboot_launcher::exec::Input;
use nixboot_protocol::exec::Tty;
use rustix::termios::{self, OptionalActions, Termios};
use std::io::IsTerminal;

/// The size and `TERM` of our terminal (24x80 and `dumb` when stdin is not one).
pub fn guest_tty() -> Tty {
    let stdin = std::io::stdin();
    let size = termios::tcgetwinsize(&stdin).ok().filter(|w| w.ws_row > 0);
    let term = std::env::var("TERM").ok().filter(|_| size.is_some());
    Tty {
        rows: size.map_or(24, |w| w.ws_row),
        cols: size.map_or(80, |w| w.ws_col),
        term: term.unwrap_or_else(|| "dumb".into()),
    }
}

/// Puts our terminal back as it was when dropped.
pub struct Raw {
    saved: Termios,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Our stdin as the shell's input. A terminal is made raw (every key, Ctrl-C included, goes
/// to the guest, whose pty does the echoing and line editing); a pipe's end becomes
/// Ctrl-D.
pub fn input() -> (Option<Input>, Option<Raw>) {
    let stdin = std::io::stdin();
    let raw = match stdin.is_terminal() {
        true => termios::tcgetattr(&stdin).ok().and_then(|saved| {
            let mut t = saved.clone();
            t.make_raw();
            termios::tcsetattr(&stdin, OptionalActions::Now, &t).ok()?;
            eprint!("nixboot-qemu: your terminal is the guest's shell's until it exits\r\n");
            Some(Raw { saved })
        }),
        false => None,
    };
    let eof_byte = (!stdin.is_terminal()).then_some(0x04);
    let input = Input {
        reader: Box::new(stdin),
        eof_byte,
    };
    (Some(input), raw)
}
