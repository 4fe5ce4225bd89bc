//! Any /etc/nixboot/initrd.json: parsing never panics; what parses round-trips through the
//! canonical serialisation and can be planned with.
#![no_main]

use nixboot_protocol::InitrdConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = InitrdConfig::parse(data) else {
        return;
    };
    let again = InitrdConfig::parse(&config.to_bytes()).expect("a parsed config re-parses");
    assert_eq!(again, config);
    for cmdline in [
        "",
        "init=/nix/store/x/init",
        "root=LABEL=x rd.driver.blacklist=fuse",
    ] {
        let _ = init::plan::build(&init::cmdline::parse(cmdline), &config);
    }
});
