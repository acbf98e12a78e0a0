mod header;
mod lead;
mod signatures;
mod types;

pub use header::*;
pub use lead::*;
pub use signatures::*;
pub use types::*;
