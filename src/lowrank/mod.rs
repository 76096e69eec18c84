//! Low-rank layers and their methods (SCIENCE.md §1, §2, §5).

pub mod init;
