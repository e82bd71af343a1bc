//! chainboot-dhcp
