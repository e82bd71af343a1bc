//! chainboot-iso
