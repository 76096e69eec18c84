//! Experiments behind the study subcommands: each returns its numbers for the CLI to print and save.

pub mod init_study;
