//! tether
