//! Every refused input gives an error naming the problem, and no output file.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mkinitrd::{BuildOptions, Compression, Error};

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    opts: BuildOptions,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let opts = BuildOptions {
        closure: Some(closure(&dir, "f00-nixos-system")),
        output: dir.join("out").join("initrd"),
        kernel_modules: Some(fake_modules(&dir, "6.1.0-7-test")),
        modules: Vec::new(),
        init: Some(static_init(&dir)),
        compression: Compression::Zstd,
        ..BuildOptions::default()
    };
    fs::create_dir(dir.join("out")).unwrap();
    Setup {
        _tmp: tmp,
        dir,
        opts,
    }
}

/// Builds, expects an error containing every `needle`, and checks no output appeared.
fn fails(opts: &BuildOptions, needles: &[&str]) -> Error {
    let e = mkinitrd::build(opts).expect_err("build succeeded");
    let text = e.to_string();
    for n in needles {
        assert!(text.contains(n), "error {text:?} does not mention {n:?}");
    }
    assert!(
        listing(opts.output.parent().unwrap()).is_empty(),
        "output left behind after: {text}"
    );
    e
}

#[test]
fn missing_closure() {
    let s = setup();
    let opts = BuildOptions {
        closure: Some(s.dir.join("no-such-result")),
        ..s.opts.clone()
    };
    let e = fails(&opts, &["no-such-result"]);
    assert!(matches!(
        e,
        Error::Closure(mkinitrd::ClosureError::Unreadable { .. })
    ));
}

#[test]
fn closure_without_init_or_with_plain_file_init() {
    let s = setup();
    let empty = s.dir.join("empty-system");
    fs::create_dir(&empty).unwrap();
    let opts = BuildOptions {
        closure: Some(empty.clone()),
        ..s.opts.clone()
    };
    fails(&opts, &["empty-system", "no `init`"]);
    fs::write(empty.join("init"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(empty.join("init"), fs::Permissions::from_mode(0o644)).unwrap();
    fails(&opts, &["empty-system/init", "not an executable"]);
}

#[test]
fn malformed_boot_json() {
    let s = setup();
    fs::write(
        s.opts.closure.as_ref().unwrap().join("boot.json"),
        b"{\"org.nixos.bootspec.v1\": {\"init\": ",
    )
    .unwrap();
    fails(&s.opts, &["malformed bootspec", "boot.json"]);
    fs::write(
        s.opts.closure.as_ref().unwrap().join("boot.json"),
        br#"{"org.nixos.bootspec.v1": {"kernelParams": []}}"#,
    )
    .unwrap();
    fails(&s.opts, &["malformed bootspec", "init"]);
}

#[test]
fn dynamic_init_is_refused() {
    let s = setup();
    let fake = s.dir.join("dyn-init");
    fs::write(
        &fake,
        mkinitrd::testutil::elf_with_interp("/lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    let opts = BuildOptions {
        init: Some(fake),
        ..s.opts.clone()
    };
    fails(
        &opts,
        &[
            "dyn-init",
            "is not a static executable (PT_INTERP /lib64/ld-linux-x86-64.so.2)",
        ],
    );

    if Path::new("/bin/true").exists() {
        let opts = BuildOptions {
            init: Some("/bin/true".into()),
            ..s.opts.clone()
        };
        fails(
            &opts,
            &["init /bin/true is not a static executable (PT_INTERP /lib"],
        );
    } else {
        skip("/bin/true missing");
    }

    let script = s.opts.closure.as_ref().unwrap().join("init");
    let opts = BuildOptions {
        init: Some(script),
        ..s.opts.clone()
    };
    fails(&opts, &["is not a static executable (not an ELF file"]);

    let opts = BuildOptions {
        init: Some(s.dir.join("nope")),
        ..s.opts.clone()
    };
    fails(&opts, &["cannot read init", "nope"]);
}

#[test]
fn shared_library_without_interpreter_is_refused_for_its_needed_libs() {
    if !have("cc", "--version") {
        return;
    }
    let s = setup();
    let src = s.dir.join("x.c");
    fs::write(
        &src,
        "#include <stdio.h>\nint f(void) { return puts(\"x\"); }\n",
    )
    .unwrap();
    let lib = s.dir.join("libx.so");
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let opts = BuildOptions {
        init: Some(lib),
        ..s.opts.clone()
    };
    fails(&opts, &["is not a static executable (DT_NEEDED libc.so"]);
}

#[test]
fn static_c_program_is_accepted() {
    if !have("cc", "--version") {
        return;
    }
    let s = setup();
    let src = s.dir.join("init.c");
    fs::write(
        &src,
        "void _start(void) { __asm__ volatile(\"mov $60, %eax\\n xor %edi, %edi\\n syscall\"); }\n",
    )
    .unwrap();
    let exe = s.dir.join("c-init");
    let out = Command::new("cc")
        .args(["-static", "-nostdlib", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opts = BuildOptions {
        init: Some(exe),
        ..s.opts.clone()
    };
    mkinitrd::build(&opts).unwrap();
}

#[test]
fn module_not_found_names_module_and_dir() {
    let s = setup();
    let opts = BuildOptions {
        modules: vec!["virtiofs".into(), "no_such_module".into()],
        ..s.opts.clone()
    };
    let dir = s
        .opts
        .kernel_modules
        .as_ref()
        .unwrap()
        .display()
        .to_string();
    fails(&opts, &["no_such_module", &dir]);
}

#[test]
fn unreadable_modules_dir() {
    let s = setup();
    let opts = BuildOptions {
        kernel_modules: Some(s.dir.join("lib/modules/0.0.0-missing")),
        ..s.opts.clone()
    };
    fails(
        &opts,
        &["cannot read kernel modules directory", "0.0.0-missing"],
    );
    // A regular file where the directory should be.
    let file = s.dir.join("not-a-dir");
    fs::write(&file, "x").unwrap();
    let opts = BuildOptions {
        kernel_modules: Some(file),
        ..s.opts.clone()
    };
    fails(
        &opts,
        &["cannot read kernel modules directory", "not-a-dir"],
    );
}

#[test]
fn vermagic_mismatch_names_the_module() {
    let s = setup();
    // Same tree under another version name: every module's vermagic disagrees.
    let src = s.opts.kernel_modules.clone().unwrap();
    let renamed = src.with_file_name("6.2.0-other");
    fs::rename(&src, &renamed).unwrap();
    let opts = BuildOptions {
        kernel_modules: Some(renamed),
        ..s.opts.clone()
    };
    fails(&opts, &["6.1.0-7-test", "6.2.0-other", "built for kernel"]);
}

#[test]
fn modules_without_a_directory() {
    let s = setup();
    let opts = BuildOptions {
        kernel_modules: None,
        modules: vec!["virtiofs".into()],
        ..s.opts.clone()
    };
    let e = fails(&opts, &["--kernel-modules"]);
    assert!(matches!(e, Error::ModulesWithoutDir));
}

#[test]
fn failed_rebuild_keeps_the_old_output() {
    let s = setup();
    mkinitrd::build(&s.opts).unwrap();
    let good = fs::read(&s.opts.output).unwrap();
    let out_dir = s.opts.output.parent().unwrap();
    assert_eq!(listing(out_dir), ["initrd"]);

    // Fails late: everything is valid except one module.
    let bad = BuildOptions {
        modules: vec!["virtiofs".into(), "missing_module".into()],
        ..s.opts.clone()
    };
    assert!(mkinitrd::build(&bad).is_err());
    assert_eq!(fs::read(&s.opts.output).unwrap(), good);
    assert_eq!(listing(out_dir), ["initrd"], "temporary files left behind");

    // Fails at the write itself: the output path is a directory now.
    let dir_out = BuildOptions {
        output: out_dir.join("sub"),
        ..s.opts.clone()
    };
    fs::create_dir(&dir_out.output).unwrap();
    let e = mkinitrd::build(&dir_out).unwrap_err();
    assert!(matches!(e, Error::Output { .. }), "{e}");
    assert!(e.to_string().contains("sub"), "{e}");
    assert_eq!(listing(out_dir), ["initrd", "sub"]);
    assert!(listing(&dir_out.output).is_empty());
}

#[test]
fn cli_errors_exit_non_zero_with_the_message() {
    let s = setup();
    let (ok, _, err) = run(mkinitrd()
        .arg("--closure")
        .arg(s.dir.join("missing-system"))
        .arg("-o")
        .arg(&s.opts.output));
    assert!(!ok);
    assert!(
        err.contains("missing-system") && err.starts_with("mkinitrd: error:"),
        "{err}"
    );

    let (ok, _, err) = run(mkinitrd()
        .arg("--closure")
        .arg(s.opts.closure.as_ref().unwrap())
        .arg("-o")
        .arg(&s.opts.output)
        .args(["--init", "/bin/true"]));
    assert!(!ok);
    assert!(err.contains("not a static executable"), "{err}");

    // clap refuses --module without --kernel-modules and unknown compressions.
    let (ok, _, err) = run(mkinitrd()
        .arg("--closure")
        .arg(s.opts.closure.as_ref().unwrap())
        .arg("-o")
        .arg(&s.opts.output)
        .args(["--module", "virtiofs"]));
    assert!(!ok);
    assert!(err.contains("--kernel-modules"), "{err}");
    let (ok, _, err) = run(mkinitrd()
        .arg("--closure")
        .arg(s.opts.closure.as_ref().unwrap())
        .arg("-o")
        .arg(&s.opts.output)
        .args(["--compress", "lzma"]));
    assert!(!ok);
    assert!(err.contains("lzma") && err.contains("zstd"), "{err}");
    // Nothing to write to.
    let (ok, _, err) = run(mkinitrd()
        .arg("--closure")
        .arg(s.opts.closure.as_ref().unwrap()));
    assert!(!ok);
    assert!(err.contains("--output"), "{err}");
    // Options that only make sense with another one.
    for (args, needs) in [
        (&["--store-paths", "x"][..], "--embed-store"),
        (&["--store-dir", "x"][..], "--embed-store"),
        (&["--microcode-vendor", "intel"][..], "--microcode"),
        (&["--firmware-dir", "x"][..], "--kernel-modules"),
    ] {
        let (ok, _, err) = run(mkinitrd().arg("-o").arg(&s.opts.output).args(args));
        assert!(!ok, "{args:?}");
        assert!(err.contains(needs), "{args:?}: {err}");
    }
    let (ok, _, err) = run(mkinitrd().arg("-o").arg(&s.opts.output).args([
        "--microcode",
        "x",
        "--microcode-vendor",
        "via",
    ]));
    assert!(!ok);
    assert!(err.contains("intel or amd"), "{err}");
    let (ok, _, err) = run(mkinitrd()
        .arg("-o")
        .arg(&s.opts.output)
        .args(["--include", "x:/"]));
    assert!(!ok);
    assert!(err.contains("--include"), "{err}");
    assert!(listing(s.opts.output.parent().unwrap()).is_empty());
}
