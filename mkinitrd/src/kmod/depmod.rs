//! The text indexes `depmod` writes next to the modules: `modules.dep`, `modules.builtin`,
//! `modules.alias`, `modules.softdep`, plus `modules.builtin.modinfo` (written by kbuild).

use std::collections::{BTreeMap, BTreeSet};

use super::modinfo::SoftDeps;
use super::{module_name, normalize};

/// A line of an index that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// `modules.dep`: `kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko ...`.
/// Returns, per module path, the paths of all modules it needs (depmod lists the whole
/// transitive closure).
pub fn parse_modules_dep(text: &str) -> Result<BTreeMap<String, Vec<String>>, LineError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((module, deps)) = line.split_once(':') else {
            return Err(LineError {
                line: i + 1,
                message: format!("expected `module.ko: deps...`, found {line:?}"),
            });
        };
        let module = module.trim();
        if module.is_empty() || module_name(module).is_none() {
            return Err(LineError {
                line: i + 1,
                message: format!("{module:?} is not a module file name"),
            });
        }
        out.insert(
            module.to_owned(),
            deps.split_whitespace().map(str::to_owned).collect(),
        );
    }
    Ok(out)
}

/// `modules.builtin`: one path per line (`kernel/fs/ext4/ext4.ko`); returns the names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| module_name(l.trim())).collect()
}

/// `modules.alias`: `alias PATTERN MODULE` lines. Returns (normalised pattern, module).
pub fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module)) => {
                    Some((normalize_alias(pattern), normalize(module)))
                }
                _ => None,
            }
        })
        .collect()
}

/// `modules.softdep`: `softdep MODULE pre: a b post: c` lines.
pub fn parse_softdep(text: &str) -> BTreeMap<String, SoftDeps> {
    let mut out: BTreeMap<String, SoftDeps> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.splitn(3, char::is_whitespace);
        if let (Some("softdep"), Some(module), Some(rest)) =
            (words.next(), words.next(), words.next())
        {
            out.entry(normalize(module))
                .or_default()
                .extend(SoftDeps::parse(rest));
        }
    }
    out
}

/// `modules.builtin.modinfo`: NUL-separated `module.key=value`. Returns the aliases of
/// built-in modules as (normalised pattern, module).
pub fn parse_builtin_aliases(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|field| {
            let field = std::str::from_utf8(field).ok()?;
            let (module, rest) = field.split_once('.')?;
            let pattern = rest.strip_prefix("alias=")?;
            Some((normalize_alias(pattern), normalize(module)))
        })
        .collect()
}

/// Like kmod's `alias_normalize`: `-` becomes `_` except inside `[...]` classes.
pub fn normalize_alias(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// fnmatch(3) without flags: `*`, `?`, `[...]` (with ranges and `!`/`^` negation).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class_match(&p[pi..], t[ti]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // An unterminated `[` matches itself literally.
                None => (t[ti] == '[').then_some(1),
            },
            Some(c) => (*c == t[ti]).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                pi += len;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches one character against the class at the start of `p` (`p[0] == '['`).
/// Returns (matched, pattern length of the class), or None when the class is unterminated.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            let end = p[i + 2];
            if ch <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep() {
        let deps = parse_modules_dep(
            "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/fs/fuse/fuse.ko:\n",
        )
        .unwrap();
        assert_eq!(deps["kernel/fs/fuse/fuse.ko"], Vec::<String>::new());
        assert_eq!(deps["kernel/fs/fuse/virtiofs.ko"].len(), 2);
        let e = parse_modules_dep("ok.ko:\nnonsense line\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn builtin_alias_softdep() {
        let b = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/a-b.ko\n\n");
        assert!(b.contains("ext4") && b.contains("a_b"));
        let a = parse_alias("# comment\nalias fs-virtiofs virtiofs\nalias pci:v*d[0-9-]* x-y\n");
        assert_eq!(a[0], ("fs_virtiofs".into(), "virtiofs".into()));
        assert_eq!(a[1], ("pci:v*d[0-9-]*".into(), "x_y".into()));
        let s = parse_softdep("softdep ext4 pre: crc32c\nsoftdep ext4 post: x\n");
        assert_eq!(s["ext4"].pre, ["crc32c"]);
        assert_eq!(s["ext4"].post, ["x"]);
        let bi = parse_builtin_aliases(
            b"ext4.alias=fs-ext4\0ext4.license=GPL\0crc32c_generic.alias=crypto-crc32c\0",
        );
        assert_eq!(
            bi,
            [
                ("fs_ext4".into(), "ext4".into()),
                ("crypto_crc32c".into(), "crc32c_generic".into())
            ]
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match("fs_virtiofs", "fs_virtiofs"));
        assert!(!glob_match("fs_virtiofs", "fs_virtiofs2"));
        assert!(glob_match(
            "virtio:d00000001v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b", "xxaxxbxx"));
        assert!(glob_match("pci:v[0-9]?", "pci:v5z"));
        assert!(!glob_match("pci:v[!0-9]?", "pci:v5z"));
        assert!(glob_match("a[]]b", "a]b"));
        assert!(glob_match("a[b", "a[b"));
        assert!(glob_match("", ""));
        assert!(glob_match("*", ""));
    }
}
