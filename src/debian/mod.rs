//! The Debian side: the host's apt sources, a repository client (signed InRelease,
//! Packages indexes), dependency resolution, the lock file, the content-addressed
//! download cache and .deb extraction. Knows nothing about nodes or clusters.

pub mod control;
pub mod extract;
pub mod fetch;
pub mod localrepo;
pub mod lock;
pub mod packages;
pub mod relation;
pub mod release;
pub mod resolve;
pub mod sources;
