//! chainboot-config
