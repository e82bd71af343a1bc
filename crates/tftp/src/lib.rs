//! chainboot-tftp
