//! `/proc/cmdline` -> typed [`Options`] (pure; no I/O).
//!
//! We share the command line with the kernel, so unknown keys are ignored silently, and a
//! malformed value of one of OUR keys becomes a warning (kept in [`Options::warnings`] and
//! logged once the console is up) while the previous value (or the default) stays: a typo on
//! the command line must not stop a boot that can still go on.

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
    /// `rd.timeout=SECONDS`: bound of every wait for a device or a virtiofs tag.
    pub timeout: Duration,
    /// `rd.emergency=`: what to do when the boot fails.
    pub emergency: Emergency,
    /// `nixboot.store=TAG|none`: virtiofs tag for `/nix/store`; `None` = do not mount.
    pub store_tag: Option<String>,
    /// `nixboot.modules=TAG|none`: virtiofs tag for `/lib/modules`; `None` = do not mount.
    pub modules_tag: Option<String>,
    /// `nixboot.tmpfs_size=`: the `size=` option of the tmpfs root.
    pub tmpfs_size: String,
    /// `rd.debug` / `nixboot.debug`: log the plan and the details of every wait.
    pub debug: bool,
    /// Everything after a standalone `--`: handed to the next init untouched.
    pub init_args: Vec<String>,
    /// Malformed values of our keys, in command-line order (each value was ignored).
    pub warnings: Vec<String>,
}

/// What `root=` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// `root=tmpfs` (also the default): an empty tmpfs, the store comes over virtiofs.
    Tmpfs,
    /// `root=virtiofs:TAG`: the whole root is a virtiofs share.
    Virtiofs(String),
    /// Any other `root=`: a block device. Parsed now, refused by the plan until block
    /// roots are implemented.
    Block(BlockSpec),
}

/// How a block root names its device (the forms the kernel and systemd accept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockSpec {
    Label(String),
    Uuid(String),
    PartUuid(String),
    PartLabel(String),
    /// `/dev/...`
    Path(String),
    /// Kernel-only forms we do not interpret (`sda1`, `08:01`, ...).
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
            store_tag: Some(DEFAULT_STORE_TAG.to_string()),
            modules_tag: Some(DEFAULT_MODULES_TAG.to_string()),
            tmpfs_size: DEFAULT_TMPFS_SIZE.to_string(),
            debug: false,
            init_args: Vec::new(),
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
    let shown = value.unwrap_or("");
    match key {
        "init" => match value {
            Some(v) if v.starts_with('/') => o.init = Some(v.to_string()),
            Some(v) => return Err(format!("{v:?} is not an absolute path, ignored")),
            None => return Err("needs a value (init=/nix/store/...-system/init), ignored".into()),
        },
        "root" => match value {
            Some(v) => o.root = parse_root(v)?,
            None => return Err("needs a value (root=tmpfs or root=virtiofs:TAG), ignored".into()),
        },
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
        "ro" | "rw" => match value {
            None => o.read_only = Some(key == "ro"),
            Some(v) => return Err(format!("takes no value (got {v:?}), ignored")),
        },
        "rd.timeout" => match shown.parse::<u64>() {
            Ok(s) => o.timeout = Duration::from_secs(s),
            Err(_) => {
                return Err(format!(
                    "{shown:?} is not a whole number of seconds, keeping {}s",
                    o.timeout.as_secs()
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
        "nixboot.store" => o.store_tag = parse_tag(value)?,
        "nixboot.modules" => o.modules_tag = parse_tag(value)?,
        "nixboot.tmpfs_size" => match value {
            Some(v) if valid_tmpfs_size(v) => o.tmpfs_size = v.to_string(),
            _ => {
                return Err(format!(
                    "{shown:?} is not a tmpfs size (N, Nk, Nm, Ng or N%), keeping {}",
                    o.tmpfs_size
                ))
            }
        },
        "rd.debug" | "nixboot.debug" => match value {
            None | Some("1" | "yes" | "true" | "on") => o.debug = true,
            Some("0" | "no" | "false" | "off") => o.debug = false,
            Some(v) => return Err(format!("{v:?} is not a boolean, ignored")),
        },
        // Not ours: the kernel's, or the next init's.
        _ => {}
    }
    Ok(())
}

fn parse_root(v: &str) -> Result<Root, String> {
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
    let spec = if let Some(s) = v.strip_prefix("LABEL=") {
        BlockSpec::Label(s.to_string())
    } else if let Some(s) = v.strip_prefix("UUID=") {
        BlockSpec::Uuid(s.to_string())
    } else if let Some(s) = v.strip_prefix("PARTUUID=") {
        BlockSpec::PartUuid(s.to_string())
    } else if let Some(s) = v.strip_prefix("PARTLABEL=") {
        BlockSpec::PartLabel(s.to_string())
    } else if v.starts_with("/dev/") {
        BlockSpec::Path(v.to_string())
    } else {
        BlockSpec::Other(v.to_string())
    };
    Ok(Root::Block(spec))
}

/// `TAG` or `none`. virtiofs tags are at most 36 bytes (the device's tag field).
fn parse_tag(v: Option<&str>) -> Result<Option<String>, String> {
    match v {
        Some("none") => Ok(None),
        Some(t) if !t.is_empty() && t.len() <= 36 => Ok(Some(t.to_string())),
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
    fn seed_command_line() {
        let o = parse(SEED);
        assert_eq!(
            o.init.as_deref(),
            Some("/nix/store/abc-nixos-system-x/init")
        );
        assert_eq!(o.root, Root::Tmpfs);
        assert_eq!(o.store_tag.as_deref(), Some("store"));
        assert_eq!(o.modules_tag.as_deref(), Some("modules"));
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
        assert_eq!(o.store_tag.as_deref(), Some("y"));
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
        assert_eq!(o.store_tag.as_deref(), Some("store"));
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
            parse("quiet loglevel=3 systemd.unit=rescue.target foo.bar=\"x y\" 8250.nr_uarts=1");
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
            Root::Block(BlockSpec::Other("08:01".into()))
        );
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
        assert_eq!(o.store_tag.as_deref(), Some("nix"));
        assert_eq!(o.modules_tag, None);
        assert_eq!(o.tmpfs_size, "2G");
        assert_eq!(o.rootfstype.as_deref(), Some("ext4"));
        assert_eq!(o.rootflags.as_deref(), Some("noatime"));
        assert!(o.debug);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(parse("rd.debug").debug);
        assert!(!parse("rd.debug nixboot.debug=0").debug);
        assert_eq!(parse("nixboot.store=none").store_tag, None);
        assert_eq!(parse("rd.timeout=0").timeout, Duration::ZERO);
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
        assert_eq!(o.store_tag.as_deref(), Some("store"));
        assert_eq!(o.warnings.len(), 1);
    }
}
