//! Kernel module resolution: from requested names (or aliases) to the files to pack, in
//! load order.
//!
//! Dependencies come from `modules.dep` when present; otherwise (Debian ships none) from
//! each module's `.modinfo` `depends=`. Load order is a depth-first post-order over
//! dependencies, visiting roots and siblings in name order, so the same inputs always give
//! the same order and every dependency precedes its users.

pub mod depmod;
pub mod modinfo;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use self::modinfo::{ModInfo, ModinfoError, SoftDeps};

/// The set `--kernel-modules` packs when no `--module` is given: what an imageless guest
/// needs to mount the store over virtiofs.
pub const DEFAULT_MODULES: &[&str] = &["virtio_pci", "virtiofs"];

/// File name endings of module files, the compressed ones after the plain one.
const MODULE_SUFFIXES: &[&str] = &[".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Directories depth limit while scanning, against symlink loops.
const MAX_DEPTH: usize = 16;

/// Why modules could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("cannot read kernel modules directory {path}: {source}")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("kernel modules directory {path} has no usable name: expected .../lib/modules/<kernel version>")]
    NoVersion { path: PathBuf },
    #[error("kernel module {name:?}{} not found in {dir} (no module file, not in modules.builtin, no matching alias)", needed_by.as_ref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    NotFound {
        name: String,
        dir: PathBuf,
        needed_by: Option<String>,
    },
    #[error("cannot decompress kernel module {path}: {source}")]
    Decompress { path: PathBuf, source: io::Error },
    #[error("cannot read kernel module {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot read .modinfo of kernel module {path}: {source}")]
    Modinfo { path: PathBuf, source: ModinfoError },
    #[error("kernel module {name} ({path}) was built for kernel {found}, but the modules directory is for {expected}")]
    Vermagic {
        name: String,
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("dependency cycle between kernel modules: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },
    #[error("malformed {path} line {line}: {message}")]
    Index {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Module names treat `-` and `_` alike; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a module file path (`kernel/fs/fuse/fuse.ko.xz` -> `fuse`), or None
/// when the file is not a module.
pub fn module_name(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    MODULE_SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .filter(|stem| !stem.is_empty())
        .map(normalize)
}

fn is_compressed(path: &str) -> bool {
    !path.ends_with(".ko")
}

/// The path a module is packed at: compressed modules are decompressed at build time
/// (`kernel/fs/fuse/fuse.ko.xz` -> `kernel/fs/fuse/fuse.ko`), because the init loads them
/// with a plain `finit_module` (the kernel decompresses only with CONFIG_MODULE_DECOMPRESS
/// and its own compression).
pub fn packed_path(rel: &str) -> String {
    match rel.rfind(".ko") {
        Some(i) if is_compressed(rel) => format!("{}.ko", &rel[..i]),
        _ => rel.to_owned(),
    }
}

/// Upper bound on a decompressed module (the largest in-tree modules are tens of MB).
const MAX_MODULE_SIZE: usize = 1 << 30;

/// Reads a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.
pub fn read_module(path: &Path) -> Result<Vec<u8>, KmodError> {
    let data = fs::read(path).map_err(|source| KmodError::Read {
        path: path.to_owned(),
        source,
    })?;
    if path.to_str().is_some_and(|p| !is_compressed(p)) {
        return Ok(data);
    }
    crate::compress::decompress_file(&data, MAX_MODULE_SIZE).map_err(|source| {
        KmodError::Decompress {
            path: path.to_owned(),
            source,
        }
    })
}

/// One module to pack.
#[derive(Debug, Clone)]
pub struct ResolvedModule {
    /// Kernel name (underscores).
    pub name: String,
    /// Path relative to the modules directory as packed, e.g. `kernel/fs/fuse/fuse.ko`
    /// (always `.ko`: compressed modules are decompressed).
    pub rel_path: String,
    /// The file it was read from (possibly `.ko.xz`, `.ko.zst` or `.ko.gz`).
    pub source: PathBuf,
    /// The uncompressed module.
    pub data: Vec<u8>,
    pub info: ModInfo,
}

/// The result of a resolution.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub kernel_version: String,
    /// In load order: every dependency before its users.
    pub modules: Vec<ResolvedModule>,
    /// Things worth telling the user (built-in modules skipped, missing soft deps, ...).
    pub notes: Vec<String>,
}

/// One kernel's `lib/modules/<version>` directory, indexed.
#[derive(Debug)]
pub struct ModulesDir {
    root: PathBuf,
    kernel_version: String,
    /// Module name -> path relative to root.
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    /// From modules.dep: module name -> names it needs.
    dep: Option<BTreeMap<String, Vec<String>>>,
    /// From modules.alias: (pattern, module).
    alias_file: Option<Vec<(String, String)>>,
    /// From modules.builtin.modinfo: (pattern, module).
    builtin_aliases: Vec<(String, String)>,
    /// From modules.softdep.
    softdeps: BTreeMap<String, SoftDeps>,
    notes: Vec<String>,
}

impl ModulesDir {
    /// Indexes the directory; the kernel version is its (canonical) base name.
    pub fn open(root: &Path) -> Result<ModulesDir, KmodError> {
        let unreadable = |source| KmodError::Unreadable {
            path: root.to_owned(),
            source,
        };
        let canonical = fs::canonicalize(root).map_err(unreadable)?;
        // Fails for a file given in place of the directory.
        fs::read_dir(&canonical).map_err(unreadable)?;
        let kernel_version = canonical
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| KmodError::NoVersion {
                path: root.to_owned(),
            })?;
        let mut dir = ModulesDir {
            root: root.to_owned(),
            kernel_version,
            files: BTreeMap::new(),
            builtin: BTreeSet::new(),
            dep: None,
            alias_file: None,
            builtin_aliases: Vec::new(),
            softdeps: BTreeMap::new(),
            notes: Vec::new(),
        };
        if let Some(text) = dir.read_index("modules.builtin")? {
            dir.builtin = depmod::parse_builtin(&text);
        }
        if let Some(text) = dir.read_index("modules.alias")? {
            dir.alias_file = Some(depmod::parse_alias(&text));
        }
        if let Some(text) = dir.read_index("modules.softdep")? {
            dir.softdeps = depmod::parse_softdep(&text);
        }
        match fs::read(root.join("modules.builtin.modinfo")) {
            Ok(bytes) => dir.builtin_aliases = depmod::parse_builtin_aliases(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KmodError::Unreadable {
                    path: root.join("modules.builtin.modinfo"),
                    source,
                })
            }
        }
        match dir.read_index("modules.dep")? {
            Some(text) => dir.index_from_modules_dep(&text)?,
            None => {
                let mut found = Vec::new();
                scan(&dir.root, "", 0, &mut found)?;
                for rel in found {
                    dir.add_file(rel);
                }
            }
        }
        Ok(dir)
    }

    pub fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `modules.dep` was used for dependencies.
    pub fn has_modules_dep(&self) -> bool {
        self.dep.is_some()
    }

    fn read_index(&self, name: &str) -> Result<Option<String>, KmodError> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KmodError::Unreadable { path, source }),
        }
    }

    fn index_from_modules_dep(&mut self, text: &str) -> Result<(), KmodError> {
        let parsed = depmod::parse_modules_dep(text).map_err(|e| KmodError::Index {
            path: self.root.join("modules.dep"),
            line: e.line,
            message: e.message,
        })?;
        let mut dep = BTreeMap::new();
        for (rel, deps) in parsed {
            let names = deps.iter().filter_map(|d| module_name(d)).collect();
            if let Some(name) = self.add_file(rel) {
                dep.insert(name, names);
            }
        }
        self.dep = Some(dep);
        Ok(())
    }

    /// Records a module file; on a duplicate name keeps `updates/` over others, then the
    /// first path in byte order (the scan is sorted), as depmod prefers updates.
    fn add_file(&mut self, rel: String) -> Option<String> {
        let rel = rel.trim_start_matches('/').to_owned();
        let name = module_name(&rel)?;
        match self.files.get(&name) {
            Some(existing) => {
                let prefer_new = rel.starts_with("updates/") && !existing.starts_with("updates/");
                let (kept, dropped) = if prefer_new {
                    (rel.clone(), existing.clone())
                } else {
                    (existing.clone(), rel.clone())
                };
                self.notes.push(format!(
                    "kernel module {name} exists twice; using {kept}, ignoring {dropped}"
                ));
                self.files.insert(name.clone(), kept);
            }
            None => {
                self.files.insert(name.clone(), rel);
            }
        }
        Some(name)
    }

    /// Resolves the requested names or aliases to modules in load order.
    pub fn resolve(&self, requested: &[String]) -> Result<Resolution, KmodError> {
        let mut r = Resolver {
            dir: self,
            loaded: BTreeMap::new(),
            order: Vec::new(),
            done: BTreeSet::new(),
            stack: Vec::new(),
            notes: self.notes.clone(),
            scanned_aliases: None,
        };
        // Sorted so that the order of --module arguments does not matter.
        let mut roots = BTreeSet::new();
        for req in requested {
            roots.extend(r.lookup(req)?);
        }
        for root in &roots {
            r.visit(root, None)?;
        }
        let Resolver {
            mut loaded,
            order,
            notes,
            ..
        } = r;
        let modules = order
            .iter()
            .filter_map(|name| loaded.remove(name))
            .collect();
        Ok(Resolution {
            kernel_version: self.kernel_version.clone(),
            modules,
            notes,
        })
    }
}

/// Recursively collects module files (relative paths, sorted). Symlinks are followed
/// (NixOS aggregates module trees with symlinks) except the top-level `build` and `source`
/// links into kernel sources.
fn scan(root: &Path, rel: &str, depth: usize, out: &mut Vec<String>) -> Result<(), KmodError> {
    let dir = root.join(rel);
    let unreadable = |source| KmodError::Unreadable {
        path: dir.clone(),
        source,
    };
    let mut entries: Vec<(String, PathBuf, fs::FileType)> = Vec::new();
    for entry in fs::read_dir(&dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        // Module trees are ASCII; a non-UTF-8 name cannot be a module we can name.
        if let Some(name) = entry.file_name().to_str() {
            // From the directory entry: no stat per file (a kernel has thousands).
            let file_type = entry.file_type().map_err(unreadable)?;
            entries.push((name.to_owned(), entry.path(), file_type));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, path, file_type) in entries {
        if depth == 0 && (name == "build" || name == "source") {
            continue;
        }
        let (is_dir, is_file) = if file_type.is_symlink() {
            // A dangling symlink is skipped like any other non-module.
            match fs::metadata(&path) {
                Ok(m) => (m.is_dir(), m.is_file()),
                Err(_) => continue,
            }
        } else {
            (file_type.is_dir(), file_type.is_file())
        };
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if is_dir {
            if depth < MAX_DEPTH {
                scan(root, &child, depth + 1, out)?;
            }
        } else if is_file && module_name(&name).is_some() {
            out.push(child);
        }
    }
    Ok(())
}

struct Resolver<'a> {
    dir: &'a ModulesDir,
    loaded: BTreeMap<String, ResolvedModule>,
    order: Vec<String>,
    done: BTreeSet<String>,
    stack: Vec<String>,
    notes: Vec<String>,
    /// (pattern, module) of every module's `alias=`, read on first need.
    scanned_aliases: Option<Vec<(String, String)>>,
}

impl Resolver<'_> {
    /// Maps a requested name or alias to module names (empty when built in).
    fn lookup(&mut self, req: &str) -> Result<Vec<String>, KmodError> {
        let name = normalize(req);
        if self.dir.builtin.contains(&name) {
            self.note_builtin(&name);
            return Ok(Vec::new());
        }
        if self.dir.files.contains_key(&name) {
            return Ok(vec![name]);
        }
        let alias = depmod::normalize_alias(req);
        let mut matches = BTreeSet::new();
        let dir: &ModulesDir = self.dir;
        let table: &[(String, String)] = match &dir.alias_file {
            Some(t) => t,
            None => self.scanned_aliases()?,
        };
        for (pattern, module) in table.iter().chain(&dir.builtin_aliases) {
            if depmod::glob_match(pattern, &alias) {
                matches.insert(module.clone());
            }
        }
        if matches.is_empty() {
            return Err(KmodError::NotFound {
                name: req.to_owned(),
                dir: self.dir.root.clone(),
                needed_by: None,
            });
        }
        let mut out = Vec::new();
        for m in matches {
            if self.dir.builtin.contains(&m) {
                self.note_builtin(&m);
            } else {
                self.notes
                    .push(format!("{req} is an alias of kernel module {m}"));
                out.push(m);
            }
        }
        Ok(out)
    }

    fn scanned_aliases(&mut self) -> Result<&[(String, String)], KmodError> {
        if self.scanned_aliases.is_none() {
            let mut table = Vec::new();
            for (name, rel) in &self.dir.files {
                let path = self.dir.root.join(rel);
                let info = if is_compressed(rel) {
                    // The whole module must be decompressed to reach .modinfo.
                    modinfo::from_bytes(&read_module(&path)?)
                } else {
                    modinfo::from_file(&path)
                }
                .map_err(|source| KmodError::Modinfo { path, source })?;
                for a in info.aliases {
                    table.push((depmod::normalize_alias(&a), name.clone()));
                }
            }
            self.scanned_aliases = Some(table);
        }
        Ok(self.scanned_aliases.as_deref().unwrap_or_default())
    }

    fn note_builtin(&mut self, name: &str) {
        let note =
            format!("kernel module {name} is built into the kernel (modules.builtin); not packed");
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn visit(&mut self, name: &str, needed_by: Option<&str>) -> Result<(), KmodError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.dir.builtin.contains(name) {
            self.note_builtin(name);
            self.done.insert(name.to_owned());
            return Ok(());
        }
        if let Some(pos) = self.stack.iter().position(|s| s == name) {
            let mut chain = self.stack[pos..].to_vec();
            chain.push(name.to_owned());
            return Err(KmodError::Cycle { chain });
        }
        let module = self.load(name, needed_by)?;
        let mut soft = module.info.softdep.clone();
        if let Some(extra) = self.dir.softdeps.get(name) {
            soft.extend(extra.clone());
        }
        let mut hard = match &self.dir.dep {
            Some(dep) => dep.get(name).cloned().unwrap_or_default(),
            None => module.info.depends.clone(),
        };
        hard.sort();
        hard.dedup();
        self.loaded.insert(name.to_owned(), module);

        self.stack.push(name.to_owned());
        for pre in sorted(soft.pre) {
            self.visit_soft(&pre, name)?;
        }
        for dep in hard {
            self.visit(&dep, Some(name))?;
        }
        self.stack.pop();
        self.order.push(name.to_owned());
        self.done.insert(name.to_owned());
        for post in sorted(soft.post) {
            self.visit_soft(&post, name)?;
        }
        Ok(())
    }

    /// Soft dependencies are optional: missing ones and loops through them are noted.
    fn visit_soft(&mut self, name: &str, by: &str) -> Result<(), KmodError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.stack.iter().any(|s| s == name) {
            self.notes.push(format!(
                "soft dependency {name} of {by} loops back; ignored"
            ));
            return Ok(());
        }
        if !self.dir.files.contains_key(name) && !self.dir.builtin.contains(name) {
            self.notes
                .push(format!("soft dependency {name} of {by} not found; skipped"));
            return Ok(());
        }
        self.visit(name, Some(by))
    }

    fn load(&self, name: &str, needed_by: Option<&str>) -> Result<ResolvedModule, KmodError> {
        let rel = self
            .dir
            .files
            .get(name)
            .ok_or_else(|| KmodError::NotFound {
                name: name.to_owned(),
                dir: self.dir.root.clone(),
                needed_by: needed_by.map(str::to_owned),
            })?;
        let path = self.dir.root.join(rel);
        let data = read_module(&path)?;
        let info = modinfo::from_bytes(&data).map_err(|source| KmodError::Modinfo {
            path: path.clone(),
            source,
        })?;
        let found = info.kernel_release().unwrap_or("<no vermagic>");
        if found != self.dir.kernel_version {
            return Err(KmodError::Vermagic {
                name: name.to_owned(),
                path,
                found: found.to_owned(),
                expected: self.dir.kernel_version.clone(),
            });
        }
        Ok(ResolvedModule {
            name: name.to_owned(),
            rel_path: packed_path(rel),
            source: path,
            data,
            info,
        })
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::fake_module;

    const KVER: &str = "9.9.9-test";

    /// The real modules directory from `NIXBOOT_MODULES`, or None after a loud SKIP
    /// (a panic when `NIXBOOT_REQUIRE_QEMU=1`).
    pub(crate) fn real_modules_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("NIXBOOT_MODULES").map(PathBuf::from);
        match dir {
            Some(d) if d.is_dir() => Some(d),
            _ => {
                let msg =
                    "NIXBOOT_MODULES is not set to a kernel modules directory (run `.ci/setup`)";
                if std::env::var("NIXBOOT_REQUIRE_QEMU").as_deref() == Ok("1") {
                    panic!("{msg}");
                }
                eprintln!("SKIP: {msg}");
                None
            }
        }
    }

    /// A fake modules tree: (relative path, modinfo fields without vermagic).
    fn tree(modules: &[(&str, &[&str])]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(KVER);
        for (rel, fields) in modules {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let vermagic = format!("vermagic={KVER} SMP mod_unload");
            let mut all: Vec<&str> = fields.to_vec();
            all.push(&vermagic);
            fs::write(path, fake_module(&all)).unwrap();
        }
        fs::create_dir_all(&root).unwrap();
        (tmp, root)
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.modules.iter().map(|m| m.name.as_str()).collect()
    }

    fn req(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn assert_deps_first(r: &Resolution) {
        let pos: BTreeMap<&str, usize> = names(r)
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        for m in &r.modules {
            for d in &m.info.depends {
                let (Some(dp), Some(mp)) = (pos.get(d.as_str()), pos.get(m.name.as_str())) else {
                    panic!("{d} (dependency of {}) is not packed", m.name);
                };
                assert!(dp < mp, "{d} is loaded after its user {}", m.name);
            }
        }
    }

    fn virtio_tree() -> (tempfile::TempDir, PathBuf) {
        tree(&[
            ("kernel/drivers/virtio/virtio_ring.ko", &["depends="]),
            ("kernel/drivers/virtio/virtio.ko", &["depends=virtio_ring"]),
            (
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                &["depends="],
            ),
            (
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                &["depends="],
            ),
            (
                "kernel/drivers/virtio/virtio_pci.ko",
                &["depends=virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio"],
            ),
            ("kernel/fs/fuse/fuse.ko", &["depends="]),
            (
                "kernel/fs/fuse/virtiofs.ko",
                &["depends=fuse,virtio,virtio_ring", "alias=fs-virtiofs"],
            ),
            ("kernel/fs/unrelated.ko", &["depends=", "alias=fs-other"]),
        ])
    }

    #[test]
    fn order_from_modinfo_is_dependency_first_and_argument_order_free() {
        let (_t, root) = virtio_tree();
        let dir = ModulesDir::open(&root).unwrap();
        assert_eq!(dir.kernel_version(), KVER);
        assert!(!dir.has_modules_dep());
        let a = dir.resolve(&req(&["virtio_pci", "virtiofs"])).unwrap();
        assert_eq!(
            names(&a),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "fuse",
                "virtiofs"
            ]
        );
        assert_deps_first(&a);
        let b = dir
            .resolve(&req(&["virtiofs", "virtio-pci", "virtiofs"]))
            .unwrap();
        assert_eq!(names(&a), names(&b));
        assert_eq!(a.modules[6].rel_path, "kernel/fs/fuse/virtiofs.ko");
    }

    #[test]
    fn modules_dep_is_used_when_present() {
        let (_t, root) = virtio_tree();
        // modules.dep says something different from .modinfo: it must win.
        fs::write(
            root.join("modules.dep"),
            "kernel/fs/fuse/virtiofs.ko: kernel/fs/unrelated.ko\nkernel/fs/unrelated.ko:\nkernel/fs/fuse/fuse.ko:\n",
        )
        .unwrap();
        let dir = ModulesDir::open(&root).unwrap();
        assert!(dir.has_modules_dep());
        let r = dir.resolve(&req(&["virtiofs"])).unwrap();
        assert_eq!(names(&r), ["unrelated", "virtiofs"]);
        // Modules missing from modules.dep are unknown then.
        let e = dir.resolve(&req(&["virtio_pci"])).unwrap_err();
        assert!(matches!(e, KmodError::NotFound { .. }), "{e}");
    }

    #[test]
    fn aliases_from_modinfo_and_modules_alias() {
        let (_t, root) = virtio_tree();
        let dir = ModulesDir::open(&root).unwrap();
        let r = dir.resolve(&req(&["fs-virtiofs"])).unwrap();
        assert_eq!(names(&r).last(), Some(&"virtiofs"));
        assert!(r.notes.iter().any(|n| n.contains("alias")), "{:?}", r.notes);
        // With modules.alias present, it is the only alias source.
        fs::write(root.join("modules.alias"), "alias fs-virtiofs unrelated\n").unwrap();
        let dir = ModulesDir::open(&root).unwrap();
        assert_eq!(
            names(&dir.resolve(&req(&["fs-virtiofs"])).unwrap()),
            ["unrelated"]
        );
        let e = dir.resolve(&req(&["fs-other"])).unwrap_err();
        assert!(e.to_string().contains("fs-other"), "{e}");
    }

    #[test]
    fn builtin_modules_are_skipped_with_a_note() {
        let (_t, root) = virtio_tree();
        fs::write(
            root.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_ring.ko\nkernel/fs/fuse/fuse.ko\n",
        )
        .unwrap();
        let dir = ModulesDir::open(&root).unwrap();
        let r = dir.resolve(&req(&["virtiofs", "fuse"])).unwrap();
        assert_eq!(names(&r), ["virtio", "virtiofs"]);
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("virtio_ring") && n.contains("built")));
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("fuse") && n.contains("built")));
    }

    #[test]
    fn softdeps_pre_before_post_after() {
        let (_t, root) = tree(&[
            ("a.ko", &["depends=b", "softdep=pre: p post: q missing"]),
            ("b.ko", &["depends="]),
            ("p.ko", &["depends="]),
            ("q.ko", &["depends=a"]),
        ]);
        let dir = ModulesDir::open(&root).unwrap();
        let r = dir.resolve(&req(&["a"])).unwrap();
        assert_eq!(names(&r), ["p", "b", "a", "q"]);
        assert!(
            r.notes.iter().any(|n| n.contains("missing")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn cycles_missing_and_version_mismatch_are_errors() {
        let (_t, root) = tree(&[
            ("x.ko", &["depends=y"]),
            ("y.ko", &["depends=z"]),
            ("z.ko", &["depends=x"]),
            ("needs.ko", &["depends=ghost"]),
        ]);
        let dir = ModulesDir::open(&root).unwrap();
        let e = dir.resolve(&req(&["x"])).unwrap_err();
        assert!(
            matches!(&e, KmodError::Cycle { chain } if chain == &["x", "y", "z", "x"]),
            "{e}"
        );
        let e = dir.resolve(&req(&["needs"])).unwrap_err().to_string();
        assert!(
            e.contains("ghost") && e.contains("needed by needs") && e.contains(KVER),
            "{e}"
        );
        let e = dir.resolve(&req(&["nope"])).unwrap_err().to_string();
        assert!(
            e.contains("\"nope\"") && e.contains(&root.display().to_string()),
            "{e}"
        );

        let other = root.join("kernel/other.ko");
        fs::create_dir_all(other.parent().unwrap()).unwrap();
        fs::write(&other, fake_module(&["vermagic=1.0.0-other SMP"])).unwrap();
        let dir = ModulesDir::open(&root).unwrap();
        let e = dir.resolve(&req(&["other"])).unwrap_err().to_string();
        assert!(
            e.contains("other") && e.contains("1.0.0-other") && e.contains(KVER),
            "{e}"
        );
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let (_t, root) = virtio_tree();
        // Recompress three modules, each with another tool's format.
        for (rel, c) in [
            (
                "kernel/fs/fuse/virtiofs.ko",
                crate::compress::Compression::Xz,
            ),
            ("kernel/fs/fuse/fuse.ko", crate::compress::Compression::Zstd),
            (
                "kernel/drivers/virtio/virtio.ko",
                crate::compress::Compression::Gzip,
            ),
        ] {
            let plain = fs::read(root.join(rel)).unwrap();
            let ext = match c {
                crate::compress::Compression::Xz => "xz",
                crate::compress::Compression::Zstd => "zst",
                _ => "gz",
            };
            fs::write(
                root.join(format!("{rel}.{ext}")),
                crate::compress::compress(c, &plain).unwrap(),
            )
            .unwrap();
            fs::remove_file(root.join(rel)).unwrap();
        }
        let dir = ModulesDir::open(&root).unwrap();
        // Through the alias scan too (fs-virtiofs lives in the xz one).
        let r = dir.resolve(&req(&["virtio_pci", "fs-virtiofs"])).unwrap();
        assert_eq!(r.modules.len(), 7);
        assert_deps_first(&r);
        let virtiofs = r.modules.iter().find(|m| m.name == "virtiofs").unwrap();
        assert_eq!(virtiofs.rel_path, "kernel/fs/fuse/virtiofs.ko");
        assert!(virtiofs.source.ends_with("virtiofs.ko.xz"));
        assert_eq!(&virtiofs.data[..4], b"\x7fELF");
        let fuse = r.modules.iter().find(|m| m.name == "fuse").unwrap();
        assert_eq!(fuse.rel_path, "kernel/fs/fuse/fuse.ko");
        assert_eq!(packed_path("a/virtio.ko.gz"), "a/virtio.ko");
        assert_eq!(packed_path("a/b.ko"), "a/b.ko");

        // A damaged compressed module is an error naming the file.
        fs::write(root.join("kernel/fs/zipped.ko.xz"), b"\xfd7zXZ\0garbage").unwrap();
        let dir = ModulesDir::open(&root).unwrap();
        let e = dir.resolve(&req(&["zipped"])).unwrap_err();
        assert!(matches!(e, KmodError::Decompress { .. }), "{e}");
        assert!(e.to_string().contains("zipped.ko.xz"), "{e}");
    }

    #[test]
    fn unreadable_dir() {
        let e = ModulesDir::open(Path::new("/nonexistent/lib/modules/1.2.3")).unwrap_err();
        assert!(matches!(e, KmodError::Unreadable { .. }));
        assert!(
            e.to_string().contains("/nonexistent/lib/modules/1.2.3"),
            "{e}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            ModulesDir::open(f.path()),
            Err(KmodError::Unreadable { .. })
        ));
    }

    #[test]
    fn scan_follows_symlinks_like_nixos_aggregated_trees() {
        // NixOS joins module trees with symlinks to files and whole directories.
        let (_t, real) = virtio_tree();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(KVER);
        fs::create_dir_all(root.join("kernel/fs/fuse")).unwrap();
        std::os::unix::fs::symlink(real.join("kernel/drivers"), root.join("kernel/drivers"))
            .unwrap();
        for m in ["fuse.ko", "virtiofs.ko"] {
            std::os::unix::fs::symlink(
                real.join("kernel/fs/fuse").join(m),
                root.join("kernel/fs/fuse").join(m),
            )
            .unwrap();
        }
        // build/source point into kernel sources and are never scanned.
        std::os::unix::fs::symlink(real.join("kernel"), root.join("build")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("kernel/dangling.ko")).unwrap();
        let dir = ModulesDir::open(&root).unwrap();
        let r = dir.resolve(&req(&["virtio_pci", "virtiofs"])).unwrap();
        assert_eq!(r.modules.len(), 7);
        assert!(
            r.modules.iter().all(|m| m.rel_path.starts_with("kernel/")),
            "{:?}",
            r.modules.iter().map(|m| &m.rel_path).collect::<Vec<_>>()
        );
        assert!(
            r.notes.iter().all(|n| !n.contains("twice")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/fs/fuse/fuse.ko").as_deref(),
            Some("fuse")
        );
        assert_eq!(
            module_name("a/b/virtio-pci.ko.zst").as_deref(),
            Some("virtio_pci")
        );
        assert_eq!(module_name("a/b/.ko"), None);
        assert_eq!(module_name("modules.dep"), None);
    }

    #[test]
    fn real_debian_kernel_imageless_set() {
        let Some(root) = real_modules_dir() else {
            return;
        };
        let dir = ModulesDir::open(&root).unwrap();
        let r = dir.resolve(&req(&["virtio_pci", "virtiofs"])).unwrap();
        let got: BTreeSet<&str> = names(&r).into_iter().collect();
        let want: BTreeSet<&str> = [
            "virtio_ring",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "fuse",
            "virtiofs",
        ]
        .into();
        assert_eq!(got, want);
        assert_eq!(r.modules.len(), 7, "duplicates in {:?}", names(&r));
        assert_deps_first(&r);
        assert_eq!(&names(&r)[5..], ["fuse", "virtiofs"]);
        // The alias resolves to the same module.
        let a = dir.resolve(&req(&["fs-virtiofs"])).unwrap();
        assert_eq!(names(&a).last(), Some(&"virtiofs"));
    }

    #[test]
    fn real_kernel_matches_depmod_oracle() {
        let Some(root) = real_modules_dir() else {
            return;
        };
        if std::process::Command::new("depmod")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP: depmod (kmod) not installed");
            return;
        }
        // depmod -b BASE VERSION writes BASE/lib/modules/VERSION/modules.*; copy the
        // modules we need (with their directories) plus modules.builtin.
        let kver = root.file_name().unwrap().to_str().unwrap().to_owned();
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("lib/modules").join(&kver);
        let wanted = [
            "virtio_ring",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "fuse",
            "virtiofs",
        ];
        let real = ModulesDir::open(&root).unwrap();
        for w in wanted {
            let rel = &real.files[w];
            let dst = copy.join(rel);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(root.join(rel), dst).unwrap();
        }
        fs::copy(root.join("modules.builtin"), copy.join("modules.builtin")).unwrap();
        fs::copy(root.join("modules.order"), copy.join("modules.order")).ok();
        // The copy before depmod is the .modinfo side: setup indexes the real tree itself
        // (.ci/index-modules), so opening that would read depmod's answer on both sides.
        let scanned = ModulesDir::open(&copy).unwrap();
        let status = std::process::Command::new("depmod")
            .arg("-b")
            .arg(tmp.path())
            .arg(&kver)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(copy.join("modules.dep").exists());
        let from_dep = ModulesDir::open(&copy).unwrap();
        assert!(from_dep.has_modules_dep());
        let a = from_dep
            .resolve(&req(&["virtio_pci", "fs-virtiofs"]))
            .unwrap();
        let b = scanned.resolve(&req(&["virtio_pci", "virtiofs"])).unwrap();
        let set = |r: &Resolution| {
            names(r)
                .into_iter()
                .map(str::to_owned)
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(set(&a), set(&b));
        assert_deps_first(&a);
    }
}
