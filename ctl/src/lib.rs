//! `sextantctl`: kubectl's everyday commands plus flows, dataplane inspection and
//! cluster status.
//!
//! Not built yet: see issue 8.
