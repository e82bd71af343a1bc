//! chainboot-policy
