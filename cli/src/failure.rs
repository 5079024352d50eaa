//! How a command fails, and so its exit status: 2 for bad input (as clap's
//! own usage errors), 1 for everything else.

use std::fmt;

/// Why a command failed: one line for standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Bad input (an empty key, a key too long, no keys on standard input,
    /// an option out of range): exit status 2, nothing was sent.
    Usage(String),
    /// The network, the system, or an interrupted command: exit status 1.
    Failed(String),
}

impl Failure {
    /// The process's exit status for it.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Failed(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Failed(message)
    }
}
