//! Module steps: the initrd's modules in its order (mkinitrd resolved the dependencies),
//! minus `rd.driver.blacklist=`.

use super::Step;
use crate::cmdline::Options;
use nixboot_protocol::InitrdConfig;

pub fn plan(opts: &Options, config: &InitrdConfig, notes: &mut Vec<String>) -> Vec<Step> {
    let mut steps = Vec::new();
    for m in &config.modules {
        if opts.driver_blacklist.contains(&m.name) {
            notes.push(format!("not loading {}: rd.driver.blacklist", m.name));
            continue;
        }
        steps.push(Step::LoadModule {
            name: m.name.clone(),
            path: m.path.clone(),
            params: m.params.clone(),
        });
    }
    for b in &opts.driver_blacklist {
        if !config.modules.iter().any(|m| m.name == *b) {
            notes.push(format!(
                "rd.driver.blacklist={b}: the initrd does not list this module"
            ));
        }
    }
    steps
}
