//! Command mode (`nixboot-qemu --exec CMD`), the host side: three virtio-serial ports whose
//! QEMU ends are listening unix sockets; one thread per port connects and copies the
//! command's stdout and stderr to ours as they arrive, and reads its status lines. The
//! guest side (the init's runner, or the NixOS agent) and the formats:
//! `nixboot_protocol::exec`.

use crate::{Error, Machine, Result};
use nixboot_protocol::exec::{StatusMsg, STATUS_PORT, STDERR_PORT, STDOUT_PORT};
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a port's socket may take to appear once QEMU runs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The ports, before QEMU starts.
pub struct ExecPorts {
    dir: tempfile::TempDir,
}

/// What the status port said so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExecState {
    /// When the runner said `started` (since [`ExecPorts::start`]).
    pub started: Option<Duration>,
    /// The command's status, and when it came.
    pub exit: Option<(u8, Duration)>,
}

/// Terminal mode's input (`--shell`): sent on the stdout port, which the guest's
/// pseudo-terminal reads as well as writes, once the runner has said `started`.
pub struct Input {
    pub reader: Box<dyn Read + Send>,
    /// Sent when `reader` ends: the terminal's end-of-file key (Ctrl-D), so that a shell fed
    /// from a pipe ends with it.
    pub eof_byte: Option<u8>,
}

/// The ports' threads, running.
pub struct ExecRun {
    state: Arc<Mutex<ExecState>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ExecPorts {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nixboot-exec.")
            .tempdir()
            .map_err(|e| Error::io("creating a socket directory", e))?;
        Ok(ExecPorts { dir })
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("port{i}.sock"))
    }

    /// QEMU's arguments: one virtio-serial controller, a port per name, each backed by a
    /// listening socket (`wait=off`: QEMU does not wait for us; the guest's writes block
    /// until we are connected, so nothing is lost).
    pub fn qemu_args(&self, machine: Machine) -> Vec<String> {
        let serial = machine.virtio_device("virtio-serial");
        let mut a = vec!["-device".into(), format!("{serial},id=nbexec")];
        for (i, name) in [STDOUT_PORT, STDERR_PORT, STATUS_PORT].iter().enumerate() {
            let path = crate::qemu::qemu_escape(&self.socket(i).display().to_string());
            a.push("-chardev".into());
            a.push(format!(
                "socket,id=nbexec{i},path={path},server=on,wait=off"
            ));
            a.push("-device".into());
            a.push(format!(
                "virtserialport,bus=nbexec.0,chardev=nbexec{i},name={name}"
            ));
        }
        a
    }

    /// Starts the threads (call right before QEMU is started): the command's stdout to
    /// `out`, its stderr to `err`.
    pub fn start(self, out: Box<dyn Write + Send>, err: Box<dyn Write + Send>) -> ExecRun {
        self.start_with_input(out, err, None)
    }

    /// [`Self::start`], with the user's keys for a guest terminal (`--shell`). The thread
    /// reading `input` is not waited for: it may be blocked on a terminal that never
    /// speaks again.
    pub fn start_with_input(
        self,
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        input: Option<Input>,
    ) -> ExecRun {
        let start = Instant::now();
        let state = Arc::new(Mutex::new(ExecState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let dir = Arc::new(self.dir);
        let mut threads = Vec::new();
        let mut input = input;
        for (i, sink) in [(0, Some(out)), (1, Some(err)), (2, None)] {
            let path = dir.path().join(format!("port{i}.sock"));
            let (stop, state, dir) = (stop.clone(), state.clone(), dir.clone());
            let input = if i == 0 { input.take() } else { None };
            threads.push(std::thread::spawn(move || {
                let _keep = dir;
                let Some(stream) = connect(&path, &stop) else {
                    return;
                };
                if let (Some(input), Ok(to)) = (input, stream.try_clone()) {
                    std::thread::spawn(move || forward(input, to, &state, &stop));
                    return copy(stream, sink.expect("port 0 has a sink"));
                }
                match sink {
                    Some(sink) => copy(stream, sink),
                    None => read_status(stream, &state, start),
                }
            }));
        }
        ExecRun {
            state,
            stop,
            threads,
        }
    }
}

impl ExecRun {
    pub fn state(&self) -> ExecState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After QEMU has exited: the sockets are closed, so the threads end once they have
    /// copied everything QEMU had received.
    pub fn finish(self) -> ExecState {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connects once QEMU has created the socket; gives up when told to stop or after
/// [`CONNECT_TIMEOUT`].
fn connect(path: &std::path::Path, stop: &AtomicBool) -> Option<UnixStream> {
    let start = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(path) {
            return Some(s);
        }
        if stop.load(Ordering::Relaxed) || start.elapsed() > CONNECT_TIMEOUT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Copies to `sink` as the data comes; a sink that stops taking it (a closed pipe) does
/// not stop the draining, or the guest would block.
fn copy(mut from: UnixStream, mut sink: Box<dyn Write + Send>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sink_ok = true;
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if sink_ok => {
                sink_ok = sink.write_all(&buf[..n]).and_then(|_| sink.flush()).is_ok();
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Sends `input` to the guest once the runner has started the command, until either side
/// ends.
fn forward(mut input: Input, mut to: UnixStream, state: &Mutex<ExecState>, stop: &AtomicBool) {
    loop {
        if state.lock().is_ok_and(|s| s.started.is_some()) {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut buf = [0u8; 4096];
    loop {
        match input.reader.read(&mut buf) {
            Ok(0) => {
                if let Some(b) = input.eof_byte {
                    let _ = to.write_all(&[b]);
                }
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn read_status(from: UnixStream, state: &Mutex<ExecState>, start: Instant) {
    for line in std::io::BufReader::new(from).lines() {
        let Ok(line) = line else { break };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match StatusMsg::parse(&line) {
            Some(StatusMsg::Started) => s.started = s.started.or(Some(start.elapsed())),
            Some(StatusMsg::Exit(n)) => s.exit = s.exit.or(Some((n, start.elapsed()))),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_named_ports_on_one_controller() {
        let p = ExecPorts::new().unwrap();
        let a = p.qemu_args(Machine::Pc).join(" ");
        assert!(a.starts_with("-device virtio-serial-pci,id=nbexec "), "{a}");
        let mmio = p.qemu_args(Machine::Microvm).join(" ");
        assert!(
            mmio.starts_with("-device virtio-serial-device,id=nbexec "),
            "{mmio}"
        );
        for (i, name) in [STDOUT_PORT, STDERR_PORT, STATUS_PORT].iter().enumerate() {
            let port = format!("virtserialport,bus=nbexec.0,chardev=nbexec{i},name={name}");
            assert!(a.contains(&port), "{a}");
        }
        assert_eq!(a.matches("server=on,wait=off").count(), 3, "{a}");
    }

    /// The threads against stand-in sockets: output copied whole, status lines read.
    #[test]
    fn threads_copy_output_and_read_the_status() {
        let p = ExecPorts::new().unwrap();
        let listeners: Vec<_> = (0..3)
            .map(|i| std::os::unix::net::UnixListener::bind(p.socket(i)).unwrap())
            .collect();
        let out = SharedBuf::default();
        let run = p.start(Box::new(out.clone()), Box::new(std::io::sink()));
        let mut conns: Vec<UnixStream> = listeners.iter().map(|l| l.accept().unwrap().0).collect();
        let big = vec![b'x'; 1 << 20];
        conns[2].write_all(b"started\n").unwrap();
        conns[0].write_all(&big).unwrap();
        conns[2].write_all(b"exit=3\n").unwrap();
        drop(conns);
        let st = run.finish();
        assert!(st.started.is_some());
        assert_eq!(st.exit.map(|e| e.0), Some(3));
        assert_eq!(out.0.lock().unwrap().len(), big.len());
    }

    /// Terminal mode: the keys go out on the stdout port only after `started`, then the
    /// end-of-file byte when the input ends.
    #[test]
    fn input_waits_for_started_and_ends_with_eof() {
        let p = ExecPorts::new().unwrap();
        let listeners: Vec<_> = (0..3)
            .map(|i| std::os::unix::net::UnixListener::bind(p.socket(i)).unwrap())
            .collect();
        let input = Input {
            reader: Box::new(&b"exit 4\n"[..]),
            eof_byte: Some(4),
        };
        let run = p.start_with_input(
            Box::new(std::io::sink()),
            Box::new(std::io::sink()),
            Some(input),
        );
        let mut conns: Vec<UnixStream> = listeners.iter().map(|l| l.accept().unwrap().0).collect();
        conns[0]
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = Vec::new();
        let early = conns[0].read_to_end(&mut got);
        assert!(
            early.is_err() && got.is_empty(),
            "sent before started: {got:?}"
        );
        conns[2].write_all(b"started\n").unwrap();
        conns[0]
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 7];
        conns[0].read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"exit 4\n");
        conns[0].read_exact(&mut buf[..1]).unwrap();
        assert_eq!(buf[0], 4);
        drop(conns);
        run.finish();
    }

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
