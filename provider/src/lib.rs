//! Safebox provider.
