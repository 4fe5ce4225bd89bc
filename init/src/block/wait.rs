//! The bounded wait for the block device `root=` names: scanning /sys/class/block and
//! reading superblocks and partition tables ourselves (there is no udev here).

use super::probe::{self as blockdev, Candidate, FsInfo, Needs, PartTable};
use super::read_node;
use crate::cmdline::{describe_timeout, BlockSpec, Root};
use crate::failure::Failure;
use crate::log;
use crate::wait::{poll, Try, WaitError};
use rustix::fs::FileType;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SYS_BLOCK: &str = "/sys/class/block";

/// The device a wait found.
#[derive(Debug, Clone)]
pub struct Found {
    /// `/dev/vda1`.
    pub node: String,
    pub candidate: Candidate,
}

fn read_sys(name: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("{SYS_BLOCK}/{name}/{file}")).ok()
}

/// Whether `/dev/<devname>` exists as a block device: devtmpfs creates the node right
/// after the sysfs entry, so for a moment one can exist without the other.
fn node_ready(node: &str) -> bool {
    rustix::fs::stat(node).is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_block_device())
}

/// Remembers what was read from each device, so a long wait does not re-read superblocks.
#[derive(Default)]
struct Scanner {
    fs: HashMap<(String, (u32, u32)), Option<FsInfo>>,
    tables: HashMap<(String, (u32, u32)), PartTable>,
}

/// One device in /sys/class/block.
struct Entry {
    name: String,
    dev: (u32, u32),
    node: String,
    size_zero: bool,
    partition: Option<u32>,
    /// For a partition: the whole disk's sysfs name.
    parent: Option<String>,
}

fn list_entries() -> Vec<Entry> {
    let Ok(dir) = std::fs::read_dir(SYS_BLOCK) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dev = blockdev::parse_dev(&read_sys(&name, "dev")?)?;
            let uevent = read_sys(&name, "uevent").unwrap_or_default();
            let devname = blockdev::uevent_devname(&uevent)
                .unwrap_or(&name)
                .to_string();
            let partition = read_sys(&name, "partition").and_then(|p| p.trim().parse().ok());
            // /sys/class/block/vda1 -> ../../devices/.../block/vda/vda1: the disk is the
            // directory above a partition.
            let parent = partition.and_then(|_| {
                let real = std::fs::canonicalize(e.path()).ok()?;
                Some(real.parent()?.file_name()?.to_string_lossy().into_owned())
            });
            Some(Entry {
                size_zero: read_sys(&name, "size").is_some_and(|s| s.trim() == "0"),
                node: format!("/dev/{devname}"),
                name,
                dev,
                partition,
                parent,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl Scanner {
    /// The devices whose node exists, with what `needs` asks for filled in.
    fn scan(&mut self, needs: Needs) -> Vec<(String, Candidate)> {
        let entries = list_entries();
        let mut out = Vec::new();
        for e in &entries {
            if !node_ready(&e.node) {
                continue;
            }
            let mut c = Candidate {
                name: e.name.clone(),
                dev: e.dev,
                ..Candidate::default()
            };
            let key = (e.name.clone(), e.dev);
            if needs == Needs::Superblock && !e.size_zero {
                if !self.fs.contains_key(&key) {
                    if let Some(mut read) = read_node(&e.node) {
                        self.fs.insert(key.clone(), blockdev::probe_fs(&mut read));
                    }
                }
                c.fs = self.fs.get(&key).cloned().flatten();
            }
            if needs == Needs::PartitionTable {
                if let (Some(n), Some(parent)) = (e.partition, &e.parent) {
                    if let Some(disk) = entries.iter().find(|d| d.name == *parent) {
                        let dkey = (disk.name.clone(), disk.dev);
                        if !self.tables.contains_key(&dkey) {
                            if let Some(mut read) = read_node(&disk.node) {
                                self.tables
                                    .insert(dkey.clone(), blockdev::probe_table(&mut read));
                            }
                        }
                        match self.tables.get(&dkey).unwrap_or(&PartTable::None) {
                            PartTable::Gpt(parts) => {
                                if let Some(p) = parts.iter().find(|p| p.number == n) {
                                    c.part_uuid = Some(p.uuid.clone());
                                    c.part_label = p.name.clone();
                                }
                            }
                            PartTable::Mbr { signature } => {
                                c.part_uuid = Some(blockdev::mbr_partuuid(*signature, n));
                            }
                            PartTable::None => {}
                        }
                    }
                }
            }
            out.push((e.node.clone(), c));
        }
        out
    }
}

fn list(seen: &[(String, Candidate)]) -> String {
    if seen.is_empty() {
        "none".into()
    } else {
        seen.iter()
            .map(|(_, c)| blockdev::describe(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Waits (bounded) for the block device `spec` names.
pub fn wait_block(
    step: &'static str,
    spec: &BlockSpec,
    bound: Duration,
    debug: bool,
) -> Result<Found, Failure> {
    let start = Instant::now();
    let shown = Root::Block(spec.clone()).to_string();
    let needs = blockdev::needs(spec);
    let mut scanner = Scanner::default();
    let waited = poll(bound, || {
        let seen = scanner.scan(needs);
        let hits: Vec<&(String, Candidate)> = seen
            .iter()
            .filter(|(_, c)| blockdev::matches(spec, c))
            .collect();
        match hits.first() {
            Some((node, c)) => {
                let others: Vec<&str> = hits[1..].iter().map(|(n, _)| n.as_str()).collect();
                Try::Ready((node.clone(), c.clone(), others.join(", ")))
            }
            None => Try::NotYet(seen),
        }
    });
    match waited {
        Ok(r) => {
            let (node, candidate, others) = r.value;
            if !others.is_empty() {
                log::notice(
                    step,
                    &format!("WARNING: more devices match {shown} ({others}); using {node}"),
                );
            }
            if debug {
                log::log(
                    step,
                    &format!(
                        "{node} matched {shown} after {:.1} ms ({} scans of {SYS_BLOCK})",
                        r.waited.as_secs_f64() * 1000.0,
                        r.attempts
                    ),
                );
            }
            Ok(Found { node, candidate })
        }
        Err(
            WaitError::TimedOut { last, attempts }
            | WaitError::Fatal {
                error: last,
                attempts,
            },
        ) => Err(timed_out(step, spec, bound, start, attempts, &last)),
    }
}

/// The timeout failure: what was scanned, what was there, what to check for this kind of
/// name.
fn timed_out(
    step: &'static str,
    spec: &BlockSpec,
    bound: Duration,
    start: Instant,
    attempts: u32,
    last: &[(String, Candidate)],
) -> Failure {
    let shown = Root::Block(spec.clone()).to_string();
    let what = match spec {
        BlockSpec::Label(_) | BlockSpec::Uuid(_) => {
            "LABEL and UUID are read from each filesystem's superblock (blkid on the \
             host shows them; labels are case-sensitive)"
        }
        BlockSpec::PartUuid(_) | BlockSpec::PartLabel(_) => {
            "PARTUUID and PARTLABEL are read from the disk's GPT (or MBR signature: \
             PARTUUID=SSSSSSSS-NN); blkid on the host shows them"
        }
        _ => "the device name is the kernel's (vda1, sda2, nvme0n1p1)",
    };
    Failure::new(
        step,
        format!(
            "no block device {shown} appeared within {}",
            describe_timeout(bound)
        ),
    )
    .tried(format!(
        "scanned {SYS_BLOCK} {attempts} times over {:.1}s\nblock devices present: {}",
        start.elapsed().as_secs_f64(),
        list(last)
    ))
    .check(format!(
        "is the disk attached (QEMU: -drive if=virtio,...)? is its driver (virtio_blk, \
         nvme, ahci+sd_mod, ...) in the initrd (mkinitrd --module) and loaded above? \
         {what}; rd.timeout= sets the bound"
    ))
}
