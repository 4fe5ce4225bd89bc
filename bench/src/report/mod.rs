//! The benchmark's report: the [`model`] (the records, `benchmark.json`), its [`markdown`]
//! rendering (`benchmark.md`; the chart is `crate::chart`) and the [`readme`] update.

pub mod e2e;
pub mod markdown;
pub mod model;
pub mod readme;

pub use markdown::{mb, secs};
pub use model::*;
