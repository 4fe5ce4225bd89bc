//! Command mode (`nixboot-qemu --exec CMD`): how the command reaches the guest and how its
//! output and status come back.
//!
//! - The command goes on the kernel command line as `nixboot.exec=BASE64` ([`CMDLINE_KEY`]):
//!   standard base64 (RFC 4648, with padding) of the command's UTF-8 bytes, so that spaces,
//!   quotes and newlines survive the kernel's tokenising. Writer: the launcher
//!   ([`cmdline_param`]); readers: the init's runner ([`decode_command`]) and the NixOS
//!   agent (`nixos/exec-agent.sh`, with coreutils' `base64 -d`, the same format).
//! - Three virtio-serial ports carry the rest, named [`STDOUT_PORT`], [`STDERR_PORT`],
//!   [`STATUS_PORT`] (the guest finds them by name in /sys/class/virtio-ports/*/name, or as
//!   /dev/virtio-ports/NAME where udev runs). The command's stdout and stderr go to the
//!   first two byte for byte; stdin is /dev/null.
//! - The status port carries lines ([`StatusMsg`]): `started` once the runner has the
//!   command and its ports (the launcher's bounded wait ends there), then `exit=N` with the
//!   command's status (a shell's: 128+signal for a command killed by a signal) once it has
//!   ended and its output has been written. Then the guest powers off.
//! - Terminal mode (`nixboot-qemu --shell`): `nixboot.tty=ROWS,COLS,TERM` ([`TTY_KEY`],
//!   [`Tty`]) beside `nixboot.exec=` asks the runner for a pseudo-terminal of that size
//!   and type: the command runs with the pty as its stdin, stdout and stderr, whose
//!   master side is the stdout port, read as well as written (the user's keys come in on
//!   it, after `started`); the stderr port stays for the runner's own complaints. Served
//!   by the NixOS agent (util-linux `script`); nixboot's init ignores it.

/// The kernel command-line key carrying the command.
pub const CMDLINE_KEY: &str = "nixboot.exec";
/// `nixboot-qemu --share-cwd`: `nixboot.cwd=BASE64(PATH)` asks the init to mount the
/// virtiofs tag [`CWD_TAG`] read-write at PATH (the host's working directory, at the same
/// path), where command mode also runs the command.
pub const CWD_KEY: &str = "nixboot.cwd";
pub const CWD_TAG: &str = "cwd";
/// `nixboot-qemu --shell`: the pseudo-terminal the command runs on ([`Tty`]).
pub const TTY_KEY: &str = "nixboot.tty";
/// The virtio-serial port names (QEMU `virtserialport,name=`).
pub const STDOUT_PORT: &str = "nixboot.exec.stdout";
pub const STDERR_PORT: &str = "nixboot.exec.stderr";
pub const STATUS_PORT: &str = "nixboot.exec.status";

/// `nixboot.exec=BASE64`: the parameter the launcher appends to the kernel command line.
pub fn cmdline_param(command: &str) -> String {
    format!("{CMDLINE_KEY}={}", encode(command.as_bytes()))
}

/// `nixboot.cwd=BASE64`: the parameter the launcher appends for `--share-cwd`.
pub fn cwd_param(path: &str) -> String {
    format!("{CWD_KEY}={}", encode(path.as_bytes()))
}

/// The command (or the path) from the value of `nixboot.exec=` (`nixboot.cwd=`).
pub fn decode_command(value: &str) -> Result<String, String> {
    let bytes = decode(value)?;
    String::from_utf8(bytes).map_err(|_| "the decoded command is not UTF-8".to_string())
}

/// Terminal mode's pseudo-terminal: its size and `TERM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tty {
    pub rows: u16,
    pub cols: u16,
    /// Only `[A-Za-z0-9._+-]` survives [`Tty::param`]; anything else becomes `dumb`.
    pub term: String,
}

impl Tty {
    /// `nixboot.tty=ROWS,COLS,TERM`: the parameter the launcher appends.
    pub fn param(&self) -> String {
        let term_ok = !self.term.is_empty()
            && self
                .term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        let term = if term_ok { self.term.as_str() } else { "dumb" };
        format!("{TTY_KEY}={},{},{term}", self.rows, self.cols)
    }

    /// Reads the value of `nixboot.tty=` (the agent splits it the same way in bash).
    pub fn parse(value: &str) -> Option<Tty> {
        let mut it = value.splitn(3, ',');
        let rows = it.next()?.parse().ok()?;
        let cols = it.next()?.parse().ok()?;
        let term = it.next()?.to_string();
        Some(Tty { rows, cols, term })
    }
}

/// One line of the status port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMsg {
    /// The runner has the command and its ports, and starts it.
    Started,
    /// The command ended with this status (0-255).
    Exit(u8),
}

impl StatusMsg {
    /// The line, with its `\n`.
    pub fn line(self) -> String {
        match self {
            StatusMsg::Started => "started\n".into(),
            StatusMsg::Exit(n) => format!("exit={n}\n"),
        }
    }

    /// Reads one line (without its line end); `None` for anything else.
    pub fn parse(line: &str) -> Option<StatusMsg> {
        match line.trim_end_matches(['\r', '\n']) {
            "started" => Some(StatusMsg::Started),
            l => l.strip_prefix("exit=")?.parse().ok().map(StatusMsg::Exit),
        }
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64; padding is required (as [`encode`] writes it).
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(4) {
        return Err(format!("length {} is not a multiple of 4", t.len()));
    }
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    for (i, quad) in t.chunks(4).enumerate() {
        let last = i + 1 == t.len() / 4;
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("misplaced '=' padding".into());
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            let v = ALPHABET
                .iter()
                .position(|a| *a == c)
                .ok_or_else(|| format!("{:?} is not a base64 character", c as char))?;
            n = (n << 6) | v as u32;
        }
        n <<= 6 * pad;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn commands_round_trip_and_need_no_quoting() {
        let cmd = "echo \"a b\" 'c' >&2; exit 3\n\u{e9}";
        let p = cmdline_param(cmd);
        let value = p.strip_prefix("nixboot.exec=").unwrap();
        assert!(!value.contains([' ', '"', '\n']), "{p}");
        assert_eq!(decode_command(value).unwrap(), cmd);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(decode("Zm9").is_err());
        assert!(decode("Zg==Zm9v").is_err());
        assert!(decode("Z===").is_err());
        assert!(decode("Zm9*").is_err());
        assert!(decode_command("/w==").is_err(), "0xff is not UTF-8");
    }

    #[test]
    fn tty_parameters_round_trip_and_refuse_odd_terms() {
        let t = Tty {
            rows: 50,
            cols: 132,
            term: "xterm-256color".into(),
        };
        assert_eq!(t.param(), "nixboot.tty=50,132,xterm-256color");
        let value = t.param();
        assert_eq!(
            Tty::parse(value.strip_prefix("nixboot.tty=").unwrap()),
            Some(t)
        );
        let odd = Tty {
            rows: 1,
            cols: 2,
            term: "a b".into(),
        };
        assert_eq!(odd.param(), "nixboot.tty=1,2,dumb");
        assert_eq!(Tty::parse("x,2,dumb"), None);
        assert_eq!(Tty::parse("1,2"), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(StatusMsg::Started.line(), "started\n");
        assert_eq!(StatusMsg::Exit(3).line(), "exit=3\n");
        assert_eq!(StatusMsg::parse("exit=255\r\n"), Some(StatusMsg::Exit(255)));
        assert_eq!(StatusMsg::parse("started"), Some(StatusMsg::Started));
        assert_eq!(StatusMsg::parse("exit=256"), None);
        assert_eq!(StatusMsg::parse("exit"), None);
    }
}
