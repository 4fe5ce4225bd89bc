//! The README's copy of the main table and the chart, between its benchmark markers.

use super::model::*;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;

pub const README_BEGIN: &str = "<!-- nixboot-bench:begin -->";
pub const README_END: &str = "<!-- nixboot-bench:end -->";

impl Report {
    /// The part of the report the README shows: the main table and the chart.
    pub fn readme_section(&self, out: &Path, readme: &Path) -> String {
        let rel = relative(out, readme.parent().unwrap_or(Path::new(".")));
        let mut m = String::new();
        let _ = writeln!(
            m,
            "Latest run ({}, {} boot(s) per initrd, {}; the whole report with the targets, where \
             the time goes and the scale run: [{rel}/benchmark.md]({rel}/benchmark.md)):\n",
            self.setup.date,
            self.setup.runs,
            if self.setup.accel == "tcg" {
                "QEMU under TCG"
            } else {
                "QEMU under KVM"
            }
        );
        if let Some(n) = &self.setup.note {
            let _ = writeln!(m, "> **{n}**\n");
        }
        m.push_str(&self.main_table());
        m.push('\n');
        m.push_str(&self.ratio_table());
        let _ = writeln!(m, "\n![boot benchmark chart]({rel}/benchmark.png)");
        if !self.e2e_rows.is_empty() {
            let _ = writeln!(
                m,
                "\nEnd to end, what a user waits for (host clock from the command's start; the \
                 targets and where the time goes are in the report):\n"
            );
            m.push_str(&self.e2e_table());
        }
        m
    }

    pub fn update_readme(&self, readme: &Path, out: &Path) -> Result<()> {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        let (Some(b), Some(e)) = (text.find(README_BEGIN), text.find(README_END)) else {
            bail!(
                "{} has no {README_BEGIN} ... {README_END} markers (in its Benchmark section)",
                readme.display()
            );
        };
        if e < b {
            bail!(
                "{}: the benchmark markers are out of order",
                readme.display()
            );
        }
        let mut new = String::new();
        new.push_str(&text[..b + README_BEGIN.len()]);
        new.push('\n');
        new.push_str(&self.readme_section(out, readme));
        new.push_str(&text[e..]);
        std::fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))?;
        Ok(())
    }
}

/// `out` relative to `base` when it is inside it (for links in the README).
pub(crate) fn relative(out: &Path, base: &Path) -> String {
    let out = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    out.strip_prefix(&base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| out.display().to_string())
}
