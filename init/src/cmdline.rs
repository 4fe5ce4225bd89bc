//! `/proc/cmdline` -> typed [`Options`] (pure; no I/O).
//!
//! Names: dracut's where dracut has the option (`root=`, `rootfstype=`, `rootflags=`, `ro`,
//! `rw`, `init=`, `rd.timeout=`, `rd.emergency=`, `rd.shell`, `rd.debug`,
//! `rd.driver.blacklist=`), with dracut's meaning; everything else lives under `nixboot.`.
//!
//! We share the command line with the kernel, so keys outside our namespace are ignored
//! silently. An unknown `nixboot.` key or a malformed value of one of our keys becomes a
//! warning (kept in [`Options::warnings`] and logged once the console is up) while the
//! previous value (or the default) stays: a typo must not stop a boot that can still go on.
//! The last duplicate wins, except for the list option `rd.driver.blacklist=`, which adds up
//! (as in dracut).

use std::time::Duration;

/// Bound for every device/tag wait when `rd.timeout=` is absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// virtiofs tag mounted read-only on `/nix/store` when `nixboot.store=` is absent.
pub const DEFAULT_STORE_TAG: &str = "store";
/// virtiofs tag mounted read-only on `/lib/modules` when `nixboot.modules=` is absent.
pub const DEFAULT_MODULES_TAG: &str = "modules";
/// `size=` of the tmpfs root when `nixboot.tmpfs_size=` is absent.
pub const DEFAULT_TMPFS_SIZE: &str = "50%";

/// Everything the init takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `init=`: the next init (absolute path inside the new root).
    pub init: Option<String>,
    /// `root=`.
    pub root: Root,
    /// `rootfstype=`: only meaningful for block roots (kept for them; noted otherwise).
    pub rootfstype: Option<String>,
    /// `rootflags=`: extra mount data for the root filesystem.
    pub rootflags: Option<String>,
    /// `ro` / `rw`; `None` when neither was given (the root is then mounted read-write).
    pub read_only: Option<bool>,
    /// `rd.timeout=SECONDS`: bound of every wait for a device or a virtiofs tag. `0` means
    /// no bound (dracut's meaning), kept as [`Duration::MAX`].
    pub timeout: Duration,
    /// `rd.emergency=`: what to do when the boot fails.
    pub emergency: Emergency,
    /// `nixboot.store=TAG|none`: virtiofs share for `/nix/store`. The default depends on
    /// the root and on the initrd (see `plan`), so "not given" is kept apart.
    pub store: ShareChoice,
    /// `nixboot.modules=TAG|none`: virtiofs share for `/lib/modules`.
    pub modules: ShareChoice,
    /// `nixboot.store_overlay`: the store share becomes the read-only lower layer of an
    /// overlay whose upper layer is a tmpfs, so the booted system can write to /nix/store.
    pub store_overlay: bool,
    /// `rd.driver.blacklist=a,b`: modules of the initrd's list not to load (dracut's name).
    pub driver_blacklist: Vec<String>,
    /// `nixboot.tmpfs_size=`: the `size=` option of the tmpfs root.
    pub tmpfs_size: String,
    /// `rd.debug` / `nixboot.debug`: log the plan and the details of every wait.
    pub debug: bool,
    /// The kernel's `quiet`: the init then prints only warnings, failures and its status
    /// line (serial output is slow in emulated guests; the timings file keeps the detail).
    pub quiet: bool,
    /// Everything after a standalone `--`: handed to the next init untouched.
    pub init_args: Vec<String>,
    /// `nixboot.exec=BASE64` (`nixboot-qemu --exec`): the command to run once booted
    /// (`nixboot_protocol::exec`), decoded.
    pub exec: Option<String>,
    /// `nixboot.cwd=BASE64` (`nixboot-qemu --share-cwd`): where the share tagged `cwd` is
    /// mounted read-write, decoded (an absolute path).
    pub cwd: Option<String>,
    /// `nixboot.verity.*`: a dm-verity store image mounted on /nix/store (verity/options.rs).
    pub verity: crate::verity::options::VerityOptions,
    /// Malformed values of our keys, in command-line order (each value was ignored).
    pub warnings: Vec<String>,
}

/// `nixboot.store=` / `nixboot.modules=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShareChoice {
    /// Not on the command line: the plan picks the default for the kind of root.
    #[default]
    Default,
    Tag(String),
    /// `none`.
    Off,
}

impl ShareChoice {
    /// The tag to mount, given the default for this boot.
    pub fn resolve(&self, default: Option<&str>) -> Option<String> {
        match self {
            ShareChoice::Default => default.map(str::to_string),
            ShareChoice::Tag(t) => Some(t.clone()),
            ShareChoice::Off => None,
        }
    }
}

/// What `root=` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// `root=tmpfs` (also the default): an empty tmpfs, the store comes over virtiofs.
    Tmpfs,
    /// `root=virtiofs:TAG`: the whole root is a virtiofs share.
    Virtiofs(String),
    /// Any other `root=`: a block device.
    Block(BlockSpec),
}

/// How a block root names its device (the forms the kernel and systemd accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockSpec {
    Label(String),
    Uuid(String),
    PartUuid(String),
    PartLabel(String),
    /// `/dev/NAME`: the kernel's name of the device (`/dev/vda1`).
    Path(String),
    /// `MAJ:MIN` or `/dev/block/MAJ:MIN`.
    DevNum(u32, u32),
    /// Forms we do not interpret (`PARTUUID=../PARTNROFF=1`, hex device numbers, ...);
    /// the plan refuses them with a list of the forms that work.
    Other(String),
}

/// The failure action (`rd.emergency=`, dracut's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emergency {
    #[default]
    PowerOff,
    Reboot,
    Halt,
    Shell,
}

impl Emergency {
    /// The spelling used on the command line and in the status line.
    pub fn as_str(self) -> &'static str {
        match self {
            Emergency::PowerOff => "poweroff",
            Emergency::Reboot => "reboot",
            Emergency::Halt => "halt",
            Emergency::Shell => "shell",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "poweroff" => Emergency::PowerOff,
            "reboot" => Emergency::Reboot,
            "halt" => Emergency::Halt,
            "shell" => Emergency::Shell,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Root::Tmpfs => f.write_str("tmpfs"),
            Root::Virtiofs(tag) => write!(f, "virtiofs:{tag}"),
            Root::Block(b) => match b {
                BlockSpec::Label(s) => write!(f, "LABEL={s}"),
                BlockSpec::Uuid(s) => write!(f, "UUID={s}"),
                BlockSpec::PartUuid(s) => write!(f, "PARTUUID={s}"),
                BlockSpec::PartLabel(s) => write!(f, "PARTLABEL={s}"),
                BlockSpec::DevNum(ma, mi) => write!(f, "{ma}:{mi}"),
                BlockSpec::Path(s) | BlockSpec::Other(s) => f.write_str(s),
            },
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            init: None,
            root: Root::Tmpfs,
            rootfstype: None,
            rootflags: None,
            read_only: None,
            timeout: DEFAULT_TIMEOUT,
            emergency: Emergency::PowerOff,
            store: ShareChoice::Default,
            modules: ShareChoice::Default,
            store_overlay: false,
            driver_blacklist: Vec::new(),
            tmpfs_size: DEFAULT_TMPFS_SIZE.to_string(),
            debug: false,
            quiet: false,
            init_args: Vec::new(),
            exec: None,
            cwd: None,
            verity: Default::default(),
            warnings: Vec::new(),
        }
    }
}

/// One command-line parameter after the kernel's tokenising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    /// `None` for a bare word (`ro`), `Some("")` for `key=`.
    pub value: Option<String>,
}

/// Splits a command line the way the kernel's `next_arg` does: whitespace separates
/// parameters except inside double quotes, the key ends at the first `=`. Quotes only group;
/// they are removed wherever they appear in the token. Returns the parameters before a
/// standalone `--` and the words after it (rejoined as `key=value` like the kernel does for
/// init's argv).
pub fn tokenize(cmdline: &str) -> (Vec<Param>, Vec<String>) {
    let mut params = Vec::new();
    let mut after_dashes: Option<Vec<String>> = None;
    let mut chars = cmdline.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        // One token: up to unquoted whitespace.
        let mut token = String::new();
        let mut in_quote = false;
        let mut saw_quote = false;
        for c in chars.by_ref() {
            if c == '"' {
                in_quote = !in_quote;
                saw_quote = true;
                continue;
            }
            if c.is_whitespace() && !in_quote {
                break;
            }
            token.push(c);
        }
        if let Some(words) = after_dashes.as_mut() {
            words.push(token);
            continue;
        }
        // Only a bare, unquoted `--` ends the parameters, as in the kernel's parse_args.
        if token == "--" && !saw_quote {
            after_dashes = Some(Vec::new());
            continue;
        }
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (token, None),
        };
        params.push(Param { key, value });
    }
    (params, after_dashes.unwrap_or_default())
}

/// Parses a whole command line. Never fails: see the module documentation.
pub fn parse(cmdline: &str) -> Options {
    let (params, init_args) = tokenize(cmdline);
    let mut o = Options {
        init_args,
        ..Options::default()
    };
    for Param { key, value } in params {
        apply(&mut o, &key, value.as_deref());
    }
    o
}

fn apply(o: &mut Options, key: &str, value: Option<&str>) {
    if let Err(msg) = apply_one(o, key, value) {
        o.warnings.push(format!("{key}: {msg}"));
    }
}

/// Applies one parameter; `Err` is the warning for a malformed value of one of our keys.
fn apply_one(o: &mut Options, key: &str, value: Option<&str>) -> Result<(), String> {
    if key.starts_with("rd.") {
        return apply_dracut(o, key, value);
    }
    if key.starts_with("nixboot.") {
        return apply_nixboot(o, key, value);
    }
    match key {
        "init" => match value {
            Some(v) if v.starts_with('/') => o.init = Some(v.to_string()),
            Some(v) => return Err(format!("{v:?} is not an absolute path, ignored")),
            None => return Err("needs a value (init=/nix/store/...-system/init), ignored".into()),
        },
        "root" => {
            match value {
                Some(v) => o.root = parse_root(v)?,
                None => return Err(
                    "needs a value (root=tmpfs, root=virtiofs:TAG, root=LABEL=..., ...), ignored"
                        .into(),
                ),
            }
        }
        "rootfstype" | "rootflags" => match value {
            Some(v) if !v.is_empty() => {
                let slot = if key == "rootfstype" {
                    &mut o.rootfstype
                } else {
                    &mut o.rootflags
                };
                *slot = Some(v.to_string());
            }
            _ => return Err("needs a value, ignored".into()),
        },
        // The kernel's own switch; it takes no value there either (a value is ignored).
        "quiet" => o.quiet = true,
        "ro" | "rw" => match value {
            None => o.read_only = Some(key == "ro"),
            Some(v) => return Err(format!("takes no value (got {v:?}), ignored")),
        },
        // Not ours: the kernel's, or the next init's.
        _ => {}
    }
    Ok(())
}

/// dracut's `rd.` keys that we honour; the others are not ours.
fn apply_dracut(o: &mut Options, key: &str, value: Option<&str>) -> Result<(), String> {
    let shown = value.unwrap_or("");
    match key {
        // dracut: 0 means wait forever.
        "rd.timeout" => match shown.parse::<u64>() {
            Ok(0) => o.timeout = Duration::MAX,
            Ok(s) => o.timeout = Duration::from_secs(s),
            Err(_) => {
                return Err(format!(
                    "{shown:?} is not a whole number of seconds, keeping {}",
                    describe_timeout(o.timeout)
                ))
            }
        },
        "rd.emergency" => match value.and_then(Emergency::parse) {
            Some(e) => o.emergency = e,
            None => {
                return Err(format!(
                    "{shown:?} is not one of poweroff, reboot, halt, shell; keeping {}",
                    o.emergency.as_str()
                ))
            }
        },
        // dracut's switch for the emergency shell; rd.shell=0 takes the shell away again.
        "rd.shell" => match parse_bool(value) {
            Some(true) => o.emergency = Emergency::Shell,
            Some(false) if o.emergency == Emergency::Shell => o.emergency = Emergency::PowerOff,
            Some(false) => {}
            None => return Err(format!("{shown:?} is not a boolean, ignored")),
        },
        "rd.driver.blacklist" => match value {
            Some(v) if !v.is_empty() => o.driver_blacklist.extend(
                v.split(',')
                    .filter(|m| !m.is_empty())
                    // The kernel treats - and _ in module names alike.
                    .map(|m| m.replace('-', "_")),
            ),
            _ => return Err("needs module names (rd.driver.blacklist=a,b), ignored".into()),
        },
        "rd.debug" => match parse_bool(value) {
            Some(b) => o.debug = b,
            None => return Err(format!("{shown:?} is not a boolean, ignored")),
        },
        _ => {}
    }
    Ok(())
}

/// Our own `nixboot.` keys.
fn apply_nixboot(o: &mut Options, key: &str, value: Option<&str>) -> Result<(), String> {
    let shown = value.unwrap_or("");
    match key {
        "nixboot.store" => o.store = parse_share(value)?,
        "nixboot.modules" => o.modules = parse_share(value)?,
        "nixboot.store_overlay" => match parse_bool(value) {
            Some(b) => o.store_overlay = b,
            None => return Err(format!("{shown:?} is not a boolean, ignored")),
        },
        "nixboot.tmpfs_size" => match value {
            Some(v) if valid_tmpfs_size(v) => o.tmpfs_size = v.to_string(),
            _ => {
                return Err(format!(
                    "{shown:?} is not a tmpfs size (N, Nk, Nm, Ng or N%), keeping {}",
                    o.tmpfs_size
                ))
            }
        },
        "nixboot.debug" => match parse_bool(value) {
            Some(b) => o.debug = b,
            None => return Err(format!("{shown:?} is not a boolean, ignored")),
        },
        "nixboot.exec" => match nixboot_protocol::exec::decode_command(shown) {
            Ok(c) if !c.is_empty() => o.exec = Some(c),
            Ok(_) => return Err("an empty command, ignored".into()),
            Err(e) => return Err(format!("not a command in base64 ({e}), ignored")),
        },
        "nixboot.cwd" => match nixboot_protocol::exec::decode_command(shown) {
            Ok(p) if p.starts_with('/') && p.len() > 1 && !p.contains('\0') => o.cwd = Some(p),
            Ok(p) => return Err(format!("{p:?} is not an absolute path below /, ignored")),
            Err(e) => return Err(format!("not a path in base64 ({e}), ignored")),
        },
        k if k.starts_with("nixboot.verity.") => {
            return crate::verity::options::apply(&mut o.verity, k, value)
        }
        // `nixboot-qemu --shell`'s terminal: the closure's agent reads it, not the init.
        "nixboot.tty" => {}
        // Our namespace: a typo here would otherwise go unnoticed.
        _ => {
            return Err(format!(
                "unknown option (known: {}), ignored",
                NIXBOOT_KEYS.join(", ")
            ))
        }
    }
    Ok(())
}

/// Every `nixboot.` key, for the warning about an unknown one.
const NIXBOOT_KEYS: &[&str] = &[
    "nixboot.store",
    "nixboot.modules",
    "nixboot.store_overlay",
    "nixboot.tmpfs_size",
    "nixboot.debug",
    "nixboot.exec",
    "nixboot.cwd",
    "nixboot.verity.*",
    "nixboot.tty",
];

/// dracut's booleans: a bare key is `1`.
fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v {
        None | Some("1" | "yes" | "true" | "on") => Some(true),
        Some("0" | "no" | "false" | "off") => Some(false),
        Some(_) => None,
    }
}

/// `30s`, or `no bound` for rd.timeout=0.
pub fn describe_timeout(t: Duration) -> String {
    if t == Duration::MAX {
        "no bound".into()
    } else {
        format!("{}s", t.as_secs())
    }
}

type MakeSpec = fn(String) -> BlockSpec;

pub(crate) fn parse_root(v: &str) -> Result<Root, String> {
    if v == "tmpfs" {
        return Ok(Root::Tmpfs);
    }
    if let Some(tag) = v.strip_prefix("virtiofs:") {
        return if tag.is_empty() {
            Err("root=virtiofs: needs a tag (root=virtiofs:TAG), ignored".into())
        } else {
            Ok(Root::Virtiofs(tag.to_string()))
        };
    }
    if v.is_empty() {
        return Err("empty value, ignored".into());
    }
    let tagged: [(&str, MakeSpec); 4] = [
        ("LABEL=", BlockSpec::Label),
        ("UUID=", BlockSpec::Uuid),
        ("PARTUUID=", BlockSpec::PartUuid),
        ("PARTLABEL=", BlockSpec::PartLabel),
    ];
    for (prefix, make) in tagged {
        if let Some(s) = v.strip_prefix(prefix) {
            if s.is_empty() {
                return Err(format!("root={prefix} needs a value, ignored"));
            }
            // The kernel's PARTUUID=.../PARTNROFF=N form: not supported, say so at plan time.
            if prefix == "PARTUUID=" && s.contains('/') {
                return Ok(Root::Block(BlockSpec::Other(v.to_string())));
            }
            return Ok(Root::Block(make(s.to_string())));
        }
    }
    // There is no udev in the initrd, so there are no /dev/disk/by-* links: read them as
    // what they stand for (udev escapes unusual bytes as \xHH in these names).
    let by: [(&str, MakeSpec); 4] = [
        ("/dev/disk/by-label/", BlockSpec::Label),
        ("/dev/disk/by-uuid/", BlockSpec::Uuid),
        ("/dev/disk/by-partuuid/", BlockSpec::PartUuid),
        ("/dev/disk/by-partlabel/", BlockSpec::PartLabel),
    ];
    for (prefix, make) in by {
        if let Some(s) = v.strip_prefix(prefix) {
            if s.is_empty() || s.contains('/') {
                return Ok(Root::Block(BlockSpec::Other(v.to_string())));
            }
            return Ok(Root::Block(make(unescape_udev(s))));
        }
    }
    if let Some(n) = v.strip_prefix("/dev/block/") {
        if let Some(d) = parse_devnum(n) {
            return Ok(Root::Block(d));
        }
    }
    if let Some(name) = v.strip_prefix("/dev/") {
        // /dev/NAME only: deeper paths (/dev/mapper/x, /dev/disk/by-path/...) are udev's.
        if !name.is_empty() && !name.contains('/') {
            return Ok(Root::Block(BlockSpec::Path(v.to_string())));
        }
        return Ok(Root::Block(BlockSpec::Other(v.to_string())));
    }
    Ok(Root::Block(
        parse_devnum(v).unwrap_or_else(|| BlockSpec::Other(v.to_string())),
    ))
}

/// `MAJ:MIN` in decimal.
fn parse_devnum(v: &str) -> Option<BlockSpec> {
    let (ma, mi) = v.split_once(':')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    Some(BlockSpec::DevNum(num(ma)?, num(mi)?))
}

/// udev's `\xHH` escapes in /dev/disk/by-* names (a space in a label is `\x20`).
fn unescape_udev(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `TAG` or `none`. virtiofs tags are at most 36 bytes (the device's tag field).
fn parse_share(v: Option<&str>) -> Result<ShareChoice, String> {
    match v {
        Some("none") => Ok(ShareChoice::Off),
        Some(t) if !t.is_empty() && t.len() <= 36 => Ok(ShareChoice::Tag(t.to_string())),
        Some(t) if !t.is_empty() => Err(format!(
            "tag {t:?} is longer than the 36 bytes virtiofs allows, ignored"
        )),
        _ => Err("needs a virtiofs tag or none, ignored".into()),
    }
}

/// What tmpfs accepts for `size=`: a number with an optional k/m/g (any case) or % suffix.
fn valid_tmpfs_size(v: &str) -> bool {
    let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    let suffix_len = v.len() - digits.len();
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && suffix_len <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str =
        "root=tmpfs console=ttyS0,115200 console=hvc0 init=/nix/store/abc-nixos-system-x/init";

    fn p(k: &str, v: Option<&str>) -> Param {
        Param {
            key: k.into(),
            value: v.map(Into::into),
        }
    }

    #[test]
    fn exec_carries_a_base64_command() {
        let param = nixboot_protocol::exec::cmdline_param("echo 'a b'; exit 3");
        let o = parse(&format!("init=/x {param}"));
        assert_eq!(o.exec.as_deref(), Some("echo 'a b'; exit 3"));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        let bad = parse("nixboot.exec=not*base64");
        assert_eq!(bad.exec, None);
        assert!(
            bad.warnings[0].starts_with("nixboot.exec: not a command"),
            "{:?}",
            bad.warnings
        );
        assert!(!parse("nixboot.exec=").warnings.is_empty());
        let cwd = nixboot_protocol::exec::cwd_param("/home/me/src tree");
        assert_eq!(parse(&cwd).cwd.as_deref(), Some("/home/me/src tree"));
        let relative = nixboot_protocol::exec::cwd_param("src");
        assert_eq!(parse(&relative).cwd, None);
        assert_eq!(parse(&nixboot_protocol::exec::cwd_param("/")).cwd, None);
    }

    #[test]
    fn quiet_is_the_kernel_switch() {
        assert!(parse("console=ttyS0 quiet init=/x").quiet);
        assert!(!parse("console=ttyS0 init=/x").quiet);
        // After `--` it belongs to the next init.
        assert!(!parse("init=/x -- quiet").quiet);
    }

    #[test]
    fn seed_command_line() {
        let o = parse(SEED);
        assert_eq!(
            o.init.as_deref(),
            Some("/nix/store/abc-nixos-system-x/init")
        );
        assert_eq!(o.root, Root::Tmpfs);
        assert_eq!(o.store, ShareChoice::Default);
        assert_eq!(o.modules, ShareChoice::Default);
        assert!(!o.store_overlay);
        assert_eq!(o.timeout, Duration::from_secs(30));
        assert_eq!(o.emergency, Emergency::PowerOff);
        assert_eq!(o.tmpfs_size, "50%");
        assert!(!o.debug);
        assert!(o.init_args.is_empty());
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        // The kernel's own keys are left alone.
        let (params, _) = tokenize(SEED);
        assert_eq!(params[1], p("console", Some("ttyS0,115200")));
    }

    #[test]
    fn empty_command_line_gives_defaults() {
        assert_eq!(parse(""), Options::default());
        assert_eq!(parse("  \n"), Options::default());
        assert_eq!(tokenize(""), (vec![], vec![]));
    }

    #[test]
    fn quotes_group_and_are_removed() {
        let (params, _) = tokenize(r#"a="x y" "b=c d" e=f"g h"i plain"#);
        assert_eq!(
            params,
            vec![
                p("a", Some("x y")),
                p("b", Some("c d")),
                p("e", Some("fg hi")),
                p("plain", None)
            ]
        );
        let o = parse(r#"init="/nix/store/x y/init" rootflags="a=1,b=2""#);
        assert_eq!(o.init.as_deref(), Some("/nix/store/x y/init"));
        assert_eq!(o.rootflags.as_deref(), Some("a=1,b=2"));
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        let (params, _) = tokenize(r#"a="x y z"#);
        assert_eq!(params, vec![p("a", Some("x y z"))]);
    }

    #[test]
    fn double_dash_starts_init_argv() {
        let o = parse(r#"init=/x/init ro -- hello  world init=/y a="b c" --"#);
        assert_eq!(o.init.as_deref(), Some("/x/init"));
        assert_eq!(o.read_only, Some(true));
        assert_eq!(o.init_args, ["hello", "world", "init=/y", "a=b c", "--"]);
        // A `--` glued to something, or quoted, is an ordinary word.
        let o = parse(r#"a--b "--" x"#);
        assert!(o.init_args.is_empty());
        assert_eq!(parse("--").init_args, Vec::<String>::new());
    }

    #[test]
    fn last_duplicate_wins() {
        let o = parse("init=/a init=/b ro rw rd.timeout=5 rd.timeout=7 nixboot.store=x nixboot.store=y rd.emergency=reboot rd.emergency=halt");
        assert_eq!(o.init.as_deref(), Some("/b"));
        assert_eq!(o.read_only, Some(false));
        assert_eq!(o.timeout, Duration::from_secs(7));
        assert_eq!(o.store, ShareChoice::Tag("y".into()));
        assert_eq!(o.emergency, Emergency::Halt);
    }

    #[test]
    fn malformed_values_warn_and_keep_the_previous_value() {
        let o = parse(
            "rd.timeout=5 rd.timeout=soon rd.emergency=explode init=relative/init root= \
             nixboot.tmpfs_size=lots nixboot.store= ro=1 rd.debug=maybe root=virtiofs:",
        );
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.emergency, Emergency::PowerOff);
        assert_eq!(o.init, None);
        assert_eq!(o.root, Root::Tmpfs);
        assert_eq!(o.tmpfs_size, "50%");
        assert_eq!(o.store, ShareChoice::Default);
        assert_eq!(o.read_only, None);
        assert!(!o.debug);
        assert_eq!(o.warnings.len(), 9, "{:#?}", o.warnings);
        assert!(
            o.warnings[0].starts_with("rd.timeout: \"soon\""),
            "{}",
            o.warnings[0]
        );
        assert!(o.warnings.iter().any(|w| w.starts_with("init:")));
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let o =
            parse("splash loglevel=3 systemd.unit=rescue.target foo.bar=\"x y\" 8250.nr_uarts=1");
        assert_eq!(
            o,
            Options::default(),
            "unknown keys must not change anything nor warn"
        );
    }

    #[test]
    fn roots() {
        assert_eq!(
            parse("root=virtiofs:rootfs").root,
            Root::Virtiofs("rootfs".into())
        );
        assert_eq!(
            parse("root=LABEL=nixos").root,
            Root::Block(BlockSpec::Label("nixos".into()))
        );
        assert_eq!(
            parse("root=UUID=1234-abcd").root,
            Root::Block(BlockSpec::Uuid("1234-abcd".into()))
        );
        assert_eq!(
            parse("root=PARTUUID=0a-01").root,
            Root::Block(BlockSpec::PartUuid("0a-01".into()))
        );
        assert_eq!(
            parse("root=/dev/vda1").root,
            Root::Block(BlockSpec::Path("/dev/vda1".into()))
        );
        assert_eq!(
            parse("root=08:01").root,
            Root::Block(BlockSpec::DevNum(8, 1))
        );
        assert_eq!(
            parse("root=/dev/block/254:1").root,
            Root::Block(BlockSpec::DevNum(254, 1))
        );
        assert_eq!(
            parse("root=PARTLABEL=root").root,
            Root::Block(BlockSpec::PartLabel("root".into()))
        );
        for other in [
            "0801",
            "/dev/mapper/vg-root",
            "PARTUUID=ab-01/PARTNROFF=1",
            "8:x",
        ] {
            assert_eq!(
                parse(&format!("root={other}")).root,
                Root::Block(BlockSpec::Other(other.into())),
                "{other}"
            );
        }
        // An empty LABEL= is a warning, not a root.
        let o = parse("root=LABEL=");
        assert_eq!((o.root, o.warnings.len()), (Root::Tmpfs, 1));
        assert_eq!(parse("root=LABEL=nixos").root.to_string(), "LABEL=nixos");
    }

    #[test]
    fn our_options() {
        let o = parse(
            "rd.timeout=3 rd.emergency=shell nixboot.store=nix nixboot.modules=none \
             nixboot.tmpfs_size=2G rootfstype=ext4 rootflags=noatime nixboot.debug",
        );
        assert_eq!(o.timeout, Duration::from_secs(3));
        assert_eq!(o.emergency, Emergency::Shell);
        assert_eq!(o.store, ShareChoice::Tag("nix".into()));
        assert_eq!(o.modules, ShareChoice::Off);
        assert_eq!(o.tmpfs_size, "2G");
        assert_eq!(o.rootfstype.as_deref(), Some("ext4"));
        assert_eq!(o.rootflags.as_deref(), Some("noatime"));
        assert!(o.debug);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(parse("rd.debug").debug);
        assert!(!parse("rd.debug nixboot.debug=0").debug);
        assert_eq!(parse("nixboot.store=none").store, ShareChoice::Off);
        // dracut: 0 is no bound at all.
        assert_eq!(parse("rd.timeout=0").timeout, Duration::MAX);
        assert_eq!(describe_timeout(Duration::MAX), "no bound");
        assert_eq!(
            parse("rd.timeout=18446744073709551615").timeout,
            Duration::from_secs(u64::MAX)
        );
        assert_eq!(parse("rd.timeout=-1").warnings.len(), 1);
    }

    #[test]
    fn tmpfs_sizes() {
        for ok in ["50%", "512m", "2G", "1048576", "1k"] {
            assert!(valid_tmpfs_size(ok), "{ok}");
        }
        for bad in ["", "%", "G", "2GG", "-1", "1.5G", "50%%", "size=1G"] {
            assert!(!valid_tmpfs_size(bad), "{bad}");
        }
    }

    #[test]
    fn long_tags_are_refused() {
        let long = "x".repeat(37);
        let o = parse(&format!("nixboot.store={long}"));
        assert_eq!(o.store, ShareChoice::Default);
        assert_eq!(o.warnings.len(), 1);
    }

    #[test]
    fn udev_links_are_read_as_what_they_stand_for() {
        assert_eq!(
            parse("root=/dev/disk/by-label/my\\x20root").root,
            Root::Block(BlockSpec::Label("my root".into()))
        );
        assert_eq!(
            parse("root=/dev/disk/by-uuid/0a1b-2c3d").root,
            Root::Block(BlockSpec::Uuid("0a1b-2c3d".into()))
        );
        assert_eq!(
            parse("root=/dev/disk/by-partuuid/1234abcd-01").root,
            Root::Block(BlockSpec::PartUuid("1234abcd-01".into()))
        );
        assert_eq!(
            parse("root=/dev/disk/by-partlabel/nixos").root,
            Root::Block(BlockSpec::PartLabel("nixos".into()))
        );
        assert_eq!(
            parse("root=/dev/disk/by-path/pci-0000:00:04.0").root,
            Root::Block(BlockSpec::Other(
                "/dev/disk/by-path/pci-0000:00:04.0".into()
            ))
        );
        assert_eq!(unescape_udev("a\\x2fb\\xzz\\"), "a/b\\xzz\\");
    }

    #[test]
    fn dracut_shell_and_blacklist() {
        assert_eq!(parse("rd.shell").emergency, Emergency::Shell);
        assert_eq!(parse("rd.shell=1").emergency, Emergency::Shell);
        assert_eq!(parse("rd.shell rd.shell=0").emergency, Emergency::PowerOff);
        assert_eq!(
            parse("rd.emergency=reboot rd.shell=0").emergency,
            Emergency::Reboot
        );
        assert_eq!(parse("rd.shell=maybe").warnings.len(), 1);
        // A list option adds up instead of the last one winning (as in dracut).
        let o = parse("rd.driver.blacklist=virtio-blk,fuse rd.driver.blacklist=overlay");
        assert_eq!(o.driver_blacklist, ["virtio_blk", "fuse", "overlay"]);
        assert_eq!(parse("rd.driver.blacklist").warnings.len(), 1);
    }

    #[test]
    fn store_overlay_and_unknown_nixboot_keys() {
        assert!(parse("nixboot.store_overlay").store_overlay);
        assert!(!parse("nixboot.store_overlay nixboot.store_overlay=0").store_overlay);
        let o = parse("nixboot.stroe=x nixboot.store_overlay=sometimes");
        assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
        assert!(o.warnings[0].starts_with("nixboot.stroe: unknown option"));
        assert!(o.warnings[0].contains("nixboot.store,"));
        // Other namespaces belong to the kernel, systemd, dracut: no warning.
        assert!(parse("rd.luks.uuid=x systemd.log_level=debug")
            .warnings
            .is_empty());
    }
}
