//! The networks as plain data: their architecture, their weights and a slow reference executor
//! that checks every fast path against the definition.
//!
//! - [`arch`]: the patch networks of *Uninformed Students* (p = 17, 33, 65) and every way they
//!   are evaluated (patch, dense, strided image mode), derived from one layer list.
//! - [`weights`]: framework-free weights and their `.ustw` file format.
//! - [`reference`]: loops written the way the operators are defined.

pub mod arch;
pub mod reference;
pub mod weights;
