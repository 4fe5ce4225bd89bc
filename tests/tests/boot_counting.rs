//! The boot counting scripts of the NixOS module (nixos/modules/generations), run with bash
//! on a directory laid out like an ESP: the install hook gives new generations `+TRIES`,
//! keeps counters across rebuilds, leaves blessed entries plain, collects entries of deleted
//! generations, and refuses an entry naming a missing kernel or generation without changing
//! anything; bless-boot renames the entry systemd-boot's LoaderBootCountPath names.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../nixos/modules/generations")
        .join(name)
}

struct Esp {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Esp {
    fn new() -> Esp {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::create_dir_all(root.join("esp/loader/entries")).unwrap();
        fs::create_dir_all(root.join("esp/EFI/nixos")).unwrap();
        fs::create_dir_all(root.join("nix/store/s-system")).unwrap();
        fs::write(root.join("nix/store/s-system/init"), "").unwrap();
        fs::write(root.join("esp/EFI/nixos/kernel"), "").unwrap();
        fs::write(
            root.join("esp/loader/loader.conf"),
            "timeout 3\ndefault nixos-generation-2.conf\n",
        )
        .unwrap();
        Esp { _tmp: tmp, root }
    }

    fn esp(&self) -> PathBuf {
        self.root.join("esp")
    }

    /// What NixOS's systemd-boot builder writes for generation `n`.
    fn builder_writes(&self, gens: &[u32]) {
        for n in gens {
            fs::write(
                self.esp()
                    .join(format!("loader/entries/nixos-generation-{n}.conf")),
                "title NixOS\nlinux /EFI/nixos/kernel\noptions init=/nix/store/s-system/init quiet\n",
            )
            .unwrap();
        }
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.esp().join("loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn install(&self, tries: &str) -> (bool, String) {
        let o = Command::new("bash")
            .arg(script("install-hook.sh"))
            .env("ESP", self.esp())
            .env("TRIES", tries)
            .env("ROOT", &self.root)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// systemd-boot's LoaderBootCountPath for `entry`, then bless-boot.sh.
    fn bless(&self, entry: &str) -> (bool, String) {
        let vars = self.root.join("efivars");
        fs::create_dir_all(&vars).unwrap();
        let mut bytes = vec![7, 0, 0, 0];
        let path = format!("\\loader\\entries\\{entry}");
        for u in path.encode_utf16().chain([0]) {
            bytes.extend(u.to_le_bytes());
        }
        fs::write(
            vars.join("LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"),
            bytes,
        )
        .unwrap();
        let o = Command::new("bash")
            .arg(script("bless-boot.sh"))
            .env("ESP", self.esp())
            .env("EFIVARS", &vars)
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.success(), text)
    }

    fn rename(&self, from: &str, to: &str) {
        let d = self.esp().join("loader/entries");
        fs::rename(d.join(from), d.join(to)).unwrap();
    }
}

#[test]
fn new_generations_are_counted_kept_blessed_and_collected() {
    let e = Esp::new();
    // Boot counting just enabled: only the newest generation is new.
    e.builder_writes(&[1, 2]);
    assert_eq!(e.install("3"), (true, String::new()));
    assert_eq!(
        e.entries(),
        ["nixos-generation-1.conf", "nixos-generation-2+3.conf"]
    );
    let conf = fs::read_to_string(e.esp().join("loader/loader.conf")).unwrap();
    assert!(conf.contains("\ndefault nixos-generation-*\n"), "{conf}");

    // systemd-boot tried 2 once; a rebuild adds 3: 2 keeps its counter, 3 gets one.
    e.rename("nixos-generation-2+3.conf", "nixos-generation-2+2-1.conf");
    e.builder_writes(&[1, 2, 3]);
    assert!(e.install("3").0);
    assert_eq!(
        e.entries(),
        [
            "nixos-generation-1.conf",
            "nixos-generation-2+2-1.conf",
            "nixos-generation-3+3.conf"
        ]
    );

    // 3 boots healthy: blessed, and stays plain on the next rebuild; generation 1 deleted
    // takes nothing with it, 2's counted entry is collected once 2 is gone too.
    e.rename("nixos-generation-3+3.conf", "nixos-generation-3+2-1.conf");
    let (ok, said) = e.bless("nixos-generation-3+2-1.conf");
    assert!(
        ok && said.contains("nixos-generation-3+2-1.conf -> nixos-generation-3.conf"),
        "{said}"
    );
    let (ok, said) = e.bless("nixos-generation-3+2-1.conf");
    assert!(ok && said.contains("already blessed"), "{said}");
    fs::remove_file(e.esp().join("loader/entries/nixos-generation-1.conf")).unwrap();
    e.builder_writes(&[3]);
    assert!(e.install("3").0);
    assert_eq!(e.entries(), ["nixos-generation-3.conf"]);
}

#[test]
fn entries_naming_missing_parts_change_nothing() {
    let e = Esp::new();
    e.builder_writes(&[1, 2]);
    let before = e.entries();
    let (ok, said) = e.install("0");
    assert!(
        !ok && said.contains("tries must be a positive number"),
        "{said}"
    );
    // A generation whose toplevel is gone (a boot entry naming a missing generation).
    fs::write(
        e.esp().join("loader/entries/nixos-generation-3.conf"),
        "linux /EFI/nixos/kernel\noptions init=/nix/store/gone-system/init\n",
    )
    .unwrap();
    let (ok, said) = e.install("3");
    assert!(
        !ok && said.contains("names generation /nix/store/gone-system/init, which does not exist"),
        "{said}"
    );
    // A kernel missing from the ESP.
    fs::write(
        e.esp().join("loader/entries/nixos-generation-3.conf"),
        "linux /EFI/nixos/other-kernel\n",
    )
    .unwrap();
    let (ok, said) = e.install("3");
    assert!(
        !ok && said.contains("linux /EFI/nixos/other-kernel, missing from"),
        "{said}"
    );
    let mut want = before;
    want.push("nixos-generation-3.conf".into());
    assert_eq!(e.entries(), want, "an entry was changed");
    assert!(!e.esp().join("loader/nixboot-counted").exists());
    let conf = fs::read_to_string(e.esp().join("loader/loader.conf")).unwrap();
    assert!(conf.contains("default nixos-generation-2.conf"), "{conf}");
    // Bless without a counter in the variable: nothing to do, said so.
    let (ok, said) = e.bless("nixos-generation-1.conf");
    assert!(ok && said.contains("carries no counter"), "{said}");
}
